//! The shape of `dlp.yaml` as written, and its compilation into a
//! [`DlpPolicy`]: regexes in the ASCII dialect, triggers, and the one keyword
//! automaton. Every bad pattern and keyword rule is reported, not only the
//! first, each at `file:line:col`.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::Regex;
use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::fold::{self, fold, Keep};
use super::triggers::{ascii_dialect, derive_trigger, is_bounded, treats_alike};
use super::{
    AcTarget, Action, DlpPolicy, MaskSpec, Pattern, Rule, Validator, BOTH, EGRESS, INGRESS,
};
use crate::config::yaml::{locate, locate_key, parse_all, FileError, RecoverableList};

/// Above this many automaton bytes a DFA costs more to build and hold than it
/// saves in scanning; the contiguous NFA is used instead.
const DFA_MAX_PATTERN_BYTES: usize = 64 * 1024;
/// Up to this many automaton bytes the DFA skips byte-class translation: one
/// lookup less per scanned byte (about 2x here) for up to ~1 KiB per state.
const DFA_FULL_ALPHABET_BYTES: usize = 16 * 1024;

/// The directions a rule applies to, as written in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectionSpec {
    Ingress,
    Egress,
    #[default]
    Both,
}

impl DirectionSpec {
    fn bits(self) -> u8 {
        match self {
            DirectionSpec::Ingress => INGRESS,
            DirectionSpec::Egress => EGRESS,
            DirectionSpec::Both => BOTH,
        }
    }
}

// Regexes and keywords are plain strings, not EnvString: `${` is ordinary
// regex syntax and must not be read as an environment variable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternSpec {
    regex: String,
    #[serde(default)]
    validate: Option<Validator>,
    action: Action,
    #[serde(default)]
    direction: DirectionSpec,
    #[serde(default)]
    mask: Option<MaskSpec>,
    #[serde(default)]
    unicode: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeywordSpec {
    words: Vec<String>,
    action: Action,
    #[serde(default)]
    direction: DirectionSpec,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    mask: Option<MaskSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DlpFile {
    #[serde(default)]
    patterns: Ordered<PatternSpec>,
    #[serde(default)]
    keywords: Ordered<KeywordSpec>,
}

/// A YAML map kept in file order, so "the first blocking rule" means what the
/// operator sees, and duplicate names are refused with a position. Under
/// [`parse_all`] an entry with an error is reported and skipped.
#[derive(Debug)]
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from rule name to rule")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let list = RecoverableList::begin();
                let mut out: Vec<(String, T)> = Vec::new();
                for i in 0.. {
                    if list.skips(i) {
                        if map.next_key::<IgnoredAny>()?.is_none() {
                            break;
                        }
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    list.enter(i);
                    let Some(name) = map.next_key::<String>()? else {
                        list.leave();
                        break;
                    };
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(A::Error::custom(format!("duplicate rule name '{name}'")));
                    }
                    let value = map.next_value()?;
                    list.leave();
                    out.push((name, value));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// Parses and compiles `dlp.yaml` (`text`, read from `path`).
pub(super) fn compile(path: &Path, text: &str) -> Result<DlpPolicy, FileError> {
    let (file, errors) = parse_all::<DlpFile>(path, text);
    let file = file.unwrap_or_default();
    let mut b = Builder {
        path,
        text,
        policy: DlpPolicy::default(),
        sources: Vec::new(),
        names: Vec::new(),
        literals: Vec::new(),
        case_fold: false,
        errors,
    };
    for (name, spec) in &file.patterns.0 {
        b.pattern(name, spec);
    }
    let any_ci = file.keywords.0.iter().any(|(_, k)| k.case_insensitive);
    for (name, spec) in &file.keywords.0 {
        b.keyword(name, spec, any_ci);
    }
    b.finish()
}

/// A `dlp.yaml` being compiled, with the errors found so far.
struct Builder<'a> {
    path: &'a Path,
    text: &'a str,
    policy: DlpPolicy,
    /// The compiled regexes' sources, for [`Keep`].
    sources: Vec<String>,
    /// Every rule name seen, compiled or not, for the duplicate check.
    names: Vec<String>,
    literals: Vec<Vec<u8>>,
    case_fold: bool,
    errors: Vec<FileError>,
}

impl Builder<'_> {
    /// Records an error at rule `name`.
    fn error(&mut self, name: &str, message: String) {
        let text = self.text;
        let pos = locate_key(text, name).or_else(|| locate(text, name));
        self.errors.push(FileError::at(self.path, pos, message));
    }

    /// The checks every rule gets; false when the rule must be left out.
    fn admit(&mut self, name: &str, action: Action, mask: Option<&MaskSpec>) -> bool {
        let mut ok = true;
        if let Err(msg) = check_mask(name, action, mask) {
            self.error(name, msg);
            ok = false;
        }
        if self.names.iter().any(|n| n == name) {
            self.error(
                name,
                format!("rule name '{name}' is used twice; pattern and keyword names share one namespace"),
            );
            ok = false;
        }
        self.names.push(name.to_string());
        ok
    }

    fn pattern(&mut self, name: &str, spec: &PatternSpec) {
        if !self.admit(name, spec.action, spec.mask.as_ref()) {
            return;
        }
        let source = if spec.unicode {
            spec.regex.clone()
        } else {
            ascii_dialect(&spec.regex)
        };
        let regex = match Regex::new(&source) {
            Ok(r) => r,
            Err(e) => {
                // Report the operator's own pattern, not our rewrite of it.
                let shown = Regex::new(&spec.regex).err().unwrap_or(e);
                return self.error(name, format!("pattern '{name}': {}", regex_error(&shown)));
            }
        };
        self.sources.push(source.clone());
        let pattern_index = self.policy.patterns.len();
        let (trigger, lits) = derive_trigger(&source);
        for lit in lits {
            self.literals.push(lit);
            self.policy.targets.push(AcTarget::Trigger {
                pattern: pattern_index,
            });
        }
        self.push_rule(name, spec.action, spec.direction, spec.mask);
        self.policy.patterns.push(Pattern {
            rule: self.policy.rules.len() - 1,
            regex,
            validator: spec.validate,
            trigger,
            whole_numbers: !spec.unicode,
            bounded: is_bounded(&source),
        });
    }

    fn keyword(&mut self, name: &str, spec: &KeywordSpec, any_ci: bool) {
        if !self.admit(name, spec.action, spec.mask.as_ref()) {
            return;
        }
        if spec.words.is_empty() {
            return self.error(name, format!("keywords '{name}': 'words' is empty"));
        }
        // Text is scanned folded, so keywords are folded the same way.
        let words: Vec<String> = spec.words.iter().map(|w| fold(w).into_owned()).collect();
        if words.iter().any(String::is_empty) {
            return self.error(name, format!("keywords '{name}': empty word"));
        }
        let rule = self.policy.rules.len();
        for word in &words {
            let exact = (any_ci && !spec.case_insensitive).then(|| Box::from(word.as_bytes()));
            self.literals.push(word.as_bytes().to_vec());
            self.policy.targets.push(AcTarget::Keyword { rule, exact });
            let dirs = spec.direction.bits();
            self.policy
                .keywords
                .push((Box::from(word.as_bytes()), dirs));
        }
        self.case_fold |= spec.case_insensitive;
        self.push_rule(name, spec.action, spec.direction, spec.mask);
    }

    fn push_rule(
        &mut self,
        name: &str,
        action: Action,
        dirs: DirectionSpec,
        mask: Option<MaskSpec>,
    ) {
        self.policy.rules.push(Rule {
            name: Arc::from(name),
            action,
            dirs: dirs.bits(),
            mask: mask.unwrap_or_default(),
        });
    }

    /// Every error sorted by position, or the policy with its automaton built.
    fn finish(mut self) -> Result<DlpPolicy, FileError> {
        FileError::sort_by_position(&mut self.errors);
        FileError::check(self.errors)?;
        let mut policy = self.policy;
        policy.keep = keep(&self.sources, &self.literals);
        policy.segmenter = super::DigitSegments::build(&policy.patterns, &self.sources);
        fold::warm();
        if !self.literals.is_empty() {
            let total: usize = self.literals.iter().map(Vec::len).sum();
            let kind = (total <= DFA_MAX_PATTERN_BYTES).then_some(AhoCorasickKind::DFA);
            let automaton = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(self.case_fold)
                .kind(kind)
                .byte_classes(total > DFA_FULL_ALPHABET_BYTES)
                .build(&self.literals)
                .map_err(|e| {
                    FileError::whole(self.path, format!("cannot build keyword automaton: {e}"))
                })?;
            policy.automaton = Some(automaton);
        }
        Ok(policy)
    }
}

/// The full-width punctuation no rule can tell from its ASCII form (see
/// [`Keep`]): absent from every keyword and trigger literal, and treated
/// alike by every regex.
fn keep(sources: &[String], literals: &[Vec<u8>]) -> Keep {
    let mut ascii = [false; 128];
    for &b in literals.iter().flatten() {
        if let Some(slot) = ascii.get_mut(usize::from(b)) {
            *slot = true;
        }
    }
    let hirs: Vec<_> = sources
        .iter()
        .map(|s| regex_syntax::Parser::new().parse(s).ok())
        .collect();
    let mut keep = Keep::NONE;
    for (u, a) in Keep::candidates() {
        let alike =
            |h: &Option<regex_syntax::hir::Hir>| h.as_ref().is_some_and(|h| treats_alike(h, u, a));
        if !ascii[a as usize] && hirs.iter().all(alike) {
            keep = keep.with(u);
        }
    }
    keep
}

/// A regex error on one line (the crate's own message draws the pattern and
/// a caret under it over several lines): `invalid regex: unclosed group
/// (column 1)`, the column counted in characters of the pattern.
fn regex_error(e: &regex::Error) -> String {
    let regex::Error::Syntax(text) = e else {
        return format!("invalid regex: {}", e.to_string().replace('\n', " "));
    };
    // The crate indents the pattern and the caret line under it by 4.
    const INDENT: usize = 4;
    let caret = text.lines().find_map(|l| {
        let t = l.trim();
        (!t.is_empty() && t.chars().all(|c| c == '^'))
            .then(|| l.chars().take_while(|c| *c == ' ').count())
    });
    let what = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or("syntax error");
    match caret {
        Some(at) => format!(
            "invalid regex: {what} (column {})",
            at.saturating_sub(INDENT) + 1
        ),
        None => format!("invalid regex: {what}"),
    }
}

/// `mask:` options only make sense on a `mask` rule.
fn check_mask(name: &str, action: Action, mask: Option<&MaskSpec>) -> Result<(), String> {
    if mask.is_some() && action != Action::Mask {
        return Err(format!(
            "rule '{name}': 'mask' options need 'action: mask' (it is '{action}')"
        ));
    }
    Ok(())
}
