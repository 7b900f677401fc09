//! DLP against a labelled corpus (issue 10, item 4): precision and recall of
//! the shipped `policies/dlp.yaml`, per type, on values written plainly and
//! with every evasion (full-width digits and letters, zero-width and other
//! format characters, digits glued to letters, separators inside card
//! numbers, a card next to one more digit group), in English and Chinese
//! sentences, among decoys (Luhn-failing numbers, longer digit runs, order
//! numbers, timestamps, phone-like numbers that are not mobiles, ID-like
//! numbers with a wrong check character or date, near-miss emails, secrets
//! and keywords).
//!
//! The corpus is generated here, deterministically (`tests/dlp/`), with
//! checksum-valid values; labels are exact byte ranges. A finding counts as
//! a true positive only when its type and its byte range in the original
//! text are exactly the label's. The test prints a table per type and one
//! per evasion (`cargo test --test dlp_corpus -- --nocapture`) and fails
//! below 0.99 precision or recall for any type.

#[path = "dlp/corpus.rs"]
mod corpus;
#[path = "dlp/gen.rs"]
mod gen;

use std::collections::BTreeMap;
use std::path::Path;

use moltgate::policy::dlp::{Action, Direction, DlpPolicy, Finding};

const SHIPPED: &str = include_str!("../policies/dlp.yaml");
const SEED: u64 = 0x00D1_5C0B_2026;
const PER_TYPE: usize = 500;
const DECOYS: usize = 3000;
const TARGET: f64 = 0.99;

#[derive(Default)]
struct Score {
    labels: usize,
    tp: usize,
    fp: usize,
    fn_: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }

    fn recall(&self) -> f64 {
        if self.labels == 0 {
            1.0
        } else {
            self.tp as f64 / self.labels as f64
        }
    }
}

fn policy() -> DlpPolicy {
    DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), SHIPPED).unwrap()
}

/// Masking replaces exactly the characters of `mask` findings: outside them
/// the text is unchanged, inside them a character is either kept or `*`.
fn check_mask_in_place(text: &str, masked: &str, spans: &[(usize, usize)]) {
    assert_eq!(
        text.chars().count(),
        masked.chars().count(),
        "one mask character per original character: {text:?}"
    );
    for ((at, a), b) in text.char_indices().zip(masked.chars()) {
        if a != b {
            assert_eq!(b, '*', "{text:?} -> {masked:?}");
            assert!(
                spans.iter().any(|&(s, e)| s <= at && at < e),
                "masked outside a finding at {at}: {text:?} -> {masked:?}"
            );
        }
    }
}

/// What the scan masked is not found again, by the same rule at the same
/// place, in the masked text (the property the DLP fuzz target checks too).
fn check_values_gone(policy: &DlpPolicy, text: &str, masked: &str, found: &[Finding]) {
    let chars = |t: &str, s: usize, e: usize| (t[..s].chars().count(), t[..e].chars().count());
    let again = policy.scan(masked, Direction::Ingress);
    for f in found.iter().filter(|f| f.action == Action::Mask) {
        let (cs, ce) = chars(text, f.start, f.end);
        for g in again.findings.iter().filter(|g| g.rule == f.rule) {
            let (gs, ge) = chars(masked, g.start, g.end);
            assert!(
                ge <= cs || ce <= gs,
                "{} still found after masking: {text:?} -> {masked:?}",
                f.rule
            );
        }
    }
}

#[test]
fn shipped_policy_meets_precision_and_recall_on_the_corpus() {
    let policy = policy();
    let rules: Vec<&str> = policy.rule_names().collect();
    let mut want: Vec<&str> = corpus::TYPES.to_vec();
    want.sort_unstable();
    let mut have = rules.clone();
    have.sort_unstable();
    assert_eq!(
        have, want,
        "the corpus covers every rule of the shipped dlp.yaml"
    );

    let samples = corpus::build(SEED, PER_TYPE, DECOYS);
    let mut scores: BTreeMap<&str, Score> = rules.iter().map(|r| (*r, Score::default())).collect();
    let mut by_evasion: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut misses = Vec::new();
    for sample in &samples {
        let outcome = policy.scan(&sample.text, Direction::Ingress);
        let mut matched = vec![false; outcome.findings.len()];
        for label in &sample.labels {
            let score = scores.get_mut(label.rule).unwrap();
            score.labels += 1;
            let hit = outcome.findings.iter().position(|f| {
                &*f.rule == label.rule && (f.start, f.end) == (label.start, label.end)
            });
            let e = by_evasion.entry(label.evasion).or_default();
            e.0 += 1;
            match hit {
                Some(i) => {
                    matched[i] = true;
                    score.tp += 1;
                    e.1 += 1;
                }
                None => {
                    score.fn_ += 1;
                    misses.push(format!(
                        "missed {} ({}) {:?} in {:?}",
                        label.rule,
                        label.evasion,
                        &sample.text[label.start..label.end],
                        sample.text
                    ));
                }
            }
        }
        for (f, m) in outcome.findings.iter().zip(&matched) {
            if !m {
                scores.get_mut(&*f.rule).unwrap().fp += 1;
                misses.push(format!(
                    "false {} {:?} in {:?}",
                    f.rule,
                    &sample.text[f.start..f.end],
                    sample.text
                ));
            }
        }
        // Masks land on the original characters, and what the scan found
        // is gone from the masked text.
        if let Some(masked) = &outcome.masked {
            let spans: Vec<(usize, usize)> = outcome
                .findings
                .iter()
                .filter(|f| f.action == Action::Mask)
                .map(|f| (f.start, f.end))
                .collect();
            check_mask_in_place(&sample.text, masked, &spans);
            check_values_gone(&policy, &sample.text, masked, &outcome.findings);
        }
    }

    println!(
        "\nDLP corpus: {} sentences ({} with values, {} decoys), seed {SEED:#x}\n",
        samples.len(),
        samples.len() - DECOYS,
        DECOYS
    );
    println!("| type | labels | TP | FP | FN | precision | recall |");
    println!("|---|---|---|---|---|---|---|");
    for (rule, s) in &scores {
        println!(
            "| `{rule}` | {} | {} | {} | {} | {:.4} | {:.4} |",
            s.labels,
            s.tp,
            s.fp,
            s.fn_,
            s.precision(),
            s.recall()
        );
    }
    println!("\n| evasion | labels | found | recall |");
    println!("|---|---|---|---|");
    for (evasion, (n, found)) in &by_evasion {
        println!(
            "| {evasion} | {n} | {found} | {:.4} |",
            *found as f64 / *n as f64
        );
    }
    for m in misses.iter().take(40) {
        println!("{m}");
    }

    for (rule, s) in &scores {
        assert!(s.labels >= PER_TYPE, "{rule}: only {} labels", s.labels);
        assert!(
            s.precision() >= TARGET && s.recall() >= TARGET,
            "{rule}: precision {:.4}, recall {:.4} (target {TARGET})",
            s.precision(),
            s.recall()
        );
    }
}

/// The generator is what the figures rest on: its values are valid by
/// their own definitions, its decoys are not, and it is deterministic.
#[test]
fn the_generator_is_sound_and_deterministic() {
    let mut rng = gen::Rng::new(7);
    for _ in 0..2000 {
        let (card, _) = gen::card(&mut rng);
        assert!(gen::is_card(&card), "{card}");
        let id = gen::id_number(&mut rng);
        assert!(gen::is_id(&id), "{id}");
        assert!(gen::is_mobile(&gen::mobile(&mut rng)));
        let (_, decoy) = corpus::decoy(&mut rng);
        for run in decoy.split(|c: char| !c.is_ascii_digit()) {
            assert!(
                !(gen::is_card(run) || gen::is_id(run) || gen::is_mobile(run)),
                "{decoy}"
            );
        }
    }
    assert!(gen::is_id("11010519491231002X"));
    assert!(!gen::is_id("110105194912310021"));
    assert!(gen::is_card("4111111111111111"));
    assert!(!gen::is_card("4111111111111112"));
    let a = corpus::build(SEED, 3, 5);
    let b = corpus::build(SEED, 3, 5);
    let texts = |v: &[gen::Sample]| v.iter().map(|s| s.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&a), texts(&b));
    for s in &a {
        for l in &s.labels {
            assert!(s.text.is_char_boundary(l.start) && s.text.is_char_boundary(l.end));
        }
    }
}
