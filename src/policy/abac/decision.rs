//! What an ABAC evaluation produces: the [`Decision`] for one action, what
//! decided it ([`DecidedBy`]), and the per-rule detail `explain` lists
//! ([`RuleTrace`]).

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::policy::rbac::Grant;

/// Whether a rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Effect {
    /// The rule permits the request (unless a Deny also applies).
    #[serde(alias = "allow")]
    Allow,
    /// The rule refuses the request, whatever else applies.
    #[serde(alias = "deny")]
    Deny,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        })
    }
}

/// What decided a request, for the audit line and a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecidedBy {
    /// An ABAC rule, by id.
    Rule {
        /// The rule's id.
        id: Arc<str>,
        /// The rule's effect.
        effect: Effect,
    },
    /// No Allow rule applied.
    DefaultDeny,
    /// ABAC allowed a command, but no role of the subject grants its permission.
    NoRoleGrants {
        /// The permission that was missing, `command:<name>`.
        permission: String,
    },
}

impl DecidedBy {
    /// A label bounded to the rule ids plus two fixed names, safe for metrics
    /// (the command name is user input, so it is left out).
    pub fn metric_label(&self) -> &str {
        match self {
            DecidedBy::Rule { id, .. } => id,
            DecidedBy::DefaultDeny => "default_deny",
            DecidedBy::NoRoleGrants { .. } => "rbac:no_role_grants",
        }
    }
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule { id, .. } => f.write_str(id),
            DecidedBy::DefaultDeny => f.write_str("default_deny"),
            DecidedBy::NoRoleGrants { permission } => {
                write!(f, "rbac:no_role_grants {permission}")
            }
        }
    }
}

/// The outcome of ABAC + RBAC for one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule (or default) that decided.
    pub decided_by: DecidedBy,
    /// The allowing rule asks for a second-step confirmation before acting.
    pub confirm: bool,
    /// For allowed commands: the role and permission that granted it.
    pub grant: Option<Grant>,
}

impl Decision {
    /// No Allow rule applied.
    pub(crate) fn default_deny() -> Self {
        Decision {
            allowed: false,
            decided_by: DecidedBy::DefaultDeny,
            confirm: false,
            grant: None,
        }
    }
}

/// One rule that matched the request's resource and action, and whether its
/// conditions held: what `moltgate explain` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// The rule's id.
    pub id: Arc<str>,
    /// The rule's effect.
    pub effect: Effect,
    /// The rule's `confirm` flag.
    pub confirm: bool,
    /// `None` when every condition held; else the first condition that did not.
    pub failed: Option<String>,
}
