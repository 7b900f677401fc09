//! `listen.admin` in `moltgate.yaml`: where the admin listener binds, the
//! bearer token that guards `/metrics` and `POST /reload`, and how often
//! `POST /reload` may reload. Without a token the listener must be on a
//! loopback address: it speaks plain HTTP, and anyone who could reach it
//! could read the metrics and reload policies.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::yaml::{self, EnvString, FileError, HumanDuration};

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminListener {
    /// `host:port`.
    pub address: EnvString,
    /// The bearer token `/metrics` and `POST /reload` require, normally
    /// `"${MOLTGATE_ADMIN_TOKEN}"`. Without one (absent or empty) the admin
    /// listener must be on a loopback address.
    #[serde(default)]
    pub token: Option<AdminToken>,
    /// Shortest time between two reloads through `POST /reload` (429 with
    /// `Retry-After` inside it); `0s` removes the limit.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: HumanDuration,
}

fn default_reload_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

impl AdminListener {
    /// The token, when one is set (an empty one, from an unset
    /// `${VAR:-}`, is none).
    pub fn token(&self) -> Option<&AdminToken> {
        self.token.as_ref().filter(|t| !t.0.is_empty())
    }
}

/// Shortest admin token accepted, in bytes.
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

/// The admin listener's bearer token. Its `Debug` never shows it, so a
/// logged config cannot leak it.
#[derive(Clone, Deserialize)]
#[serde(from = "EnvString")]
pub struct AdminToken(String);

impl From<EnvString> for AdminToken {
    fn from(s: EnvString) -> Self {
        AdminToken(s.0)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The token's bytes, to compare with what a request presents.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Why the token cannot be used (never repeating it), if it cannot.
    fn problem(&self) -> Option<String> {
        let fix = "generate one with: openssl rand -hex 32";
        if self.0.len() < ADMIN_TOKEN_MIN_LEN {
            Some(format!(
                "listen.admin.token is {} bytes; use at least {ADMIN_TOKEN_MIN_LEN} random bytes ({fix})",
                self.0.len()
            ))
        } else if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            Some(format!(
                "listen.admin.token must be printable ASCII without spaces, as it is sent in an Authorization header ({fix})"
            ))
        } else {
            None
        }
    }
}

/// The admin listener's problems, located in the config `text` read from
/// `source`: a token too weak to use, or no token on an address others can
/// reach. (An unparseable address is reported with the other listeners.)
pub fn check(admin: &AdminListener, source: &Path, text: &str) -> Option<FileError> {
    if let Some(problem) = admin.token().and_then(AdminToken::problem) {
        let pos = yaml::locate_after_key(text, "admin", "token");
        return Some(FileError::at(source, pos, problem));
    }
    let addr = admin.address.parse::<SocketAddr>().ok()?;
    if admin.token().is_some() || addr.ip().to_canonical().is_loopback() {
        return None;
    }
    let pos = yaml::locate(text, &admin.address)
        .or_else(|| yaml::locate_after_key(text, "admin", "address"));
    Some(FileError::at(
        source,
        pos,
        format!(
            "listen.admin.address '{addr}' is not a loopback address and listen.admin.token is not set: anyone who can reach it could read /metrics and POST /reload. Bind it to 127.0.0.1:{port}, or set token: \"${{MOLTGATE_ADMIN_TOKEN}}\" (generate one with: openssl rand -hex 32)",
            port = addr.port()
        ),
    ))
}
