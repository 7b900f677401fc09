//! `security_policy.yaml`: the edge's first line: JWT validation for the
//! generic API, IP allow and deny lists, the proxies whose
//! `X-Forwarded-For` is trusted, and rate limits.

use serde::Deserialize;

use super::ip::Cidr;
use super::jwt::JwtValidationConfig;
use super::rate::RateLimitingConfig;

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityPolicyFile {
    /// Rate limits by scope.
    #[serde(default)]
    pub rate_limiting: RateLimitingConfig,
    /// When non-empty, only these networks may connect.
    #[serde(default)]
    pub ip_whitelist: Vec<Cidr>,
    /// These networks may never connect (wins over the whitelist).
    #[serde(default)]
    pub ip_blacklist: Vec<Cidr>,
    /// Proxies whose `X-Forwarded-For` names the real client.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// How bearer tokens on the generic API are validated.
    #[serde(default)]
    pub jwt_validation: Option<JwtValidationConfig>,
}
