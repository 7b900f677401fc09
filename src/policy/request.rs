//! What an authorisation decision looks at: [`AccessRequest`] (subject,
//! resource, action, chat type, command) and its [`Environment`].
//!
//! It is its own module so the ABAC engine, [`crate::policy::authorize`] and
//! `moltgate explain` share one request type without importing each other.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::policy::subject::Subject;

/// Where and when the request happens.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    /// Client IP; `None` fails every `ipRange` condition.
    pub ip: Option<IpAddr>,
    /// Arrival time.
    pub time: DateTime<Utc>,
}

/// Everything an ABAC decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRequest {
    /// Who is asking.
    pub subject: Subject,
    /// The route path (`/v1/messages`, `/hooks/slack/demo`).
    pub resource: String,
    /// `forward`, `read` or `command:<name>`.
    pub action: String,
    /// Conversation type from the platform parser.
    pub chat_type: Option<String>,
    /// Command name without its slash; defaults to the `command:<name>` action's name.
    pub command: Option<String>,
    /// Source IP and time.
    pub environment: Environment,
}

impl AccessRequest {
    /// The command this request carries, from `command` or a `command:<name>` action.
    pub fn command_name(&self) -> Option<&str> {
        command_name(self.command.as_deref(), &self.action)
    }
}

/// The command of a request evaluated for `action`: `command`, else the name
/// in a `command:<name>` action.
pub(crate) fn command_name<'a>(command: Option<&'a str>, action: &'a str) -> Option<&'a str> {
    command.or_else(|| action.strip_prefix("command:"))
}
