//! The one `Subject` type that authorisation looks at: who is asking.
//!
//! It is its own module so that ABAC (conditions on its attributes) and RBAC
//! (roles of its person and account) share it without importing each other.
//! [`crate::policy::jwt::Subject`] is a different thing: the claims of a
//! verified bearer token, from which the gateway fills this one in.

use std::collections::BTreeMap;

/// Who is asking: identity attributes from the JWT or the platform.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Subject {
    /// JWT `sub` or the platform's user id.
    pub id: String,
    /// The person behind the account, when known.
    pub person: Option<String>,
    /// Roles from the JWT; `permissions.yaml` subjects add more at decision time.
    pub roles: Vec<String>,
    /// Tenant, workspace or corp id.
    pub tenant: Option<String>,
    /// Device type claimed by the client (`mobile`, `desktop`, ...).
    pub device_type: Option<String>,
    /// Platform the message came from (`generic`, `slack`, ...).
    pub platform: Option<String>,
    /// Every JWT claim, for `claims.<name>` conditions.
    pub claims: BTreeMap<String, serde_json::Value>,
}
