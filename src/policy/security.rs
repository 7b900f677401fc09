//! `security_policy.yaml`: the edge's first line (JWT validation, and as the
//! policy engine grows, IP lists and rate limits).

use serde::Deserialize;

use super::jwt::JwtValidationConfig;

/// The file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityPolicyFile {
    /// How bearer tokens on the generic API are validated.
    #[serde(default)]
    pub jwt_validation: Option<JwtValidationConfig>,
}
