//! The loader's bounds, checked before libyaml reads a file.
//!
//! `serde_yaml_ng` reads with libyaml, whose scanner is quadratic in flow
//! nesting (40 000 `[` take seconds, a file of the size limit could hold millions) and which
//! repeats an anchor for every alias (2 000 aliases of one 20 000-item list,
//! 100 KiB, made 40 million strings). So [`guard`] first streams the file's
//! events from `saphyr-parser`, which is linear and stops at the first bound
//! crossed: the size, how deep lists and maps nest, how many values aliases
//! add. It also finds every mapping key written twice, which deserializing
//! may let through (a map keeps the last value without a word).

use std::collections::HashMap;
use std::path::Path;

use saphyr_parser::{Event, Marker, Parser, ScanError, Span};

use super::{FileError, MAX_ERRORS};

/// The largest file the loader reads: 16 MiB. Most policy files are a few
/// KiB; a `dlp.yaml` with 100 000 keywords is about 2 MiB.
pub const MAX_BYTES: usize = 16 << 20;

/// The deepest nesting of lists and maps accepted, the map at the top of a
/// file included. The deepest schema needs fewer than 10 levels;
/// serde_yaml_ng's own limit (128) is never reached.
pub const MAX_DEPTH: usize = 64;

/// The most values that aliases (`*name`) may add to a file, counting every
/// value of the repeated anchor each time it is repeated. An anchor shared a
/// few times stays far below it; a "billion laughs", or one long list
/// repeated thousands of times (a few bytes that each add the whole list),
/// crosses it.
pub const MAX_ALIAS_VALUES: usize = 100_000;

/// At most this many `[` and `{` in a file the guard cannot parse (a syntax
/// error) for libyaml to be asked for its own message: libyaml's time grows
/// with the square of the flow nesting, which is at most this.
const MAX_UNCHECKED_FLOW: usize = 4096;

/// What [`guard`] found in a file within the size, depth and alias bounds.
#[derive(Debug)]
pub(super) enum Guarded {
    /// Parsed; the mapping keys written twice, if any.
    Clean(Vec<Duplicate>),
    /// The guard's parser stopped at a syntax error before crossing a bound,
    /// and the file's flow nesting is small enough for libyaml to report the
    /// error its own way. Holds the guard's error, for a file that libyaml
    /// reads anyway.
    Unparsed(FileError),
}

/// A mapping key written a second time in the same mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Duplicate {
    key: String,
    /// Line and column of the second occurrence.
    pub(super) at: (usize, usize),
    /// Line and column of the first.
    first: (usize, usize),
}

impl Duplicate {
    /// Refuses every duplicate key that deserializing let through.
    pub(super) fn refuse(path: &Path, duplicates: Vec<Duplicate>) -> Result<(), FileError> {
        FileError::check(duplicates.into_iter().map(|d| d.error(path)).collect())
    }

    pub(super) fn error(&self, path: &Path) -> FileError {
        let (line, column) = self.first;
        FileError::at(
            path,
            Some(self.at),
            format!(
                "duplicate key '{}' (first at line {line}, column {column})",
                self.key
            ),
        )
    }

    /// The duplicate that an error of deserializing at `pos` is about: serde's
    /// "duplicate field `name`", or a schema's own "duplicate condition
    /// 'name'", which serde_yaml_ng places at the enclosing map.
    pub(super) fn about<'a>(
        message: &str,
        pos: Option<(usize, usize)>,
        duplicates: &'a [Duplicate],
    ) -> Option<&'a Duplicate> {
        if !message.contains("duplicate ") {
            return None;
        }
        let from = pos.unwrap_or((0, 0));
        duplicates
            .iter()
            .filter(|d| d.at >= from)
            .filter(|d| {
                message.contains(&format!("`{}`", d.key))
                    || message.contains(&format!("'{}'", d.key))
            })
            .min_by_key(|d| d.at)
    }
}

/// Refuses a file of more than [`MAX_BYTES`].
pub(super) fn check_size(path: &Path, len: usize) -> Result<(), FileError> {
    if len > MAX_BYTES {
        return Err(FileError::whole(
            path,
            format!(
                "the file is {len} bytes; the limit is {MAX_BYTES} bytes ({} MiB)",
                MAX_BYTES >> 20
            ),
        ));
    }
    Ok(())
}

/// Checks `text` against the loader's bounds before libyaml reads it, and
/// finds every mapping key written twice.
pub(super) fn guard(path: &Path, text: &str) -> Result<Guarded, FileError> {
    check_size(path, text.len())?;
    // saphyr-parser refuses a tab after `key:` and in a quoted line break,
    // which libyaml reads as a space. A tab is one character, like a space,
    // so positions do not move.
    let spaced;
    let text = if text.contains('\t') {
        spaced = text.replace('\t', " ");
        &spaced
    } else {
        text
    };
    let mut walk = Walk {
        path,
        text,
        open: Vec::new(),
        anchors: HashMap::new(),
        through_aliases: 0,
        duplicates: Vec::new(),
    };
    for event in Parser::new_from_str(text) {
        match event {
            Ok((event, span)) => walk.event(event, span)?,
            Err(e) => return walk.unparsed(&e),
        }
    }
    Ok(Guarded::Clean(walk.duplicates))
}

/// The guard's state while it walks a file's events.
struct Walk<'a> {
    path: &'a Path,
    text: &'a str,
    /// The lists and maps the walk is inside of, innermost last.
    open: Vec<Open>,
    /// Per anchor id: how many values the anchored node holds (aliases in it
    /// expanded), and its text when it is a scalar (an alias may be a key).
    anchors: HashMap<usize, (usize, Option<String>)>,
    /// Values added by the aliases so far.
    through_aliases: usize,
    duplicates: Vec<Duplicate>,
}

/// A list or map the walk is inside of.
struct Open {
    /// Its anchor id, 0 for none.
    anchor: usize,
    /// Values it holds so far, itself included, aliases expanded.
    values: usize,
    /// A map's keys so far, with their positions; `None` for a list.
    keys: Option<HashMap<String, (usize, usize)>>,
    /// Whether the last node that ended in this map was a key.
    is_key: bool,
}

/// 1-based line and column of a saphyr-parser position.
fn at(m: &Marker) -> (usize, usize) {
    (m.line(), m.col() + 1)
}

impl Walk<'_> {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), FileError> {
        // The node that ended here: values it holds (aliases expanded), its
        // text if a scalar, its anchor id (0 for none).
        let (values, scalar, anchor) = match event {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.open.len() >= MAX_DEPTH {
                    return Err(self.too_deep(&span.start));
                }
                let map = matches!(event, Event::MappingStart(..));
                self.open.push(Open {
                    anchor,
                    values: 1,
                    keys: map.then(HashMap::new),
                    is_key: false,
                });
                return Ok(());
            }
            Event::SequenceEnd | Event::MappingEnd => match self.open.pop() {
                Some(done) => (done.values, None, done.anchor),
                None => return Ok(()),
            },
            Event::Scalar(value, _, anchor, _) => (1, Some(value.into_owned()), anchor),
            Event::Alias(id) => {
                let (values, scalar) = self.alias(id, &span)?;
                (values, scalar, 0)
            }
            _ => return Ok(()),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, (values, scalar.clone()));
        }
        self.ended(values, scalar, &span.start);
        Ok(())
    }

    /// Counts what an alias adds; refuses it past [`MAX_ALIAS_VALUES`].
    fn alias(&mut self, id: usize, span: &Span) -> Result<(usize, Option<String>), FileError> {
        // An alias inside its own anchor is left to serde_yaml_ng's
        // recursion limit.
        let (values, scalar) = self.anchors.get(&id).cloned().unwrap_or((1, None));
        self.through_aliases = self.through_aliases.saturating_add(values);
        if self.through_aliases <= MAX_ALIAS_VALUES {
            return Ok((values, scalar));
        }
        let name: String = self
            .text
            .chars()
            .skip(span.start.index())
            .take(span.end.index().saturating_sub(span.start.index()))
            .collect();
        Err(FileError::at(
            self.path,
            Some(at(&span.start)),
            format!(
                "alias '{}' makes aliases expand to more than {MAX_ALIAS_VALUES} values; the limit is {MAX_ALIAS_VALUES}",
                name.trim()
            ),
        ))
    }

    /// A node starting at `start` ended: it counts in its parent, and in a
    /// map, every other node is a key.
    fn ended(&mut self, values: usize, scalar: Option<String>, start: &Marker) {
        let Some(parent) = self.open.last_mut() else {
            return;
        };
        parent.values = parent.values.saturating_add(values);
        let Some(keys) = parent.keys.as_mut() else {
            return;
        };
        parent.is_key = !parent.is_key;
        let (true, Some(key)) = (parent.is_key, scalar) else {
            return;
        };
        let here = at(start);
        match keys.get(&key) {
            Some(&first) if self.duplicates.len() < MAX_ERRORS => {
                self.duplicates.push(Duplicate {
                    key,
                    at: here,
                    first,
                });
            }
            Some(_) => {}
            None => {
                keys.insert(key, here);
            }
        }
    }

    /// The parser stopped at `e`, before any bound was crossed.
    fn unparsed(&self, e: &ScanError) -> Result<Guarded, FileError> {
        // The scanner's own bound on flow nesting (255), met while it looks
        // ahead, before the parser hands over the level past MAX_DEPTH.
        if e.info() == "recursion limit exceeded" {
            return Err(self.too_deep(e.marker()));
        }
        let error = FileError::at(self.path, Some(at(e.marker())), e.info());
        let flow = self
            .text
            .bytes()
            .filter(|b| matches!(b, b'[' | b'{'))
            .count();
        if flow <= MAX_UNCHECKED_FLOW {
            Ok(Guarded::Unparsed(error))
        } else {
            Err(error)
        }
    }

    fn too_deep(&self, m: &Marker) -> FileError {
        FileError::at(
            self.path,
            Some(at(m)),
            format!(
                "lists and maps are nested more than {MAX_DEPTH} deep; the limit is {MAX_DEPTH}"
            ),
        )
    }
}
