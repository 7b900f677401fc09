//! The shape of `abac.yaml` as written, and its compilation into rules with
//! every problem of every rule reported (not only the first), each at its
//! `file:line:col`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::conditions::Conditions;
use super::decision::Effect;
use super::rules::Rule;
use super::scalar::List;
use crate::config::yaml::{locate, parse_all, FileError, Items};
use crate::policy::glob::Glob;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policies: Items<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    effect: Effect,
    resources: List<Glob>,
    actions: List<Glob>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    confirm: bool,
    /// Kept for operators; not used in decisions.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// Parses and compiles `abac.yaml` (`text`, read from `path`) into rules in
/// file order, or every error found, sorted by position.
pub(crate) fn compile(path: &Path, text: &str) -> Result<Vec<Rule>, FileError> {
    let (raw, mut errors) = parse_all::<RawFile>(path, text);
    let raw = raw.map(|f| f.policies.0).unwrap_or_default();
    check_ids(path, text, &raw, &mut errors);
    FileError::sort_by_position(&mut errors);
    FileError::check(errors)?;
    Ok(raw
        .into_iter()
        .map(|r| Rule {
            id: Arc::from(r.id.as_str()),
            effect: r.effect,
            resources: r.resources.0,
            actions: r.actions.0,
            conditions: r.conditions,
            confirm: r.confirm,
        })
        .collect())
}

/// Every rule needs a non-empty id, unique in the file.
fn check_ids(path: &Path, text: &str, rules: &[RawRule], errors: &mut Vec<FileError>) {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut repeats: Vec<(&str, usize)> = Vec::new();
    let mut empty = 0;
    for r in rules {
        if r.id.trim().is_empty() {
            empty += 1;
            errors.push(FileError::at(
                path,
                locate_id(text, r.id.trim(), empty).or_else(|| locate(text, "id:")),
                "a rule has an empty id; every rule needs a unique id",
            ));
        } else if !seen.insert(&r.id) {
            let n = repeats.iter().filter(|(id, _)| *id == r.id).count() + 2;
            repeats.push((&r.id, n));
            let pos = locate_id(text, &r.id, n).or_else(|| locate(text, &r.id));
            errors.push(FileError::at(
                path,
                pos,
                format!("duplicate rule id '{}'; rule ids must be unique", r.id),
            ));
        }
    }
}

/// Byte offset of the `n`th (1-based) `id: <id>` (quoted or not) in `text`.
fn id_offset(text: &str, id: &str, n: usize) -> Option<usize> {
    text.match_indices("id:")
        .filter_map(|(i, _)| {
            let after = &text[i + 3..];
            let value = after.trim_start_matches([' ', '"', '\'']);
            let rest = value.strip_prefix(id)?;
            let ends = rest
                .chars()
                .next()
                .is_none_or(|c| matches!(c, ' ' | ',' | '}' | '"' | '\'' | '\n' | '\r' | '#'));
            ends.then_some(i)
        })
        .nth(n.checked_sub(1)?)
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Position of the `n`th (1-based) `id: <id>` (quoted or not) in `text`.
pub(crate) fn locate_id(text: &str, id: &str, n: usize) -> Option<(usize, usize)> {
    id_offset(text, id, n).map(|o| position(text, o))
}

/// Position of the value `value` (quoted or bare) in the rule with id `id`:
/// the first occurrence after the rule's `id:`, else anywhere in the file.
pub(crate) fn locate_in_rule(text: &str, id: &str, value: &str) -> Option<(usize, usize)> {
    let from = id_offset(text, id, 1).unwrap_or(0);
    let find = |needle: &str| text[from..].find(needle).map(|o| o + from);
    let offset = [format!("\"{value}\""), format!("'{value}'")]
        .iter()
        .find_map(|q| find(q))
        .or_else(|| find(value));
    match offset {
        Some(o) => Some(position(text, o)),
        None => locate(text, value),
    }
}
