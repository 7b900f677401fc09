//! DLP scanning and masking with the shipped `policies/dlp.yaml`.
//!
//! Input: any bytes, read as lossy UTF-8 text.
//!
//! Properties, for the text and for what masking makes of it:
//! - findings lie inside the text on character boundaries, in order, and
//!   both directions find the same (every shipped rule is `both`);
//! - a `block` finding makes the outcome blocked, by the first one;
//! - masking replaces character for character, only inside `mask`
//!   findings, only with the rule's mask character, and leaves at most the
//!   rule's `keep_prefix + keep_suffix` visible characters of a finding;
//! - the masked text contains no value a `mask` finding found, except where
//!   the same characters also stand in the text outside every `mask` finding
//!   (a number inside a longer digit run or a hex token is, by design, not a
//!   finding), and scanning the masked text masks nothing new (same
//!   exception; inputs that broke this are in `fuzz/crashes/dlp_mask/`);
//! - the evasions folding undoes do not hide a value: a standalone Visa-shaped
//!   Luhn-valid 16-digit number or an 11-digit Chinese mobile number (spaces
//!   or line breaks around it) is always found (unless a `block` finding
//!   refuses the text anyway), and scanning the folded text finds the same
//!   rules in the same order as scanning the text.

use std::path::Path;
use std::sync::LazyLock;

use super::common::*;
use moltgate::policy::dlp::{fold, is_ignorable, Action, Direction, DlpPolicy, Validator};

static POLICY: LazyLock<DlpPolicy> = LazyLock::new(|| {
    DlpPolicy::from_yaml(
        Path::new("policies/dlp.yaml"),
        include_str!("../../policies/dlp.yaml"),
    )
    .expect("the shipped dlp.yaml loads")
});

/// `mask` of each masking rule in `policies/dlp.yaml`: (keep_prefix, keep_suffix);
/// every rule masks with `*`. A masking rule missing here fails the target.
fn kept(rule: &str) -> usize {
    match rule {
        "credit_card" => 4,
        "cn_mobile" => 3 + 4,
        "email" => 1,
        other => panic!("dlp.yaml has a new masking rule '{other}': add its mask to the harness"),
    }
}

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let out = POLICY.scan(text, Direction::Ingress);
    check_dlp_outcome(text, &out);
    assert_eq!(
        out,
        POLICY.scan(text, Direction::Egress),
        "every shipped rule applies both ways"
    );
    standalone_numbers_are_found(text, &out);
    folding_changes_nothing(text, &out);

    let Some(masked) = &out.masked else {
        return;
    };
    let orig: Vec<char> = text.chars().collect();
    let new: Vec<char> = masked.chars().collect();
    // Character index of each mask finding's span.
    let char_at = |byte: usize| text[..byte].chars().count();
    let spans: Vec<(usize, usize, &str)> = out
        .findings
        .iter()
        .filter(|f| f.action == Action::Mask)
        .map(|f| (char_at(f.start), char_at(f.end), &*f.rule))
        .collect();
    for (i, (a, b)) in orig.iter().zip(&new).enumerate() {
        if a != b {
            assert_eq!(*b, '*', "masked with a character no rule uses");
            assert!(
                spans.iter().any(|&(s, e, _)| s <= i && i < e),
                "character {i} ({a:?}) masked outside every mask finding: {text:?} -> {masked:?}"
            );
        }
    }
    for &(s, e, rule) in &spans {
        // Characters that read as a letter or digit. (A finding's span may
        // take in a neighbour folding cannot separate from it, such as the
        // `\u{ffd3}` in `13812345678\u{ffd3}`; that one stays, and is not
        // part of the value.)
        let visible = (s..e)
            .filter(|&i| orig[i] == new[i] && reads_as_alphanumeric(orig[i]))
            .count();
        assert!(
            visible <= kept(rule),
            "{rule} at chars {s}..{e} shows {visible} characters: {text:?} -> {masked:?}"
        );
        if s < e {
            assert_ne!(
                orig[s..e],
                new[s..e],
                "{rule} at chars {s}..{e} left unmasked"
            );
        }
    }
    let again = POLICY.scan(masked, Direction::Ingress);
    check_dlp_outcome(masked, &again);
    no_found_value_survives(text, &out, masked);
    nothing_new_on_rescan(text, &out, masked, &again);
}

/// Scanning the masked text masks nothing the first scan did not, except a
/// value that also stood unflagged in the text (in a hex token or a longer
/// digit run: masking next to it, as of an e-mail before
/// `dddd13812345674cd2f`, can make it a finding now, and it was visible
/// before).
fn nothing_new_on_rescan(
    text: &str,
    out: &moltgate::policy::dlp::DlpOutcome,
    masked: &str,
    again: &moltgate::policy::dlp::DlpOutcome,
) {
    let masks = mask_spans(out);
    for g in again.findings.iter().filter(|g| g.action == Action::Mask) {
        let value = &masked[g.start..g.end];
        assert!(
            unflagged(text, &masks, value),
            "masking again masks {} {value:?}: {text:?} -> {masked:?} -> {:?}",
            g.rule,
            again.masked
        );
    }
}

fn mask_spans(out: &moltgate::policy::dlp::DlpOutcome) -> Vec<(usize, usize)> {
    out.findings
        .iter()
        .filter(|f| f.action == Action::Mask)
        .map(|f| (f.start, f.end))
        .collect()
}

/// Whether `value` stands in `text` somewhere no mask finding covers.
fn unflagged(text: &str, masks: &[(usize, usize)], value: &str) -> bool {
    text.match_indices(value).any(|(at, v)| {
        let end = at + v.len();
        !masks.iter().any(|&(s, e)| at < e && s < end)
    })
}

/// Whether `c` folds to something with an ASCII letter or digit in it.
fn reads_as_alphanumeric(c: char) -> bool {
    let mut buf = [0; 4];
    !is_ignorable(c)
        && fold(c.encode_utf8(&mut buf))
            .bytes()
            .any(|b| b.is_ascii_alphanumeric())
}

/// The masked text contains no value of a `mask` finding, unless those
/// characters also stand in the text where no `mask` finding covers them.
fn no_found_value_survives(text: &str, out: &moltgate::policy::dlp::DlpOutcome, masked: &str) {
    let masks = mask_spans(out);
    for f in out.findings.iter().filter(|f| f.action == Action::Mask) {
        let value = &text[f.start..f.end];
        if value.is_empty() || !masked.contains(value) {
            continue;
        }
        assert!(
            unflagged(text, &masks, value),
            "the masked text still shows the {} value {value:?}: {text:?} -> {masked:?}",
            f.rule
        );
    }
}

/// A Luhn-valid 16-digit number starting with 4 (a Visa) and an 11-digit
/// `1[3-9]…` mobile number, alone between spaces or line breaks, are found
/// by their rule (or the text is blocked anyway).
fn standalone_numbers_are_found(text: &str, out: &moltgate::policy::dlp::DlpOutcome) {
    if out.is_blocked() {
        return;
    }
    let bytes = text.as_bytes();
    let apart = |i: Option<&u8>| i.is_none_or(|b| matches!(b, b' ' | b'\n'));
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let run = &text[start..i];
        if !(apart(start.checked_sub(1).map(|p| &bytes[p])) && apart(bytes.get(i))) {
            continue;
        }
        let rule = if run.len() == 16 && run.starts_with('4') && Validator::Luhn.check(run) {
            "credit_card"
        } else if run.len() == 11
            && run.starts_with('1')
            && (b'3'..=b'9').contains(&bytes[start + 1])
        {
            "cn_mobile"
        } else {
            continue;
        };
        assert!(
            out.findings
                .iter()
                .any(|f| &*f.rule == rule && f.start <= start && i <= f.end),
            "{rule} {run} at {start} not found in {text:?}: {:?}",
            out.findings
        );
    }
}

/// Scanning the folded text finds the same rules, in the same order (or, when
/// the text was masked and re-scanned, no rule the text does not).
fn folding_changes_nothing(text: &str, out: &moltgate::policy::dlp::DlpOutcome) {
    let folded = fold(text);
    if folded == text {
        return;
    }
    let on_folded = POLICY.scan(&folded, Direction::Ingress);
    let rules = |o: &moltgate::policy::dlp::DlpOutcome| -> Vec<String> {
        o.findings.iter().map(|f| f.rule.to_string()).collect()
    };
    if out.masked.is_none() {
        assert_eq!(
            rules(out),
            rules(&on_folded),
            "the text and its folded form find different things: {text:?} / {folded:?}"
        );
    } else {
        // The masked text is scanned again, and what masking separates can
        // be found then (a mobile number that a card's folded `¼` made part
        // of a longer run): the text may find more, never less.
        let found = rules(out);
        for rule in rules(&on_folded) {
            assert!(
                found.contains(&rule),
                "the folded text finds {rule} and the text does not: {text:?} / {folded:?}"
            );
        }
    }
}
