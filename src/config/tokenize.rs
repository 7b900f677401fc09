//! `tokenize:` in `moltgate.yaml`: the SM4 key and TTL of reversible
//! tokenisation (DLP `action: tokenize`, see [`crate::tokenize`]).
//!
//! ```yaml
//! tokenize: { key: "${MOLTGATE_TOKEN_KEY}", ttl: 24h }
//! ```
//!
//! The key is a secret: [`TokenKeyText`]'s `Debug` hides it, and the
//! checks say what is wrong with it without quoting it. Without `key:`, it
//! is read from `MOLTGATE_TOKEN_KEY`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::token_key::{KeyError, MasterKey};
use super::yaml::{self, EnvString, FileError, HumanDuration};

/// The environment variable read when `tokenize.key` is not written.
pub const KEY_ENV: &str = "MOLTGATE_TOKEN_KEY";

/// The `tokenize:` block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeConfig {
    /// 32 hex digits: the 128-bit SM4 key (default: `$MOLTGATE_TOKEN_KEY`).
    #[serde(default = "key_from_env")]
    pub key: TokenKeyText,
    /// How long an original value is kept after it was last tokenised: a
    /// token in a reply later than that stays a token.
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// Most token ids kept in memory (per node); the least used go first.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
}

/// The key as written (after `${VAR}` expansion); never printed.
#[derive(Clone, Deserialize)]
#[serde(from = "EnvString")]
pub struct TokenKeyText(String);

impl From<EnvString> for TokenKeyText {
    fn from(s: EnvString) -> Self {
        TokenKeyText(s.0)
    }
}

impl std::fmt::Debug for TokenKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeyText([redacted])")
    }
}

fn key_from_env() -> TokenKeyText {
    TokenKeyText(std::env::var(KEY_ENV).unwrap_or_default())
}

fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

fn default_max_entries() -> u64 {
    1_000_000
}

impl TokenizeConfig {
    /// The checked key.
    pub fn master_key(&self) -> Result<MasterKey, KeyError> {
        MasterKey::parse(&self.key.0)
    }
}

/// Problems of the `tokenize:` block: a missing, malformed or weak key, a
/// zero TTL or capacity.
pub fn check(cfg: &TokenizeConfig, source: &Path, text: &str) -> Vec<FileError> {
    let at = |key: &str, msg: String| {
        let pos = yaml::locate_after_key(text, "tokenize", &format!("{key}:"))
            .or_else(|| yaml::locate_key(text, "tokenize"));
        FileError::at(source, pos, msg)
    };
    let mut errors = Vec::new();
    if let Err(e) = cfg.master_key() {
        errors.push(at("key", e.to_string()));
    }
    if cfg.ttl.0.is_zero() {
        errors.push(at(
            "ttl",
            "tokenize.ttl must be above zero (for example 24h): no token could be restored".into(),
        ));
    }
    if cfg.max_entries == 0 {
        errors.push(at(
            "max_entries",
            "tokenize.max_entries must be above zero: no value could be kept".into(),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: &str) -> TokenizeConfig {
        TokenizeConfig {
            key: TokenKeyText(key.into()),
            ttl: default_ttl(),
            max_entries: 10,
        }
    }

    #[test]
    fn key_never_shows() {
        let c = cfg("8f1c2ab9d07e4e55b61c93a07f2d3e11");
        assert!(!format!("{c:?}").contains("8f1c2ab9"));
        assert!(check(&c, Path::new("m.yaml"), "").is_empty());
        let weak = cfg("8f1c2ab9d07e4e55b61c93a07f2d3e1");
        let errors = check(&weak, Path::new("m.yaml"), "");
        assert_eq!(errors.len(), 1);
        assert!(!errors[0].to_string().contains("8f1c2ab9"), "{}", errors[0]);
        assert!(errors[0].to_string().contains("32 hex digits"));
    }
}
