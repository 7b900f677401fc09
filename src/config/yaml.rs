//! Loading YAML files that operators edit by hand: the config and every policy.
//!
//! One loader for all of them, so every file gets the same treatment:
//! unknown keys are errors, `${VAR}` / `${VAR:-default}` are read from the
//! environment, durations read like `30s`, and every error names
//! `file:line:col`, says what was expected, and suggests the closest known
//! key for a typo (`ipRnage` → `did you mean ipRange?`).
//!
//! Like a compiler, a check reports every error it can find, not only the
//! first: [`FileError`] carries the further diagnostics of the same check, and
//! [`parse_all`] keeps reading after an error in one item of an [`Items`] list
//! (or any list built on [`RecoverableList`]).
//!
//! Policy files may come from a ConfigMap or a pull request, so a file is
//! first checked against hostile shapes (`yaml::guard`) before `serde_yaml_ng`
//! (libyaml) reads it: at most [`MAX_BYTES`], lists and maps nested at most
//! [`MAX_DEPTH`] deep, at most [`MAX_ALIAS_VALUES`] values added by aliases
//! (a "billion laughs" repeats one anchor many times), and no mapping key
//! twice.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

mod guard;

use guard::{check_size, guard, Duplicate, Guarded};
pub use guard::{MAX_ALIAS_VALUES, MAX_BYTES, MAX_DEPTH};

/// An error in a file an operator wrote, located where it can be fixed.
///
/// One check may find several: the first is this value's own fields, the rest
/// are in [`FileError::more`], and `Display` prints each on its own line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileError {
    /// The file, as the operator named it.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
    /// Further errors found by the same check, in the order they are shown.
    /// Each has an empty `more` of its own.
    pub more: Vec<FileError>,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_one(f)?;
        for e in &self.more {
            f.write_str("\n")?;
            e.fmt_one(f)?;
        }
        Ok(())
    }
}

impl FileError {
    /// An error about the file as a whole (unreadable, semantic check).
    pub fn whole(path: &Path, message: impl Into<String>) -> Self {
        Self::at(path, None, message)
    }

    /// An error at a position found by [`locate`] (falls back to the whole file).
    pub fn at(path: &Path, pos: Option<(usize, usize)>, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            message: message.into(),
            more: Vec::new(),
        }
    }

    /// Joins every diagnostic of `errors` (flattened, in order) into one
    /// error; `None` when there are none.
    pub fn collect(errors: impl IntoIterator<Item = FileError>) -> Option<FileError> {
        let mut all = errors.into_iter().flat_map(FileError::split);
        let mut head = all.next()?;
        head.more = all.collect();
        Some(head)
    }

    /// `Ok(())` when `errors` is empty, else all of them as one error.
    pub fn check(errors: Vec<FileError>) -> Result<(), FileError> {
        match FileError::collect(errors) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Every diagnostic on its own, the first one first.
    pub fn split(mut self) -> Vec<FileError> {
        let more = std::mem::take(&mut self.more);
        let mut out = Vec::with_capacity(more.len() + 1);
        out.push(self);
        out.extend(more.into_iter().flat_map(FileError::split));
        out
    }

    /// How many diagnostics this error carries (at least one).
    pub fn count(&self) -> usize {
        1 + self.more.len()
    }

    /// Sorts diagnostics of one file by position, those without one last,
    /// as a compiler lists them.
    pub fn sort_by_position(errors: &mut [FileError]) {
        errors.sort_by_key(|e| (e.line.is_none(), e.line, e.column));
    }

    fn fmt_one(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads and parses a YAML file into `T`. A file over [`MAX_BYTES`] is
/// refused before it is read.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let cannot = |e: std::io::Error| FileError::whole(path, format!("cannot read: {e}"));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    check_size(path, usize::try_from(len).unwrap_or(usize::MAX))?;
    let text = std::fs::read_to_string(path).map_err(cannot)?;
    parse_str(path, &text)
}

/// Parses YAML `text` (read from `path`) into `T`, once the guard passed it.
/// A key written twice is refused: by the schema's own error where it has one
/// (moved to the second occurrence), else once the file has parsed.
pub fn parse_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    match guard(path, text)? {
        Guarded::Clean(duplicates) => {
            let value = deserialize(path, text, &duplicates)?;
            Duplicate::refuse(path, duplicates)?;
            Ok(value)
        }
        // libyaml reports the syntax error exactly as it always has; if it
        // reads what the guard could not, the file is still refused.
        Guarded::Unparsed(e) => deserialize::<T>(path, text, &[]).and(Err(e)),
    }
}

/// `serde_yaml_ng`'s reading of `text`, its error located and explained. An
/// error about a key written twice, which serde_yaml_ng places at the
/// enclosing map, is moved to the key's second occurrence, and serde's
/// `duplicate field` says where the first one is.
fn deserialize<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    duplicates: &[Duplicate],
) -> Result<T, FileError> {
    serde_yaml_ng::from_str(text).map_err(|e| {
        let pos = e.location().map(|l| (l.line(), l.column()));
        let message = explain(&e.to_string());
        match Duplicate::about(&message, pos, duplicates) {
            Some(d) if message.starts_with("duplicate field `") => d.error(path),
            Some(d) => FileError::at(path, Some(d.at), message),
            None => FileError::at(path, pos, message),
        }
    })
}

/// At most this many errors are collected from one file.
const MAX_ERRORS: usize = 50;

/// Parses `text` like [`parse_str`], but goes on after an error inside an
/// item of a recoverable list ([`Items`], [`RecoverableList`]): that item is
/// reported, skipped, and the file parsed again, until it parses or an error
/// lies outside every item. Returns the value without the failed items (for
/// further checks of the rest) and every error, in the order found. Keys
/// written twice that deserializing let through are reported once nothing
/// else is wrong.
pub fn parse_all<T: DeserializeOwned>(path: &Path, text: &str) -> (Option<T>, Vec<FileError>) {
    let (unparsed, duplicates) = match guard(path, text) {
        Ok(Guarded::Clean(duplicates)) => (None, duplicates),
        Ok(Guarded::Unparsed(e)) => (Some(e), Vec::new()),
        Err(e) => return (None, e.split()),
    };
    let (value, errors) = parse_items(path, text, &duplicates);
    match (unparsed, value) {
        // libyaml read what the guard could not parse: still refused.
        (Some(e), Some(_)) => (None, errors.into_iter().chain([e]).collect()),
        // Keys that deserializing let through, once nothing else is wrong.
        (None, Some(_)) if errors.is_empty() && !duplicates.is_empty() => {
            (None, duplicates.iter().map(|d| d.error(path)).collect())
        }
        (_, value) => (value, errors),
    }
}

/// [`parse_all`] after the guard: passes of [`deserialize`] until one parses
/// or an error lies outside every item.
fn parse_items<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    duplicates: &[Duplicate],
) -> (Option<T>, Vec<FileError>) {
    let mut skip: HashSet<(usize, usize)> = HashSet::new();
    let mut errors: Vec<FileError> = Vec::new();
    loop {
        let (result, failed_in) = {
            let _pass = Pass::start(skip.clone());
            let result = deserialize::<T>(path, text, duplicates);
            (
                result,
                RECOVERY.with(|r| r.borrow().as_ref()?.stack.last().copied()),
            )
        };
        let e = match result {
            Ok(v) => return (Some(v), errors),
            Err(e) => e,
        };
        let repeated = errors.contains(&e);
        if !repeated {
            errors.push(e);
        }
        match failed_in {
            Some(item) if !repeated && errors.len() < MAX_ERRORS && skip.insert(item) => {}
            _ => return (None, errors),
        }
    }
}

/// What [`parse_all`] tells the recoverable lists during one pass.
#[derive(Debug, Default)]
struct Recovery {
    /// (list, item) pairs to read past without deserializing.
    skip: HashSet<(usize, usize)>,
    /// Lists begun so far in this pass; a pass begins them in the same order.
    lists: usize,
    /// The items being read, innermost last.
    stack: Vec<(usize, usize)>,
}

thread_local! {
    static RECOVERY: RefCell<Option<Recovery>> = const { RefCell::new(None) };
}

/// One pass of [`parse_all`]; clears the thread's recovery state when dropped.
struct Pass;

impl Pass {
    fn start(skip: HashSet<(usize, usize)>) -> Pass {
        RECOVERY.with(|r| {
            *r.borrow_mut() = Some(Recovery {
                skip,
                ..Recovery::default()
            })
        });
        Pass
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        RECOVERY.with(|r| *r.borrow_mut() = None);
    }
}

/// A list (YAML sequence or map) whose items [`parse_all`] may skip. Its
/// deserializer calls [`enter`](Self::enter) before each item and
/// [`leave`](Self::leave) after it, and reads an item it
/// [`skips`](Self::skips) as `IgnoredAny`. Outside `parse_all` it does nothing.
#[derive(Debug)]
pub struct RecoverableList(Option<usize>);

impl RecoverableList {
    /// Registers a list in the current pass.
    pub fn begin() -> Self {
        RecoverableList(RECOVERY.with(|r| {
            let mut r = r.borrow_mut();
            let state = r.as_mut()?;
            state.lists += 1;
            Some(state.lists - 1)
        }))
    }

    /// Whether item `i` failed in an earlier pass and must be read past.
    pub fn skips(&self, i: usize) -> bool {
        self.0.is_some_and(|list| {
            RECOVERY.with(|r| {
                r.borrow()
                    .as_ref()
                    .is_some_and(|s| s.skip.contains(&(list, i)))
            })
        })
    }

    /// Item `i` is being read: an error before [`leave`](Self::leave) belongs to it.
    pub fn enter(&self, i: usize) {
        if let Some(list) = self.0 {
            RECOVERY.with(|r| {
                if let Some(s) = r.borrow_mut().as_mut() {
                    s.stack.push((list, i));
                }
            });
        }
    }

    /// The item begun by the last [`enter`](Self::enter) was read without error.
    pub fn leave(&self) {
        if self.0.is_some() {
            RECOVERY.with(|r| {
                if let Some(s) = r.borrow_mut().as_mut() {
                    s.stack.pop();
                }
            });
        }
    }
}

/// A YAML sequence of `T` that [`parse_all`] reads item by item: an item with
/// an error is reported and skipped, and the items after it are still read.
/// With [`parse_str`] it is a plain `Vec<T>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Items<T>(pub Vec<T>);

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Items<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<T>, A::Error> {
                let list = RecoverableList::begin();
                let mut out = Vec::new();
                for i in 0.. {
                    if list.skips(i) {
                        if seq.next_element::<IgnoredAny>()?.is_none() {
                            break;
                        }
                        continue;
                    }
                    list.enter(i);
                    let item = seq.next_element::<T>()?;
                    list.leave();
                    match item {
                        Some(v) => out.push(v),
                        None => break,
                    }
                }
                Ok(Items(out))
            }
        }
        d.deserialize_seq(V(PhantomData))
    }
}

/// Finds the 1-based line and column of the first occurrence of `needle` in
/// `text`, for semantic errors found after parsing.
pub fn locate(text: &str, needle: &str) -> Option<(usize, usize)> {
    text.find(needle).map(|offset| position(text, offset))
}

/// Byte offset of the map key `key:` that starts a line (after indentation).
fn key_offset(text: &str, key: &str) -> Option<usize> {
    let pattern = format!("{key}:");
    text.match_indices(&pattern).map(|(i, _)| i).find(|&i| {
        let line_start = text[..i].rfind('\n').map_or(0, |nl| nl + 1);
        text[line_start..i].trim().is_empty()
    })
}

/// Position of the map key `key:` that starts a line (after indentation),
/// else of the first `key:` anywhere.
pub fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    match key_offset(text, key) {
        Some(i) => Some(position(text, i)),
        None => locate(text, &format!("{key}:")),
    }
}

/// Like [`locate`], but the first `needle` after the map key `key:` that
/// starts a line (for a value inside one section), falling back to the
/// first `needle` anywhere.
pub fn locate_after_key(text: &str, key: &str, needle: &str) -> Option<(usize, usize)> {
    let from = key_offset(text, key).map_or(0, |i| i + key.len() + 1);
    match text[from..].find(needle) {
        Some(i) => Some(position(text, from + i)),
        None => locate(text, needle),
    }
}

/// Like [`locate`], but the `n`th (1-based) occurrence of `needle`.
pub fn locate_nth(text: &str, needle: &str, n: usize) -> Option<(usize, usize)> {
    let (offset, _) = text.match_indices(needle).nth(n.checked_sub(1)?)?;
    Some(position(text, offset))
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Rewrites serde_yaml_ng's message: drops its own position suffix (we print
/// `file:line:col` in front) and adds a did-you-mean for unknown keys.
fn explain(raw: &str) -> String {
    let msg = match raw.rfind(" at line ") {
        Some(i) => &raw[..i],
        None => raw,
    };
    let msg = strip_yaml_path(msg.trim_end_matches(','));
    for (marker, what) in [("unknown field `", "key"), ("unknown variant `", "value")] {
        // serde_yaml_ng prefixes nested errors with their path (`routes[0].secrets: `).
        if let Some(rest) = msg.find(marker).map(|i| &msg[i + marker.len()..]) {
            if let Some((name, expected)) = rest.split_once('`') {
                let candidates = parse_expected(expected);
                let mut out = format!("unknown {what} '{name}'");
                if let Some(best) = did_you_mean(name, candidates.iter().map(String::as_str)) {
                    out.push_str(&format!(" (did you mean '{best}'?)"));
                }
                if !candidates.is_empty() {
                    out.push_str(&format!("; expected one of: {}", candidates.join(", ")));
                }
                return out;
            }
        }
    }
    msg.to_string()
}

/// Drops the path serde_yaml_ng puts in front of a nested error
/// (`policies[2].conditions.time: invalid ...`): `file:line:col` already
/// says where it is.
fn strip_yaml_path(msg: &str) -> &str {
    let Some((path, rest)) = msg.split_once(": ") else {
        return msg;
    };
    let is_path = !path.is_empty()
        && (path.contains('.') || path.contains('['))
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[]<>".contains(c));
    if is_path && !rest.is_empty() {
        rest
    } else {
        msg
    }
}

/// Extracts the names from serde's ", expected one of `a`, `b`" tail.
fn parse_expected(tail: &str) -> Vec<String> {
    tail.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The candidate closest to `name` by edit distance, if it is plausibly a typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance with adjacent transpositions counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2 = vec![0usize; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

/// Expands `${VAR}` and `${VAR:-default}` from the environment.
///
/// An unset variable without a default is an error, so a missing secret is
/// caught at load time rather than shipped as an empty string.
pub fn expand_env(raw: &str) -> Result<String, String> {
    expand_with(raw, |name| std::env::var(name).ok())
}

fn expand_with(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            format!("unterminated '${{' in {raw:?}; expected ${{VAR}} or ${{VAR:-default}}")
        })?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name '{name}' in ${{...}}"));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a duration written like `30s`, `5m`, `24h`, `1h30m` or `250ms`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw.trim()).map_err(|_| {
        format!("invalid duration '{raw}'; expected a number and a unit, like 30s, 5m or 24h")
    })
}

/// A string with `${VAR}` references expanded; use it for every string an
/// operator writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvString(pub String);

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Expanding inside the visitor (not after `deserialize` returns) is
        // what lets serde_yaml_ng attach the scalar's own line and column.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = EnvString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvString, E> {
                expand_env(v).map(EnvString).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EnvString, E> {
                Ok(EnvString(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EnvString, E> {
                Ok(EnvString(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EnvString, E> {
                Ok(EnvString(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl std::ops::Deref for EnvString {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A duration written like `30s`; a bare number is seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 30s, 5m or 24h")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HumanDuration, E> {
                u64::try_from(v)
                    .map(|s| HumanDuration(Duration::from_secs(s)))
                    .map_err(|_| {
                        E::custom(format!("invalid duration {v}; it must not be negative"))
                    })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                let v = expand_env(v).map_err(E::custom)?;
                parse_duration(&v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

#[cfg(test)]
mod tests;
