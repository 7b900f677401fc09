//! Stage: may this sender do this here? ABAC and RBAC decide through the
//! one function the gateway and `moltgate explain` share,
//! [`PolicySet::authorize`]: `forward` on the route, and `command:<name>`
//! when the message carries a command. The command comes from the
//! platform's own command field where it has one (a Discord interaction,
//! a Slack slash command, a Telegram `bot_command` entity), so a command
//! with options cannot pass as plain text; from a leading `/word` of the
//! text otherwise.

use std::net::IpAddr;

use super::exchange::Exchange;
use super::identity::Who;
use super::stop::Stop;
use crate::envelope;
use crate::platform::PlatformMessage;
use crate::policy::abac::{AccessRequest, Environment, Subject};
use crate::policy::PolicySet;

/// What authorisation granted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    /// A rule asks for a second-step confirmation.
    pub confirm: bool,
    /// Effective roles (token ∪ `permissions.yaml`).
    pub roles: Vec<String>,
    /// The rule behind each decision, for the Envelope's verdict.
    pub rules: Vec<String>,
}

/// The command `msg` carries: the platform's field, else its text
/// (`envelope::command`, which the Envelope carries too).
pub fn command_of(msg: &PlatformMessage) -> Option<String> {
    Some(envelope::command(msg)).filter(|c| !c.is_empty())
}

/// The ABAC request for `msg` from `who` on `route`.
pub fn access_request(
    platform: &str,
    who: &Who,
    msg: &PlatformMessage,
    route: &str,
    ip: IpAddr,
) -> AccessRequest {
    let principal = msg.principal.clone().unwrap_or_default();
    AccessRequest {
        subject: Subject {
            id: msg.sender_id.clone(),
            person: who.person.clone(),
            roles: principal.roles,
            tenant: Some(msg.tenant.clone()).filter(|t| !t.is_empty()),
            device_type: Some(principal.device_type).filter(|t| !t.is_empty()),
            platform: Some(platform.to_string()),
            claims: principal
                .claims
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        },
        resource: route.to_string(),
        action: "forward".into(),
        chat_type: Some(msg.chat_type.as_str().to_string()),
        command: command_of(msg),
        environment: Environment {
            ip: Some(ip),
            time: chrono::Utc::now(),
        },
    }
}

/// Decides `req`, recording every step in `ex`.
pub fn authorize(
    policies: &PolicySet,
    req: &AccessRequest,
    ex: &mut Exchange,
) -> Result<Grant, Stop> {
    let auth = policies.authorize(req);
    let mut rules = Vec::new();
    for (_, decision) in &auth.steps {
        ex.decide("abac", decision.allowed, decision.decided_by.metric_label());
        rules.push(decision.decided_by.to_string());
    }
    ex.rules.extend(rules.iter().cloned());
    if !auth.allowed {
        return Err(Stop::Denied {
            rule: auth.decided_by.to_string(),
        });
    }
    Ok(Grant {
        confirm: auth.confirm,
        roles: auth.roles,
        rules,
    })
}
