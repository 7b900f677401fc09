//! Data-loss prevention: finds card numbers, ID numbers, phone numbers,
//! secrets and operator keywords in message text, and blocks, masks or alerts.
//!
//! DLP runs on every message in both directions (before the AI sees a user's
//! text, and before an assistant's reply is written back), so its cost is paid
//! on every request. The design keeps the common case to one pass:
//!
//! * every keyword, plus the trigger literals of the regex patterns (`AKIA`,
//!   `-----BEGIN`, `@`, ...), lives in one Aho-Corasick automaton; a pattern
//!   whose trigger never appears is never run;
//! * numeric patterns (cards, IDs, phones) are triggered by a cheap scan for
//!   runs of ASCII digits, and then run only on the windows around those runs;
//! * regexes are compiled once, in [`DlpPolicy::from_yaml`].
//!
//! Triggers are derived from each regex's syntax tree, so they are sound: a
//! pattern is skipped only when it provably cannot match.
//!
//! What is scanned is the text as a reader sees it ([`fold`]): invisible
//! format characters dropped and NFKC applied, so `１３８\u{200b}1234…` is a
//! phone number. Text that folding leaves alone is scanned as it is; else a
//! folded copy is, and findings and masks are mapped back to the original
//! characters (`dlp scan` offsets are into the original line).
//!
//! Regex dialect: in DLP patterns `\d` means ASCII `[0-9]` and `\b`/`\B` are
//! ASCII word boundaries, so a number written right after Chinese text
//! (`手机13812345678`) is still found (with Unicode boundaries it would not be,
//! since CJK characters are word characters). Numbers are whole (see `search`):
//! a match never starts or ends inside a run of digits, so numeric patterns
//! need no `\b` and find numbers glued to letters (`tel13812345678`); a match
//! refused by its validator is retried shorter and at later starts. Set
//! `unicode: true` on a pattern to compile it exactly as written instead.
//!
//! Overlaps: a validated pattern claims its number (a later validated pattern
//! does not report an overlapping one), and a finding inside a `block`
//! finding of another rule is part of that value, not a finding of its own.
//!
//! Findings carry the rule name, byte offsets and action, never the matched
//! value, so they can go into `Envelope.verdict`, logs and metrics.

mod file;
mod fold;
mod mask;
mod search;
pub mod stream;
mod tokens;
mod triggers;
mod validators;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::Regex;
use serde::Deserialize;

use crate::config::yaml::FileError;
use fold::{Folded, Keep};
use search::Search;
use triggers::{digit_positions, windows, Trigger};

pub use fold::{fold, is_ignorable};
pub use mask::MaskSpec;
pub use stream::{Emitted, StreamMasker};
pub use tokens::{scan_line_json_with, TokenSpan};
pub use validators::Validator;

/// Which way a message is travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a platform user towards the AI cluster.
    Ingress,
    /// From the AI cluster back to the platform (the assistant's reply).
    Egress,
}

impl Direction {
    fn bit(self) -> u8 {
        match self {
            Direction::Ingress => INGRESS,
            Direction::Egress => EGRESS,
        }
    }
}

const INGRESS: u8 = 1;
const EGRESS: u8 = 2;
const BOTH: u8 = INGRESS | EGRESS;

/// What a finding does to the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the message.
    Block,
    /// Replace the matched characters before forwarding.
    Mask,
    /// Forward unchanged, but record the finding.
    Alert,
    /// Replace the value with a reversible token (`⟨PHONE:…⟩`, see
    /// [`crate::tokenize`]). [`DlpOutcome::masked`] masks it whole (what
    /// is forwarded when no tokenizer is there: fail closed);
    /// [`DlpOutcome::render`] puts the tokens in.
    Tokenize,
}

impl Action {
    /// The lowercase name used in the policy file, JSON output and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Mask => "mask",
            Action::Alert => "alert",
            Action::Tokenize => "tokenize",
        }
    }

    /// Whether the finding's characters are rewritten in the forwarded
    /// text (`mask` and `tokenize`): what masking, re-scans and streaming
    /// hold-back treat alike.
    pub fn rewrites(self) -> bool {
        matches!(self, Action::Mask | Action::Tokenize)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One DLP hit: which rule, where (byte offsets into the scanned text), and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule name from the policy file (the finding's `type`).
    pub rule: Arc<str>,
    /// Byte offset of the first matched byte.
    pub start: usize,
    /// Byte offset one past the last matched byte.
    pub end: usize,
    /// The rule's action.
    pub action: Action,
}

/// The result of scanning one text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlpOutcome {
    /// Every finding, ordered by position (then by rule order in the file).
    pub findings: Vec<Finding>,
    /// The text with every `mask` finding applied, and every `tokenize`
    /// finding masked whole (see [`DlpOutcome::render`] for the text with
    /// tokens); `None` when nothing was masked. One character per character
    /// of the scanned text.
    pub masked: Option<String>,
    /// The rule of the first `block` finding, if any: the message must be refused.
    pub blocked_by: Option<Arc<str>>,
}

impl DlpOutcome {
    /// Whether a `block` rule matched.
    pub fn is_blocked(&self) -> bool {
        self.blocked_by.is_some()
    }

    /// The text to forward: the masked text if anything was masked, else `original`.
    pub fn text<'a>(&'a self, original: &'a str) -> &'a str {
        self.masked.as_deref().unwrap_or(original)
    }
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    action: Action,
    dirs: u8,
    mask: MaskSpec,
}

#[derive(Debug)]
struct Pattern {
    rule: usize,
    regex: Regex,
    validator: Option<Validator>,
    trigger: Trigger,
    /// Numbers are whole (the ASCII dialect): see [`search`].
    whole_numbers: bool,
    /// Every match has a bounded length.
    bounded: bool,
}

/// A finding while scanning: a rule index and offsets into the folded text.
#[derive(Debug, Clone, Copy)]
struct Hit {
    rule: usize,
    start: usize,
    end: usize,
}

#[derive(Debug)]
enum AcTarget {
    /// A keyword; `exact` holds the word when the automaton folds case but this rule must not.
    Keyword {
        rule: usize,
        exact: Option<Box<[u8]>>,
    },
    /// A trigger literal of a pattern.
    Trigger { pattern: usize },
}

/// A compiled `dlp.yaml`: all regexes and the keyword automaton built, ready to scan.
#[derive(Debug, Default)]
pub struct DlpPolicy {
    rules: Vec<Rule>,
    patterns: Vec<Pattern>,
    automaton: Option<AhoCorasick>,
    targets: Vec<AcTarget>,
    /// Full-width punctuation this policy cannot tell from ASCII: not folded.
    keep: Keep,
    /// Where digit runs break for every windowed numeric pattern.
    segmenter: Option<DigitSegments>,
    /// Every keyword (folded) with its rule's directions: what streaming
    /// holds back is the longest tail that is the start of one of them.
    keywords: Vec<(Box<[u8]>, u8)>,
    /// What streaming masking derives from the rules, built on first use.
    stream: std::sync::OnceLock<stream::Plan>,
}

/// The bytes any match of a windowed numeric pattern (card, phone, ID
/// number) can contain: digits, the separators the patterns allow, a check
/// letter. A run of digits broken by any other byte (the `:` of a
/// timestamp, the `,` of an amount) cannot hold one match, so its pieces are
/// counted apart when digit windows are formed.
///
/// Why: a finding-dense text (a chat transcript full of timestamps, order
/// numbers and amounts) had a digit window every few dozen bytes, and
/// running each pattern's regex on each of them cost more than the rest of
/// the scan (issue 11: 169 MiB/s on 64 KiB). Sound because every byte of a
/// match is one of these, by construction from the patterns' syntax trees
/// ([`triggers::match_bytes`]). One combined `RegexSet` pass over the text
/// was tried first: it cost as much as the windows it saved.
#[derive(Debug)]
struct DigitSegments {
    bytes: triggers::ByteSet,
    /// The longest window of any windowed pattern: a gap at least this long
    /// separates segments without looking at its bytes.
    max_len: usize,
}

impl DigitSegments {
    /// The bytes of every pattern with digit windows; `None` when there is none.
    fn build(patterns: &[Pattern], sources: &[String]) -> Option<Self> {
        let mut bytes = triggers::ByteSet::default();
        let mut max_len = 0;
        for (p, source) in patterns.iter().zip(sources) {
            if let Trigger::Digits {
                max_len: Some(len), ..
            } = p.trigger
            {
                bytes.union(&triggers::match_bytes(source)?);
                max_len = max_len.max(len);
            }
        }
        (max_len > 0).then_some(Self { bytes, max_len })
    }

    /// A segment number per digit position: two digits are in one segment
    /// when only match bytes lie between them.
    fn segments(&self, text: &[u8], digits: &[usize]) -> Vec<usize> {
        let mut out = Vec::with_capacity(digits.len());
        let mut segment = 0usize;
        let mut prev: Option<usize> = None;
        for &d in digits {
            if let Some(p) = prev {
                let gap = &text[p + 1..d];
                if gap.len() >= self.max_len || !gap.iter().all(|&b| self.bytes.contains(b)) {
                    segment += 1;
                }
            }
            out.push(segment);
            prev = Some(d);
        }
        out
    }
}

impl DlpPolicy {
    /// A policy with no rules (no `dlp.yaml`): every scan finds nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses and compiles `dlp.yaml`; `path` is only used in error
    /// messages. On failure the error carries every problem found (each bad
    /// pattern or keyword rule), each at `file:line:col`.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, FileError> {
        file::compile(path, text)
    }

    /// The rule names in file order (patterns, then keywords): the bounded
    /// label set for metrics.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    /// The names of the `action: tokenize` rules, in file order.
    pub fn tokenize_rules(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|r| r.action == Action::Tokenize)
            .map(|r| &*r.name)
    }

    /// Rules going `direction` with a pattern whose matches have no maximum
    /// length (`+`, `*`, `{n,}`), each named once. Streaming masking can
    /// follow such a match only [`stream::UNBOUNDED_CAP`] bytes, so
    /// `moltgate check` and the gateway refuse them on streamed routes.
    pub fn unbounded_rules(&self, direction: Direction) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.patterns {
            let name = &*self.rules[p.rule].name;
            if !p.bounded && self.applies(p.rule, direction.bit()) && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Whether the policy has no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Scans `text` with the rules that apply to `direction`.
    pub fn scan(&self, text: &str, direction: Direction) -> DlpOutcome {
        self.scan_dirs(text, direction.bit())
    }

    /// Scans, masks, and re-scans the masked text until it holds nothing
    /// more to mask: a mask keeps some digits, and kept digits next to other
    /// digits can read as a new number (`4111111111111110 13812345678` masks
    /// to `4111111111111110 138****5678`, whose first 19 digits pass Luhn),
    /// which must not be forwarded either. Found by the `dlp_mask` fuzz target.
    fn scan_dirs(&self, text: &str, dirs: u8) -> DlpOutcome {
        let outcome = self.scan_once(text, dirs);
        if !masking_touches_digits(text, &outcome) {
            // Masking split no digit run, so the masked text holds no number
            // the text did not: no second scan (the common case).
            return outcome;
        }
        self.rescan(text, dirs, outcome)
    }

    /// The re-scans of [`Self::scan_dirs`] after the first scan's `outcome`.
    fn rescan(&self, text: &str, dirs: u8, mut outcome: DlpOutcome) -> DlpOutcome {
        for _ in 0..MAX_MASK_PASSES {
            let Some(masked) = outcome.masked.take() else {
                break;
            };
            let again = self.scan_once(&masked, dirs);
            let remasked = match again.masked {
                Some(m) if m != masked => m,
                _ => {
                    outcome.masked = Some(masked);
                    break;
                }
            };
            // Masking keeps one character per character, so a position in
            // the masked text is the same character of the original.
            let to_original = char_offsets(&masked, text);
            outcome.findings.extend(
                again
                    .findings
                    .into_iter()
                    .filter(|f| f.action.rewrites())
                    .map(|f| Finding {
                        start: to_original(f.start),
                        end: to_original(f.end),
                        ..f
                    }),
            );
            outcome.findings.sort_by_key(|f| (f.start, f.end));
            outcome.masked = Some(remasked);
        }
        outcome
    }

    fn scan_once(&self, text: &str, dirs: u8) -> DlpOutcome {
        if self.rules.is_empty() {
            return DlpOutcome::default();
        }
        let folded = Folded::new(text, self.keep);
        let mut hits = Vec::new();
        let fired = self.automaton_pass(&folded.text, dirs, &mut hits);
        self.pattern_pass(&folded.text, dirs, &fired, &mut hits);
        self.finish(text, &folded, hits)
    }

    fn applies(&self, rule: usize, dirs: u8) -> bool {
        self.rules[rule].dirs & dirs != 0
    }

    /// Keyword hits, and which literal-triggered patterns must run.
    fn automaton_pass(&self, text: &str, dirs: u8, hits: &mut Vec<Hit>) -> Vec<bool> {
        let mut fired = Vec::new();
        let Some(ac) = &self.automaton else {
            return fired;
        };
        let bytes = text.as_bytes();
        for m in ac.find_overlapping_iter(text) {
            match &self.targets[m.pattern().as_usize()] {
                AcTarget::Keyword { rule, exact } => {
                    if self.applies(*rule, dirs)
                        && exact
                            .as_deref()
                            .is_none_or(|w| bytes.get(m.start()..m.end()) == Some(w))
                    {
                        hits.push(Hit {
                            rule: *rule,
                            start: m.start(),
                            end: m.end(),
                        });
                    }
                }
                AcTarget::Trigger { pattern } => {
                    if fired.is_empty() {
                        fired = vec![false; self.patterns.len()];
                    }
                    fired[*pattern] = true;
                }
            }
        }
        fired
    }

    /// Runs every pattern that applies and whose trigger fired, on the
    /// windows its trigger allows. Validated patterns claim what they find:
    /// a later validated pattern does not report a number that overlaps an
    /// earlier one's (an ID number that happens to pass Luhn is not also a card).
    fn pattern_pass(&self, text: &str, dirs: u8, fired: &[bool], hits: &mut Vec<Hit>) {
        let mut digits: Option<Vec<usize>> = None;
        let mut segments: Option<Vec<usize>> = None;
        let mut claimed: Vec<(usize, usize)> = Vec::new();
        let whole = text.len();
        for (i, p) in self.patterns.iter().enumerate() {
            if !self.applies(p.rule, dirs) {
                continue;
            }
            let mut run = |s: usize, e: usize| self.run(p, text, (s, e), &mut claimed, hits);
            match p.trigger {
                Trigger::Literals if fired.get(i).copied().unwrap_or(false) => run(0, whole),
                Trigger::Literals => {}
                Trigger::Always => run(0, whole),
                Trigger::Digits { min, max_len } => {
                    let positions = digits.get_or_insert_with(|| digit_positions(text.as_bytes()));
                    if positions.len() < min {
                        continue;
                    }
                    match max_len {
                        None => run(0, whole),
                        Some(len) => {
                            let segments = segments.get_or_insert_with(|| match &self.segmenter {
                                Some(g) => g.segments(text.as_bytes(), positions),
                                None => vec![0; positions.len()],
                            });
                            for (s, e) in windows(text, positions, segments, min, len) {
                                run(s, e);
                            }
                        }
                    }
                }
            }
        }
    }

    fn run(
        &self,
        p: &Pattern,
        text: &str,
        (from, to): (usize, usize),
        claimed: &mut Vec<(usize, usize)>,
        hits: &mut Vec<Hit>,
    ) {
        let before = hits.len();
        let search = Search {
            regex: &p.regex,
            whole_numbers: p.whole_numbers,
            bounded: p.bounded,
        };
        let prior: &[(usize, usize)] = claimed;
        search.run(
            text,
            from,
            to,
            |s, e| match p.validator {
                None => true,
                Some(v) => v.check(&text[s..e]) && !prior.iter().any(|&(a, b)| s < b && a < e),
            },
            |start, end| {
                hits.push(Hit {
                    rule: p.rule,
                    start,
                    end,
                })
            },
        );
        if p.validator.is_some() {
            claimed.extend(hits[before..].iter().map(|h| (h.start, h.end)));
        }
    }

    /// Drops hits strictly inside a `block` hit of another rule: a blocked
    /// value is refused whole, and the digits of a Slack token or the
    /// characters of a private key are not a phone number or an e-mail of
    /// their own.
    fn drop_inside_blocks(&self, hits: &mut Vec<Hit>) {
        let block = |h: &Hit| self.rules[h.rule].action == Action::Block;
        if !hits.iter().any(block) {
            return;
        }
        hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end), h.rule));
        // The block hit reaching furthest so far: its end and start.
        let mut reach: Option<(usize, usize, usize)> = None;
        hits.retain(|h| {
            let inside = reach.is_some_and(|(end, start, rule)| {
                rule != h.rule && (end > h.end || (end == h.end && start < h.start))
            });
            if block(h) && reach.is_none_or(|(end, _, _)| h.end > end) {
                reach = Some((h.end, h.start, h.rule));
            }
            !inside
        });
    }

    /// Orders the hits, maps them back to the original text and masks it.
    fn finish(&self, original: &str, folded: &Folded<'_>, mut hits: Vec<Hit>) -> DlpOutcome {
        if hits.is_empty() {
            return DlpOutcome::default();
        }
        self.drop_inside_blocks(&mut hits);
        hits.sort_unstable_by_key(|h| (h.start, h.end, h.rule));
        let mut ranges = Vec::new();
        for h in &hits {
            let rule = &self.rules[h.rule];
            if !rule.action.rewrites() {
                continue;
            }
            // Kept characters are counted in the folded text (`１３８` keeps
            // three digits), then the hidden part is mapped to the original.
            if let Some(r) = rule.mask.range(&folded.text, h.start, h.end) {
                let (start, end) = folded.span(r.start, r.end);
                if start < end {
                    ranges.push(mask::MaskRange { start, end, ..r });
                }
            }
        }
        let findings: Vec<Finding> = hits
            .iter()
            .map(|h| {
                let rule = &self.rules[h.rule];
                let (start, end) = folded.span(h.start, h.end);
                Finding {
                    rule: rule.name.clone(),
                    start,
                    end,
                    action: rule.action,
                }
            })
            .collect();
        let blocked_by = findings
            .iter()
            .find(|f| f.action == Action::Block)
            .map(|f| f.rule.clone());
        let masked = (!ranges.is_empty()).then(|| mask::apply(original, ranges));
        DlpOutcome {
            findings,
            masked,
            blocked_by,
        }
    }
}

/// Re-scans of a masked text at most (each pass masks more characters, so
/// two are enough for any input seen; the bound is a guarantee, not a limit
/// that is reached).
const MAX_MASK_PASSES: usize = 4;

/// Whether a masked finding of `outcome` touches other digits in `text`
/// (directly, or across one separator): only then can masking leave a
/// number of its own behind, by cutting a longer digit run.
fn masking_touches_digits(text: &str, outcome: &DlpOutcome) -> bool {
    outcome.masked.is_some()
        && outcome
            .findings
            .iter()
            .filter(|f| f.action.rewrites())
            .any(|f| {
                let before = text.get(..f.start).unwrap_or_default().chars().rev();
                let after = text.get(f.end..).unwrap_or_default().chars();
                mask::digit_next(before) || mask::digit_next(after)
            })
}

/// Maps a byte offset of `masked` to the byte offset of the same character
/// in `original` (the two have the same characters count, position by position).
fn char_offsets<'a>(masked: &'a str, original: &'a str) -> impl Fn(usize) -> usize + 'a {
    move |byte| {
        let chars = masked.get(..byte).map_or(0, |s| s.chars().count());
        original
            .char_indices()
            .nth(chars)
            .map_or(original.len(), |(i, _)| i)
    }
}

/// Formats one line of `moltgate dlp scan` output:
/// `{"line":N,"findings":[{"type":..,"start":..,"end":..,"action":..}],"masked":"..."}`.
///
/// Every rule applies, whatever its direction. `masked` is the line with the
/// `mask` findings applied (and `tokenize` findings masked whole); `block`
/// and `alert` findings are listed but their text is left as it was, so the
/// output shows exactly what masking would forward.
pub fn scan_line_json(policy: &DlpPolicy, line_no: usize, line: &str) -> String {
    scan_line_json_with(policy, line_no, line, |_, _| None)
}

#[cfg(test)]
mod tests;
