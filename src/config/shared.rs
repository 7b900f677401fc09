//! `shared:` in `moltgate.yaml`: the Redis (or Valkey) that edge nodes
//! share rate limits, dedupe claims, conversation context and pending
//! confirmations through. Absent, every node keeps its state in memory.
//!
//! The URL may carry a password (`redis://:secret@host`), so it is never
//! printed as written: [`RedisUrl`]'s `Debug` and [`RedisUrl::redacted`]
//! hide the user information.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::yaml::{self, EnvString, FileError, HumanDuration};

/// The `shared:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// Where the shared tier is.
    pub redis: RedisConfig,
    /// Prepended to every key, so several gateways (or environments) can
    /// share one Redis without seeing each other's state.
    #[serde(default = "default_prefix")]
    pub key_prefix: EnvString,
    /// What a limit or dedupe check does while Redis fails.
    #[serde(default)]
    pub on_error: OnError,
    /// How long a dedupe claim of a message still being processed holds.
    /// A node that dies between claim and commit blocks redeliveries of
    /// that message (503 with `Retry-After`) until it passes. Must exceed
    /// the `timeout` of every upstream a platform route uses (the longest a
    /// message with an id can be in flight).
    #[serde(default = "default_claim_ttl")]
    pub claim_ttl: HumanDuration,
}

/// `shared.redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`, `rediss://…` (TLS) or `unix:///path.sock`.
    pub url: RedisUrl,
    /// Per command; past it the command counts as failed.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

/// What limits and dedupe do while Redis fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Limits and dedupe pass (availability first).
    Allow,
    /// 503 with `Retry-After` (strictness first).
    Deny,
    /// This node's own in-memory state decides (the default).
    #[default]
    Local,
}

impl OnError {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
            OnError::Local => "local",
        }
    }
}

/// A Redis URL whose password never reaches a log line.
#[derive(Clone, Deserialize)]
#[serde(from = "EnvString")]
pub struct RedisUrl(String);

impl From<EnvString> for RedisUrl {
    fn from(s: EnvString) -> Self {
        RedisUrl(s.0)
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl RedisUrl {
    /// The URL as configured, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any user information replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return "<not a URL>".into();
        };
        match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => self.0.clone(),
        }
    }
}

fn default_prefix() -> EnvString {
    EnvString("moltgate:".into())
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}

fn default_claim_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// Problems of the `shared:` block that types cannot catch: a URL redis-rs
/// cannot use, a zero timeout, a claim that would expire while its message
/// is still in flight (`longest` is the longest a message can take, with
/// what sets it).
pub fn check(
    shared: &SharedConfig,
    longest: Option<(Duration, String)>,
    source: &Path,
    text: &str,
) -> Vec<FileError> {
    let at_key = |key: &str, msg: String| FileError::at(source, yaml::locate_key(text, key), msg);
    let mut errors = Vec::new();
    let url = shared.redis.url.expose();
    let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok || redis::Client::open(url).is_err() {
        errors.push(at_key(
            "url",
            format!(
                "shared.redis.url '{}' is not a Redis URL; expected redis://host:6379/0, rediss://host:6380/0 (TLS) or unix:///run/redis.sock",
                shared.redis.url.redacted()
            ),
        ));
    }
    if shared.redis.timeout.0.is_zero() {
        errors.push(at_key(
            "timeout",
            "shared.redis.timeout must be above zero (for example 50ms): every command would fail"
                .into(),
        ));
    }
    if let Some((longest, what)) = longest {
        if shared.claim_ttl.0 <= longest {
            errors.push(at_key(
                "claim_ttl",
                format!(
                    "shared.claim_ttl ({}) must be longer than {what} ({}): a message still in flight could be claimed again by another node",
                    humantime::format_duration(shared.claim_ttl.0),
                    humantime::format_duration(longest),
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url = RedisUrl("redis://:hunter2@10.0.0.5:6379/0".into());
        assert_eq!(url.redacted(), "redis://***@10.0.0.5:6379/0");
        assert!(!format!("{url:?}").contains("hunter2"));
        let plain = RedisUrl("unix:///run/redis.sock".into());
        assert_eq!(plain.redacted(), "unix:///run/redis.sock");
    }
}
