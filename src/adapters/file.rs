//! The schema of one adapter file, as serde reads it: every section and key
//! an operator may write, nothing more (`deny_unknown_fields` everywhere, so
//! a typo is a located error with a did-you-mean). Meaning and cross-checks
//! live in `compile`; this module only says what the file may contain.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::yaml::{EnvString, HumanDuration};
use crate::config::RouteMode;

/// One adapter file: one platform.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdapterFile {
    pub name: String,
    #[serde(default)]
    pub route: Option<RouteFile>,
    #[serde(default)]
    pub format: DocFormat,
    pub verify: VerifyFile,
    #[serde(default)]
    pub ignore: Vec<ConditionFile>,
    #[serde(default)]
    pub answers: Vec<AnswerFile>,
    pub fields: FieldsFile,
    #[serde(default)]
    pub attributes: BTreeMap<String, FieldFile>,
    #[serde(default)]
    pub reply: ReplyFile,
    #[serde(default)]
    pub dedupe_ttl: Option<HumanDuration>,
}

/// `route:`: where the gateway serves the adapter over HTTP.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteFile {
    pub path: String,
    pub upstream: String,
    #[serde(default)]
    pub mode: RouteMode,
    #[serde(default)]
    pub body_limit: Option<usize>,
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    #[serde(default)]
    pub ip_allow: Vec<String>,
    #[serde(default)]
    pub api_base: Option<EnvString>,
}

/// How the request body is read into a document that paths address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocFormat {
    /// A JSON document; paths are JSON pointers.
    #[default]
    Json,
    /// An XML document; `/root/child/...` element paths.
    Xml,
    /// `application/x-www-form-urlencoded`; `/key` paths.
    Form,
}

/// The verification schemes of the fixed menu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SchemeName {
    Hmac,
    Token,
    Ed25519,
    Jwt,
    None,
}

/// `verify:`: one flat section; which keys apply depends on `scheme`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyFile {
    pub scheme: SchemeName,
    #[serde(default)]
    pub algorithm: Option<HmacAlgorithm>,
    #[serde(default)]
    pub secret: Option<EnvString>,
    #[serde(default)]
    pub public_key: Option<EnvString>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub encoding: Option<Encoding>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub timestamp: Option<TimestampFile>,
}

/// `verify.algorithm` for `scheme: hmac`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HmacAlgorithm {
    /// HMAC-SHA256.
    #[default]
    Sha256,
    /// HMAC-SHA1.
    Sha1,
}

/// How a signature is written in its header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Hex digits, either case.
    #[default]
    Hex,
    /// Standard base64 (URL-safe accepted too).
    Base64,
}

/// `verify.timestamp`: the signed time and how far it may be from now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimestampFile {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    pub window: HumanDuration,
    #[serde(default)]
    pub unit: TimeUnit,
}

/// The unit of a signed timestamp.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Unix seconds.
    #[default]
    Seconds,
    /// Unix milliseconds.
    Milliseconds,
}

/// One test on the request document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConditionFile {
    pub field: String,
    #[serde(default)]
    pub equals: Option<Scalar>,
    #[serde(default)]
    pub not_equals: Option<Scalar>,
    #[serde(default)]
    pub one_of: Option<Vec<Scalar>>,
    #[serde(default)]
    pub not_one_of: Option<Vec<Scalar>>,
    #[serde(default)]
    pub present: Option<bool>,
    /// The skip's label (`ignore:` only).
    #[serde(default)]
    pub reason: Option<String>,
}

/// A scalar in a condition, compared by its text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    /// The text a document value must have to equal it.
    pub fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// `answers:` item: when the adapter answers by itself, and with what.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswerFile {
    pub when: ConditionFile,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub format: BodyFormat,
    pub body: serde_yaml_ng::Value,
}

/// How a body template is serialised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `serde_json` of the rendered structure.
    #[default]
    Json,
    /// A flat map, percent-encoded.
    Form,
    /// Elements, text escaped by quick-xml.
    Xml,
}

/// `fields:`: where each message field comes from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldsFile {
    pub id: FieldFile,
    pub text: FieldFile,
    #[serde(default)]
    pub sender: Option<FieldFile>,
    #[serde(default)]
    pub sender_name: Option<FieldFile>,
    #[serde(default)]
    pub tenant: Option<FieldFile>,
    #[serde(default)]
    pub room: Option<FieldFile>,
    #[serde(default)]
    pub thread: Option<FieldFile>,
    #[serde(default)]
    pub chat_type: Option<FieldFile>,
    #[serde(default)]
    pub command: Option<FieldFile>,
    #[serde(default)]
    pub attachments: Option<AttachmentsFile>,
}

/// A field: one path, a list of paths (the first non-empty wins), or the
/// long form with a value map, a join and a default.
pub(super) enum FieldFile {
    Paths(Vec<String>),
    Long(LongFieldFile),
}

/// The long form of a field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongFieldFile {
    #[serde(default)]
    pub field: Option<Paths>,
    #[serde(default)]
    pub join: Option<Vec<String>>,
    #[serde(default)]
    pub map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub default: Option<String>,
}

/// One path or a list of them.
pub(super) struct Paths(pub Vec<String>);

/// `fields.attachments`: an array and, per item, its name and URL.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachmentsFile {
    pub field: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// Reads a string, a list of strings or (when `long` is given) a map, so
/// that errors inside the map keep their line, column and did-you-mean
/// (an untagged enum would lose all three).
fn short_or_long<'de, D, T>(
    d: D,
    expecting: &'static str,
    one: fn(String) -> T,
    many: fn(Vec<String>) -> T,
    long: Option<fn(LongFieldFile) -> T>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
    struct V<T> {
        expecting: &'static str,
        one: fn(String) -> T,
        many: fn(Vec<String>) -> T,
        long: Option<fn(LongFieldFile) -> T>,
    }
    impl<'de, T> serde::de::Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            Ok((self.one)(v.to_string()))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
            Vec::<String>::deserialize(SeqAccessDeserializer::new(seq)).map(self.many)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            match self.long {
                Some(long) => LongFieldFile::deserialize(MapAccessDeserializer::new(map)).map(long),
                None => Err(serde::de::Error::invalid_type(
                    serde::de::Unexpected::Map,
                    &self.expecting,
                )),
            }
        }
    }
    d.deserialize_any(V {
        expecting,
        one,
        many,
        long,
    })
}

impl<'de> Deserialize<'de> for FieldFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        short_or_long(
            d,
            "a path like /event/text, a list of paths, or a map with field, join, map, default",
            |p| FieldFile::Paths(vec![p]),
            FieldFile::Paths,
            Some(FieldFile::Long),
        )
    }
}

impl<'de> Deserialize<'de> for Paths {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        short_or_long(
            d,
            "a path like /event/text or a list of paths",
            |p| Paths(vec![p]),
            Paths,
            None,
        )
    }
}

/// `reply:`: inline, API call, acknowledgement; any of them.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplyFile {
    #[serde(default)]
    pub inline: Option<InlineFile>,
    #[serde(default)]
    pub api: Option<ApiFile>,
    #[serde(default)]
    pub ack: Option<BodyFile>,
}

/// A body template and its serialisation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BodyFile {
    #[serde(default)]
    pub format: BodyFormat,
    pub body: serde_yaml_ng::Value,
}

/// `reply.inline`: the webhook response that carries the reply.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InlineFile {
    #[serde(default)]
    pub format: BodyFormat,
    pub body: serde_yaml_ng::Value,
    #[serde(default)]
    pub max_length: Option<usize>,
}

/// `reply.api`: the call that delivers the reply.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiFile {
    #[serde(default)]
    pub method: Option<String>,
    pub base: EnvString,
    pub url: EnvString,
    #[serde(default)]
    pub headers: BTreeMap<String, EnvString>,
    #[serde(default)]
    pub format: BodyFormat,
    pub body: serde_yaml_ng::Value,
    #[serde(default)]
    pub success: Option<SuccessFile>,
    #[serde(default)]
    pub max_length: Option<usize>,
}

/// `reply.api.success`: what marks a 200 answer as a success.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SuccessFile {
    pub field: String,
    pub equals: serde_json::Value,
}
