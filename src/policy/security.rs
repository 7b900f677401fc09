//! `security_policy.yaml`: the edge's first line: JWT validation for the
//! generic API, IP allow and deny lists, the proxies whose forwarding
//! header (`X-Forwarded-For` or `Forwarded`) is trusted, and rate limits.

use serde::Deserialize;

use super::ip::{Cidr, ForwardedHeader, DEFAULT_CLIENT_IP_HEADERS};
use super::jwt::JwtValidationConfig;
use super::rate::RateLimitingConfig;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
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
    /// Proxies whose forwarding header names the real client.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// The headers those proxies write, in precedence order: the first one
    /// present in a request is read (default `[x-forwarded-for]`).
    #[serde(default = "default_client_ip_headers")]
    pub client_ip_headers: Vec<ForwardedHeader>,
    /// How bearer tokens on the generic API are validated.
    #[serde(default)]
    pub jwt_validation: Option<JwtValidationConfig>,
}

fn default_client_ip_headers() -> Vec<ForwardedHeader> {
    DEFAULT_CLIENT_IP_HEADERS.to_vec()
}

impl Default for SecurityPolicyFile {
    fn default() -> Self {
        Self {
            rate_limiting: RateLimitingConfig::default(),
            ip_whitelist: Vec::new(),
            ip_blacklist: Vec::new(),
            trusted_proxies: Vec::new(),
            client_ip_headers: default_client_ip_headers(),
            jwt_validation: None,
        }
    }
}
