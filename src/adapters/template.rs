//! Templates: the bodies, URLs and headers an adapter file writes, with
//! `{{placeholder}}`s, escaped by construction.
//!
//! A template is parsed once, at load, into literal text and placeholders;
//! every placeholder is checked then (an unknown name is an error with a
//! did-you-mean). Rendering never builds text that a parser reads again:
//! a JSON body is a structure whose string leaves are filled in and then
//! serialised by `serde_json`, a form body percent-encodes every value, an
//! XML body escapes text with quick-xml, a URL percent-encodes each
//! substituted value, and a header refuses a value with a control
//! character. No value, whatever it contains, can leave its string.
//!
//! A placeholder is `{{name}}`: `reply` (the text being sent), a message
//! field (`id`, `sender`, `room`, `thread`, …) or a JSON pointer into the
//! request (`{{/event/ts}}`). `{{a|b}}` takes the first that has a value.

use serde_json::{Map, Value};

use crate::config::yaml::did_you_mean;
pub use crate::percent::encode as pct;

pub use super::file::BodyFormat;

/// The message fields a placeholder may name (besides `reply`).
pub const FIELD_NAMES: &[&str] = &[
    "id",
    "text",
    "sender",
    "sender_name",
    "tenant",
    "room",
    "thread",
    "chat_type",
    "command",
];

/// Why a template does not parse. Shown located in the adapter file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without its `}}`.
    #[error("unterminated '{{{{' in template; write {{{{name}}}}")]
    Unterminated,
    /// `{{}}` or `{{a||b}}`.
    #[error("empty placeholder; expected reply, a field name or a JSON pointer like /event/ts")]
    Empty,
    /// A name that is not a placeholder here.
    #[error("unknown placeholder '{name}'{hint}; expected one of: {expected}")]
    Unknown {
        /// What was written.
        name: String,
        /// ` (did you mean 'x'?)` or nothing.
        hint: String,
        /// The names allowed here.
        expected: String,
    },
    /// A pointer that is not a JSON pointer.
    #[error("'{0}' is not a JSON pointer: it must start with '/' and escape '~' as ~0")]
    BadPointer(String),
    /// A structure the body format cannot hold.
    #[error("{0}")]
    Shape(String),
}

/// What one placeholder alternative reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The reply text.
    Reply,
    /// A mapped message field (one of [`FIELD_NAMES`]).
    Field(&'static str),
    /// A JSON pointer into the request document.
    Pointer(String),
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Hole(Vec<Source>),
}

/// A parsed string template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

/// Which placeholders a template may use.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// `reply`.
    pub reply: bool,
    /// The message fields.
    pub fields: bool,
}

/// Checks JSON pointer syntax: `/` segments, `~` only as `~0` or `~1`.
pub fn check_pointer(p: &str) -> Result<(), TemplateError> {
    let bad = || TemplateError::BadPointer(p.chars().take(64).collect());
    if !p.starts_with('/') {
        return Err(bad());
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(bad());
        }
        if c.is_control() {
            return Err(bad());
        }
    }
    Ok(())
}

fn source(name: &str, allowed: Allowed) -> Result<Source, TemplateError> {
    if name.is_empty() {
        return Err(TemplateError::Empty);
    }
    if name.starts_with('/') {
        check_pointer(name)?;
        return Ok(Source::Pointer(name.to_string()));
    }
    let mut known: Vec<&'static str> = Vec::new();
    if allowed.reply {
        known.push("reply");
    }
    if allowed.fields {
        known.extend_from_slice(FIELD_NAMES);
    }
    if let Some(&k) = known.iter().find(|k| **k == name) {
        return Ok(if k == "reply" {
            Source::Reply
        } else {
            Source::Field(k)
        });
    }
    let hint = did_you_mean(name, known.iter().copied())
        .map(|b| format!(" (did you mean '{b}'?)"))
        .unwrap_or_default();
    known.push("a JSON pointer like /event/ts");
    Err(TemplateError::Unknown {
        name: name.chars().take(64).collect(),
        hint,
        expected: known.join(", "),
    })
}

impl Template {
    /// Parses `raw`, checking every placeholder against `allowed`.
    pub fn parse(raw: &str, allowed: Allowed) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = raw;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unterminated)?;
            let alternatives = after[..end]
                .split('|')
                .map(|a| source(a.trim(), allowed))
                .collect::<Result<Vec<_>, _>>()?;
            pieces.push(Piece::Hole(alternatives));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    /// Every source the template reads.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.0.iter().flat_map(|p| match p {
            Piece::Hole(alts) => alts.as_slice(),
            Piece::Lit(_) => &[],
        })
    }

    /// The placeholder, when the template is exactly one and nothing else.
    fn single(&self) -> Option<&[Source]> {
        match self.0.as_slice() {
            [Piece::Hole(alts)] => Some(alts),
            _ => None,
        }
    }

    /// The text with every placeholder's text in place; `escape` is applied
    /// to each substituted value (never to the literal text).
    pub fn render_with(
        &self,
        scope: &Scope<'_>,
        mut escape: impl FnMut(&str) -> Result<String, UnsafeValue>,
    ) -> Result<String, UnsafeValue> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Hole(alts) => {
                    if let Some(v) = scope.first(alts) {
                        out.push_str(&escape(&text_of(&v))?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The text, substituted values as they are (for a JSON string leaf,
    /// which serde_json escapes when it serialises).
    pub fn render(&self, scope: &Scope<'_>) -> String {
        self.render_with(scope, |s| Ok(s.to_string()))
            .unwrap_or_default()
    }
}

/// The values placeholders read when a template is rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The reply text.
    pub reply: Option<&'a str>,
    /// Mapped fields, by name, with their source JSON values.
    pub fields: Option<&'a Map<String, Value>>,
    /// The request document (answers are rendered against it).
    pub doc: Option<&'a Value>,
    /// Request values captured by pointer at receive time (replies).
    pub pointers: Option<&'a Map<String, Value>>,
}

/// Whether a value counts as present for `{{a|b}}` and omission.
fn has_value(v: &Value) -> bool {
    !matches!(v, Value::Null) && v.as_str() != Some("")
}

/// A value's text: strings as they are, other JSON compact.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Scope<'_> {
    fn get(&self, source: &Source) -> Option<Value> {
        match source {
            Source::Reply => self.reply.map(Value::from),
            Source::Field(name) => self.fields?.get(*name).cloned(),
            Source::Pointer(p) => self
                .doc
                .and_then(|d| d.pointer(p))
                .or_else(|| self.pointers?.get(p))
                .cloned(),
        }
    }

    fn first(&self, alts: &[Source]) -> Option<Value> {
        alts.iter().filter_map(|s| self.get(s)).find(has_value)
    }
}

/// A body template: a YAML structure whose string leaves are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum Tree {
    /// A literal scalar (number, bool, null) kept as written.
    Lit(Value),
    /// A string leaf.
    Str(Template),
    /// A list.
    List(Vec<Tree>),
    /// A map, keys literal, in the order written.
    Map(Vec<(String, Tree)>),
}

/// At most this many nodes in one body template.
const MAX_NODES: usize = 4096;

impl Tree {
    /// Builds the template from the file's YAML, checking placeholders.
    pub fn parse(yaml: &serde_yaml_ng::Value, allowed: Allowed) -> Result<Tree, TemplateError> {
        let mut budget = MAX_NODES;
        Self::parse_node(yaml, allowed, &mut budget, 0)
    }

    fn parse_node(
        yaml: &serde_yaml_ng::Value,
        allowed: Allowed,
        budget: &mut usize,
        depth: usize,
    ) -> Result<Tree, TemplateError> {
        use serde_yaml_ng::Value as Y;
        *budget = budget
            .checked_sub(1)
            .ok_or_else(|| TemplateError::Shape("the body template is too large".into()))?;
        if depth > 32 {
            return Err(TemplateError::Shape(
                "the body template is nested too deep".into(),
            ));
        }
        Ok(match yaml {
            Y::Null => Tree::Lit(Value::Null),
            Y::Bool(b) => Tree::Lit(Value::Bool(*b)),
            Y::Number(n) => Tree::Lit(serde_json::to_value(n).unwrap_or(Value::Null)),
            Y::String(s) => Tree::Str(Template::parse(s, allowed)?),
            Y::Sequence(items) => Tree::List(
                items
                    .iter()
                    .map(|i| Self::parse_node(i, allowed, budget, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            Y::Mapping(m) => {
                let mut out = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        _ => return Err(TemplateError::Shape("a body key must be text".into())),
                    };
                    out.push((key, Self::parse_node(v, allowed, budget, depth + 1)?));
                }
                Tree::Map(out)
            }
            Y::Tagged(t) => Self::parse_node(&t.value, allowed, budget, depth + 1)?,
        })
    }

    /// Every source the template reads.
    pub fn sources(&self) -> Vec<&Source> {
        match self {
            Tree::Lit(_) => Vec::new(),
            Tree::Str(t) => t.sources().collect(),
            Tree::List(items) => items.iter().flat_map(Tree::sources).collect(),
            Tree::Map(entries) => entries.iter().flat_map(|(_, t)| t.sources()).collect(),
        }
    }

    /// The structure with every leaf filled in. A leaf that is exactly one
    /// placeholder keeps the source JSON value's type, and is left out of
    /// its map when nothing has a value.
    pub fn render_json(&self, scope: &Scope<'_>) -> Value {
        self.render_node(scope).unwrap_or(Value::Null)
    }

    fn render_node(&self, scope: &Scope<'_>) -> Option<Value> {
        Some(match self {
            Tree::Lit(v) => v.clone(),
            Tree::Str(t) => match t.single() {
                Some(alts) => scope.first(alts)?,
                None => Value::String(t.render(scope)),
            },
            Tree::List(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.render_node(scope).unwrap_or(Value::from("")))
                    .collect(),
            ),
            Tree::Map(entries) => Value::Object(
                entries
                    .iter()
                    .filter_map(|(k, t)| Some((k.clone(), t.render_node(scope)?)))
                    .collect(),
            ),
        })
    }

    /// Checks that the structure fits `format`: a form is one flat map;
    /// XML is one root element of maps and text, with element names.
    pub fn check_format(&self, format: BodyFormat) -> Result<(), TemplateError> {
        let shape = |m: &str| Err(TemplateError::Shape(m.into()));
        match (format, self) {
            (BodyFormat::Json, _) => Ok(()),
            (BodyFormat::Form, Tree::Map(entries)) => {
                if entries
                    .iter()
                    .all(|(_, t)| matches!(t, Tree::Lit(_) | Tree::Str(_)))
                {
                    Ok(())
                } else {
                    shape("a form body is one flat map of names to text")
                }
            }
            (BodyFormat::Form, _) => shape("a form body is one flat map of names to text"),
            (BodyFormat::Xml, Tree::Map(entries)) if entries.len() == 1 => check_xml(self),
            (BodyFormat::Xml, _) => shape("an XML body is a map with one key: the root element"),
        }
    }

    /// The rendered body's bytes and content type.
    pub fn render_body(&self, format: BodyFormat, scope: &Scope<'_>) -> (Vec<u8>, &'static str) {
        match format {
            BodyFormat::Json => (
                self.render_json(scope).to_string().into_bytes(),
                "application/json",
            ),
            BodyFormat::Form => (
                render_form(&self.render_json(scope)).into_bytes(),
                "application/x-www-form-urlencoded",
            ),
            BodyFormat::Xml => {
                let mut out = String::new();
                render_xml(&self.render_json(scope), None, &mut out);
                (out.into_bytes(), "application/xml")
            }
        }
    }
}

fn xml_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn check_xml(tree: &Tree) -> Result<(), TemplateError> {
    match tree {
        Tree::Lit(_) | Tree::Str(_) => Ok(()),
        Tree::List(_) => Err(TemplateError::Shape(
            "an XML body has no lists: write one element per key".into(),
        )),
        Tree::Map(entries) => {
            for (k, t) in entries {
                if !xml_name_ok(k) {
                    return Err(TemplateError::Shape(format!(
                        "'{k}' is not an XML element name"
                    )));
                }
                check_xml(t)?;
            }
            Ok(())
        }
    }
}

fn render_form(v: &Value) -> String {
    let Value::Object(m) = v else {
        return String::new();
    };
    m.iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(&text_of(v))))
        .collect::<Vec<_>>()
        .join("&")
}

fn render_xml(v: &Value, name: Option<&str>, out: &mut String) {
    match v {
        Value::Object(m) => {
            if let Some(n) = name {
                out.push_str(&format!("<{n}>"));
            }
            for (k, child) in m {
                render_xml(child, Some(k), out);
            }
            if let Some(n) = name {
                out.push_str(&format!("</{n}>"));
            }
        }
        other => {
            if let Some(n) = name {
                let text = text_of(other);
                out.push_str(&format!(
                    "<{n}>{}</{n}>",
                    quick_xml::escape::escape(text.as_str())
                ));
            }
        }
    }
}

/// A header value's substituted part: refused when it holds a control
/// character (CR and LF above all), so no value can add a header.
pub fn header_safe(s: &str) -> Result<String, UnsafeValue> {
    if s.chars().any(char::is_control) {
        return Err(UnsafeValue(
            "a header template value has a control character",
        ));
    }
    Ok(s.to_string())
}

/// A substituted value that a template's context cannot hold safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsafeValue(pub &'static str);
