//! `DeclarativeAdapter`: a compiled adapter file, as data. It implements
//! `crate::platform::PlatformAdapter` in `crate::platform::declarative`
//! (the runtime lives beside the platforms it imitates, so that this
//! module, which the policy set holds, never imports `platform`, which
//! imports `policy`). Here: the compiled conditions and fields, and how a
//! field is read from a request document (pure JSON, no platform types).

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::file::DocFormat;
use super::template::{text_of, BodyFormat, Template, Tree};
use super::verify::Scheme;

/// At most this many attachments are passed on per message.
pub const MAX_ATTACHMENTS: usize = 16;

/// A test on the request document.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub pointer: String,
    pub test: Test,
}

/// What a [`Condition`] checks, on the value's text.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Equals(String),
    NotEquals(String),
    OneOf(Vec<String>),
    NotOneOf(Vec<String>),
    Present(bool),
}

impl Condition {
    pub fn holds(&self, doc: &Value) -> bool {
        let value = doc.pointer(&self.pointer).filter(|v| !v.is_null());
        let text = value.map(text_of);
        match &self.test {
            Test::Present(p) => value.is_some() == *p,
            Test::Equals(x) => text.as_deref() == Some(x.as_str()),
            Test::NotEquals(x) => text.as_deref() != Some(x.as_str()),
            Test::OneOf(xs) => text.is_some_and(|t| xs.contains(&t)),
            Test::NotOneOf(xs) => !text.is_some_and(|t| xs.contains(&t)),
        }
    }
}

/// An `ignore:` rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub when: Condition,
    pub reason: &'static str,
}

/// An `answers:` entry.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub when: Condition,
    pub event: &'static str,
    pub format: BodyFormat,
    pub body: Tree,
}

/// Where one message field comes from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Field {
    pub paths: Vec<String>,
    pub join: Vec<String>,
    pub map: Option<BTreeMap<String, String>>,
    pub default: Option<String>,
}

fn present(v: &Value) -> bool {
    !v.is_null() && v.as_str() != Some("")
}

impl Field {
    /// The field's value: its source JSON value where there is one.
    pub fn read(&self, doc: &Value) -> Option<Value> {
        let mut value = self
            .paths
            .iter()
            .filter_map(|p| doc.pointer(p))
            .find(|v| present(v))
            .cloned();
        if value.is_none() && !self.join.is_empty() {
            let parts: Vec<String> = self
                .join
                .iter()
                .filter_map(|p| doc.pointer(p))
                .filter(|v| present(v))
                .map(text_of)
                .collect();
            let joined = parts.join(" ").trim().to_string();
            value = (!joined.is_empty()).then_some(Value::String(joined));
        }
        if let (Some(map), Some(v)) = (&self.map, &value) {
            value = map.get(&text_of(v)).cloned().map(Value::String);
        }
        value.or_else(|| self.default.clone().map(Value::String))
    }
}

/// `fields.attachments`.
#[derive(Debug, Clone)]
pub(crate) struct Attachments {
    pub pointer: String,
    pub name: String,
    pub url: String,
}

/// The mapped fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields {
    /// (placeholder name, field), `id` and `text` first.
    pub named: Vec<(&'static str, Field)>,
    pub attachments: Option<Attachments>,
}

/// `reply.inline`.
#[derive(Debug, Clone)]
pub(crate) struct Inline {
    pub format: BodyFormat,
    pub body: Tree,
    pub max_length: Option<usize>,
}

/// `reply.api`.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub method: Method,
    pub base: String,
    pub url: Template,
    pub headers: Vec<(String, Template)>,
    pub format: BodyFormat,
    pub body: Tree,
    pub success: Option<(&'static str, Value)>,
    pub max_length: Option<usize>,
}

/// `reply:`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reply {
    pub inline: Option<Inline>,
    pub api: Option<Api>,
    pub ack: Option<(BodyFormat, Tree)>,
}

/// A platform described by an adapter file. Its `Debug` shows the name and
/// scheme only: templates and the scheme hold secrets.
pub struct DeclarativeAdapter {
    pub(crate) name: &'static str,
    pub(crate) format: DocFormat,
    pub(crate) scheme: Scheme,
    pub(crate) answers: Vec<Answer>,
    pub(crate) ignore: Vec<Rule>,
    pub(crate) fields: Fields,
    pub(crate) attributes: Vec<(String, Field)>,
    pub(crate) reply: Reply,
    /// Pointers the reply templates read, kept in `reply_to`.
    pub(crate) captured: Vec<String>,
    pub(crate) deadline: Duration,
    pub(crate) dedupe_ttl: Duration,
}

impl std::fmt::Debug for DeclarativeAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclarativeAdapter")
            .field("name", &self.name)
            .field("scheme", &self.scheme.name())
            .finish_non_exhaustive()
    }
}

impl DeclarativeAdapter {
    /// The platform label: the file's `name`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The verification scheme's name (`hmac`, `token`, `ed25519`, `jwt`, `none`).
    pub fn scheme(&self) -> &'static str {
        self.scheme.name()
    }
}
