//! `mqtt:` in `moltgate.yaml`: the MQTT listeners (issue 16). Each one
//! subscribes to topics on a broker with QoS 1, hands every payload to a
//! declarative adapter and the AI cluster, and may publish the answer to a
//! reply topic built from the received topic ([`ReplyTopic`]).
//!
//! Everything is checked at load: names, topic filters, the reply template
//! (and that replies could never land on a subscribed topic, which would
//! feed moltgate its own answers), the keep-alive rumqttc accepts, the CA
//! file. The password comes from the environment and never reaches a log
//! line or an error ([`MqttPassword`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::yaml::{EnvString, FileError, HumanDuration};
use super::{UpstreamConfig, UpstreamKind};

/// Payloads larger than this are refused by default (64 KiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The largest payload MQTT can carry (its remaining length is at most
/// 268,435,455 bytes).
pub const MQTT_MAX_PAYLOAD: usize = 268_435_455;

/// One entry of `mqtt:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttListenerConfig {
    /// `[a-z0-9_-]`, unique: labels logs, metrics and the default client id.
    pub name: EnvString,
    /// Where the broker is and how to log in.
    pub broker: BrokerConfig,
    /// Topic filters, subscribed with QoS 1 (`+` and `#` allowed).
    pub topics: Vec<EnvString>,
    /// The declarative adapter that maps a payload to a message.
    pub adapter: EnvString,
    /// The gRPC upstream (AI cluster) messages go to.
    pub upstream: EnvString,
    /// Where an answer is published (QoS 1); absent: answers are dropped.
    #[serde(default)]
    pub reply_topic: Option<ReplyTopic>,
    /// Who the sender is, for policies.
    #[serde(default)]
    pub identity: MqttIdentity,
    /// Largest payload handed on, in bytes; a larger one is refused (and
    /// acknowledged: redelivering it would not make it smaller).
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

/// `broker:` of an MQTT listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: EnvString,
    /// Port (default 1883, or 8883 with `tls: true`).
    #[serde(default)]
    pub port: Option<u16>,
    /// TLS (1.2 or 1.3) to the broker.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA bundle that signs the broker's certificate (default: the
    /// Mozilla roots). Only with `tls: true`.
    #[serde(default)]
    pub ca: Option<EnvString>,
    /// The MQTT client id (default `moltgate-<name>`). Keep it stable and
    /// unique per gateway node: the broker keeps the session (subscriptions
    /// and unacknowledged messages) under it.
    #[serde(default)]
    pub client_id: Option<EnvString>,
    /// Login user name.
    #[serde(default)]
    pub username: Option<EnvString>,
    /// Login password (write `${MQTT_PASSWORD}`).
    #[serde(default)]
    pub password: Option<MqttPassword>,
    /// How often an idle connection is pinged (1s to 18h12m15s).
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
}

/// Whose identity a message carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttIdentity {
    /// The adapter's `sender` field, read from the payload.
    #[default]
    Adapter,
    /// The MQTT client: the broker user name, else the listener name.
    Client,
}

/// A broker password that never reaches a log line.
#[derive(Clone, Deserialize)]
#[serde(from = "EnvString")]
pub struct MqttPassword(String);

impl From<EnvString> for MqttPassword {
    fn from(s: EnvString) -> Self {
        MqttPassword(s.0)
    }
}

impl fmt::Debug for MqttPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MqttPassword(***)")
    }
}

impl MqttPassword {
    /// The password as configured: only for logging in.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD
}

fn default_keep_alive() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl MqttListenerConfig {
    /// The client id the broker knows this listener by.
    pub fn client_id(&self) -> String {
        match &self.broker.client_id {
            Some(id) => id.0.clone(),
            None => format!("moltgate-{}", self.name),
        }
    }
}

impl BrokerConfig {
    /// The port, with the default that fits `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls { 8883 } else { 1883 })
    }
}

/// One piece of a reply-topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `{topic}`: the whole received topic.
    Topic,
    /// `{N}`: level N (1-based) of the received topic.
    Level(usize),
}

/// Where an answer goes: a template over the received topic's levels,
/// `alerts/{2}/reply` (level 2 of `alerts/dev7/events` is `dev7`) or
/// `{topic}/reply` (the whole topic). Written as a plain string in YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTopic {
    raw: String,
    pieces: Vec<Piece>,
}

/// Why a reply topic could not be built for a received topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyTopicError {
    /// The template names a level the topic does not have.
    #[error("reply_topic '{template}' names level {level}, but the topic has {levels} level(s)")]
    MissingLevel {
        /// The template as written.
        template: String,
        /// The level named.
        level: usize,
        /// The received topic's levels.
        levels: usize,
    },
    /// The result is not a topic one may publish to.
    #[error("reply_topic '{template}' gives an unusable topic: {why}")]
    Unusable {
        /// The template as written.
        template: String,
        /// What is wrong with the result (never the topic itself).
        why: &'static str,
    },
}

impl<'de> Deserialize<'de> for ReplyTopic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Parsed inside the visitor, so an error carries the value's position.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ReplyTopic;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reply topic template, like alerts/{2}/reply")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ReplyTopic, E> {
                let v = super::yaml::expand_env(v).map_err(E::custom)?;
                ReplyTopic::parse(&v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Display for ReplyTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl ReplyTopic {
    /// Parses a template; the message says what is wrong and what is expected.
    pub fn parse(raw: &str) -> Result<ReplyTopic, String> {
        let expected = "expected text with {topic} or {N} (a 1-based topic level), like alerts/{2}/reply or {topic}/reply";
        if raw.is_empty() {
            return Err(format!("reply_topic is empty; {expected}"));
        }
        if let Some(c) = raw.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
            return Err(format!(
                "reply_topic '{raw}' contains {c:?}; wildcards and NUL cannot be published to"
            ));
        }
        let mut pieces = Vec::new();
        let mut rest = raw;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!(
                    "reply_topic '{raw}' has a '}}' without '{{'; {expected}"
                ));
            }
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("reply_topic '{raw}' has an unclosed '{{'; {expected}"))?;
            let name = &after[..close];
            pieces.push(match name {
                "topic" => Piece::Topic,
                n => match n.parse::<usize>() {
                    Ok(level) if level >= 1 && n.chars().all(|c| c.is_ascii_digit()) => {
                        Piece::Level(level)
                    }
                    _ => return Err(format!("reply_topic '{raw}' has '{{{name}}}'; {expected}")),
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(ReplyTopic {
            raw: raw.to_string(),
            pieces,
        })
    }

    /// The reply topic for a message received on `topic`. Refuses a result
    /// with a wildcard (`+`, `#`) or NUL, an empty one, or one too long to send.
    pub fn render(&self, topic: &str) -> Result<String, ReplyTopicError> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = String::with_capacity(self.raw.len() + topic.len());
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Topic => out.push_str(topic),
                Piece::Level(n) => match n.checked_sub(1).and_then(|i| levels.get(i)) {
                    Some(level) => out.push_str(level),
                    None => {
                        return Err(ReplyTopicError::MissingLevel {
                            template: self.raw.clone(),
                            level: *n,
                            levels: levels.len(),
                        })
                    }
                },
            }
        }
        let why = if out.is_empty() {
            Some("it is empty")
        } else if out.contains(['+', '#']) {
            Some("it contains a wildcard (+ or #)")
        } else if out.contains('\0') {
            Some("it contains NUL")
        } else if out.len() > usize::from(u16::MAX) {
            Some("it is longer than 65535 bytes")
        } else {
            None
        };
        match why {
            Some(why) => Err(ReplyTopicError::Unusable {
                template: self.raw.clone(),
                why,
            }),
            None => Ok(out),
        }
    }

    /// The template as topic filters that cover every topic it can render
    /// for a message on a topic that `subscribed` matches: `{topic}` becomes
    /// each subscribed filter in turn, a level with `{N}` (or joined to part
    /// of the topic) becomes `+`, and a filter ends at a `#`.
    fn as_filters(&self, subscribed: &[&str]) -> Vec<Vec<String>> {
        if self.pieces.contains(&Piece::Topic) {
            subscribed.iter().map(|s| self.as_filter(s)).collect()
        } else {
            vec![self.as_filter("#")]
        }
    }

    fn as_filter(&self, topic: &str) -> Vec<String> {
        // (text, wild) per level.
        let mut levels: Vec<(String, bool)> = vec![(String::new(), false)];
        for piece in &self.pieces {
            let (text, whole) = match piece {
                Piece::Text(t) => (t.as_str(), false),
                Piece::Topic => (topic, true),
                Piece::Level(_) => {
                    if let Some(last) = levels.last_mut() {
                        last.1 = true;
                    }
                    continue;
                }
            };
            let mut parts = text.split('/');
            if let (Some(first), Some(last)) = (parts.next(), levels.last_mut()) {
                // Part of a topic level joined to other text is any level.
                last.1 |= whole && (last.1 || !last.0.is_empty());
                last.0.push_str(first);
            }
            levels.extend(parts.map(|p| (p.to_string(), false)));
        }
        let mut out = Vec::new();
        for (text, wild) in levels {
            if text.contains('#') {
                out.push("#".to_string());
                break;
            }
            out.push(if wild || text.contains('+') {
                "+".to_string()
            } else {
                text
            });
        }
        out
    }
}

/// Whether two topic filters (split into levels) can match one same topic.
fn filters_overlap(a: &[String], b: &[String]) -> bool {
    let mut i = 0;
    loop {
        match (a.get(i).map(String::as_str), b.get(i).map(String::as_str)) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => i += 1,
            _ => return false,
        }
    }
}

/// The problems of `mqtt:` that types cannot catch, each located in `text`.
/// `resolve` turns a configured path into the one to open.
pub fn check(
    listeners: &[MqttListenerConfig],
    upstreams: &BTreeMap<String, UpstreamConfig>,
    resolve: &dyn Fn(&str) -> PathBuf,
    source: &Path,
    text: &str,
) -> Vec<FileError> {
    let section = key_offset(text, "mqtt").unwrap_or(0);
    let mut errors = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for l in listeners {
        let name = l.name.0.as_str();
        let start = find_from(text, section, &format!("name: {name}"))
            .or_else(|| find_from(text, section, name))
            .unwrap_or(section);
        let at = |needle: &str, msg: String| {
            let pos = find_from(text, start, needle).map(|o| position(text, o));
            FileError::at(source, pos, msg)
        };
        if seen.contains(&name) {
            errors.push(at(name, format!("mqtt listener '{name}' is defined twice")));
        }
        seen.push(name);
        errors.extend(
            check_listener(l, upstreams, resolve)
                .into_iter()
                .map(|(needle, msg)| at(&needle, msg)),
        );
    }
    errors
}

/// One listener's problems, as (text to locate, message).
fn check_listener(
    l: &MqttListenerConfig,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Vec<(String, String)> {
    let name = l.name.0.as_str();
    let mut out = Vec::new();
    let valid_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(valid_name) {
        out.push((
            name.to_string(),
            format!("mqtt listener name '{name}' must be [a-z0-9_-]+, like iot-alerts"),
        ));
    }
    out.extend(check_broker(name, &l.broker, resolve));
    out.extend(check_topics(l));
    for (key, value) in [("adapter", &l.adapter), ("upstream", &l.upstream)] {
        if value.is_empty() {
            out.push((
                format!("{key}:"),
                format!("mqtt listener '{name}': {key} is empty"),
            ));
        }
    }
    if !l.upstream.is_empty() {
        match upstreams.get(&l.upstream.0) {
            None => {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                let hint = super::yaml::did_you_mean(&l.upstream, known.iter().copied())
                    .map(|s| format!(" (did you mean '{s}'?)"))
                    .unwrap_or_default();
                out.push((
                    format!("upstream: {}", l.upstream),
                    format!(
                        "mqtt listener '{name}' names unknown upstream '{}'{hint}; defined: {}",
                        l.upstream,
                        known.join(", ")
                    ),
                ));
            }
            Some(up) if up.kind != UpstreamKind::Grpc => out.push((
                format!("upstream: {}", l.upstream),
                format!(
                    "mqtt listener '{name}' needs a grpc upstream (an AI cluster), but '{}' is http",
                    l.upstream
                ),
            )),
            Some(_) => {}
        }
    }
    if l.max_payload == 0 || l.max_payload > MQTT_MAX_PAYLOAD {
        out.push((
            "max_payload".into(),
            format!("mqtt listener '{name}': max_payload must be 1 to {MQTT_MAX_PAYLOAD} bytes (MQTT's limit), like 65536"),
        ));
    }
    out
}

/// `broker:`'s problems, as (text to locate, message).
fn check_broker(
    name: &str,
    b: &BrokerConfig,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if b.host.trim().is_empty() {
        out.push((
            "host:".into(),
            format!("mqtt listener '{name}': broker.host is empty"),
        ));
    }
    if b.port == Some(0) {
        out.push((
            "port:".into(),
            format!("mqtt listener '{name}': broker.port must be 1 to 65535"),
        ));
    }
    if let Some(id) = &b.client_id {
        if id.is_empty() || id.len() > usize::from(u16::MAX) {
            out.push((
                "client_id:".into(),
                format!("mqtt listener '{name}': broker.client_id must be 1 to 65535 bytes; the broker keeps the session under it"),
            ));
        }
    }
    if b.password.is_some() && b.username.as_ref().is_none_or(|u| u.is_empty()) {
        out.push((
            "password:".into(),
            format!("mqtt listener '{name}': a broker password needs a username (MQTT 3.1.1)"),
        ));
    }
    let ka = b.keep_alive.0;
    if ka < Duration::from_secs(1) || ka.as_secs() > u64::from(u16::MAX) {
        out.push((
            "keep_alive:".into(),
            format!("mqtt listener '{name}': broker.keep_alive must be 1s to 65535s (it is how a dead broker is noticed), like 30s"),
        ));
    }
    match (&b.ca, b.tls) {
        (Some(_), false) => out.push((
            "ca:".into(),
            format!(
                "mqtt listener '{name}': broker.ca is set but broker.tls is false; set tls: true"
            ),
        )),
        (Some(ca), true) => {
            if let Err(e) = read_ca(&resolve(ca)) {
                out.push((
                    ca.0.clone(),
                    format!("mqtt listener '{name}': broker.ca: {e}"),
                ));
            }
        }
        (None, _) => {}
    }
    out
}

/// `topics:` and `reply_topic:`'s problems, as (text to locate, message).
fn check_topics(l: &MqttListenerConfig) -> Vec<(String, String)> {
    let name = l.name.0.as_str();
    let mut out = Vec::new();
    if l.topics.is_empty() {
        out.push((
            "topics:".into(),
            format!("mqtt listener '{name}' has no topics; expected a list of topic filters, like [\"alerts/+/events\"]"),
        ));
    }
    for (i, t) in l.topics.iter().enumerate() {
        if !rumqttc::valid_filter(t) || t.contains('\0') || t.len() > usize::from(u16::MAX) {
            out.push((
                t.0.clone(),
                format!("mqtt listener '{name}': '{t}' is not a topic filter; '+' must be a whole level and '#' the whole last one, like alerts/+/events or alerts/#"),
            ));
        } else if l.topics[..i].contains(t) {
            out.push((
                t.0.clone(),
                format!("mqtt listener '{name}': topic '{t}' is listed twice"),
            ));
        }
    }
    if let Some(reply) = &l.reply_topic {
        let subscribed: Vec<&str> = l.topics.iter().map(|t| t.0.as_str()).collect();
        let reply_filters = reply.as_filters(&subscribed);
        for t in &l.topics {
            let levels: Vec<String> = t.split('/').map(str::to_string).collect();
            if reply_filters.iter().any(|f| filters_overlap(f, &levels)) {
                out.push((
                    reply.raw.clone(),
                    format!("mqtt listener '{name}': reply_topic '{reply}' can name a topic that '{t}' subscribes to, so moltgate would receive its own replies; pick a reply topic outside the subscribed filters"),
                ));
            }
        }
    }
    out
}

/// Reads a PEM CA bundle: the certificates in it, at least one.
pub fn read_ca(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate; expected a PEM CA bundle (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Byte offset of the map key `key:` that starts a line.
fn key_offset(text: &str, key: &str) -> Option<usize> {
    let pattern = format!("{key}:");
    text.match_indices(&pattern).map(|(i, _)| i).find(|&i| {
        let line_start = text[..i].rfind('\n').map_or(0, |nl| nl + 1);
        text[line_start..i].trim().is_empty()
    })
}

/// Byte offset of the first `needle` at or after `from`.
fn find_from(text: &str, from: usize, needle: &str) -> Option<usize> {
    text.get(from..)?.find(needle).map(|i| from + i)
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
