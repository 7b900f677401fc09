//! The reload budget: parse and compile a whole policies directory with
//! 10,000 ABAC rules and 100,000 DLP keywords (target <= 200 ms), which is
//! what every file-watch, SIGHUP or `POST /reload` pays before the swap.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use moltgate::policy::PolicySet;

/// Writes a policies directory of the target size: the shipped files, plus
/// 10,000 rules in `abac.yaml` and 100,000 keywords in `dlp.yaml`.
fn big_policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for name in [
        "security_policy.yaml",
        "permissions.yaml",
        "identities.yaml",
    ] {
        std::fs::copy(shipped.join(name), dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut abac = String::from("policies:\n");
    for i in 0..10_000 {
        let effect = if i % 10 == 0 { "Deny" } else { "Allow" };
        abac.push_str(&format!(
            "  - id: rule_{i}\n    effect: {effect}\n    resources: [\"/tenants/t{}/**\"]\n    actions: [forward, \"command:*\"]\n    conditions: {{ platform: [slack, telegram], roles: [user] }}\n",
            i / 4
        ));
    }
    std::fs::write(dir.path().join("abac.yaml"), abac).unwrap_or_else(|e| panic!("abac: {e}"));
    let shipped_dlp =
        std::fs::read_to_string(shipped.join("dlp.yaml")).unwrap_or_else(|e| panic!("dlp: {e}"));
    let words: Vec<String> = (0..100_000)
        .map(|i| format!("\"codeword{i:06}\""))
        .collect();
    let dlp = format!(
        "{shipped_dlp}\n  bulk_terms:\n    words: [{}]\n    action: alert\n",
        words.join(", ")
    );
    std::fs::write(dir.path().join("dlp.yaml"), dlp).unwrap_or_else(|e| panic!("dlp: {e}"));
    dir
}

fn reload(c: &mut Criterion) {
    let dir = big_policies();
    let set = PolicySet::load(dir.path(), 1, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.abac.len(), 10_000);
    let mut g = c.benchmark_group("reload");
    g.sample_size(10);
    g.bench_function("rules_10k_keywords_100k", |b| {
        // The old set is dropped after the swap, off the reload's critical path.
        b.iter_with_large_drop(|| PolicySet::load(black_box(dir.path()), 2, Some(&set)))
    });
    g.finish();
}

criterion_group!(benches, reload);
criterion_main!(benches);
