//! Replays every fuzz target's committed seeds (`fuzz/seeds/<target>/`),
//! minimised corpus (`fuzz/corpora/<target>/`) and past crashes
//! (`fuzz/crashes/<target>/`) through the same harness the
//! fuzzers run (`fuzz/harness/`), on stable Rust, so a regression that one of
//! those inputs once caught fails CI without nightly or libFuzzer.

#[allow(dead_code, clippy::all)]
#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The files of `dir`, sorted, or none if it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_replays_its_seeds_and_corpus_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (target, run) in harness::TARGETS {
        let seeds = inputs(&root.join("seeds").join(target));
        let corpus = inputs(&root.join("corpora").join(target));
        // Inputs that once broke a property: regressions, replayed too.
        let crashes = inputs(&root.join("crashes").join(target));
        assert!(
            !seeds.is_empty() || !corpus.is_empty(),
            "fuzz target '{target}' has no committed inputs (fuzz/seeds/{target}, fuzz/corpora/{target})"
        );
        let started = std::time::Instant::now();
        for file in seeds.iter().chain(&corpus).chain(&crashes) {
            let data = std::fs::read(file).unwrap();
            if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
        let n = seeds.len() + corpus.len() + crashes.len();
        eprintln!("{target}: {n} inputs in {:.1?}", started.elapsed());
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}
