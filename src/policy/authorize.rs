//! Authorisation of one message, in one function: [`authorize`] (and
//! [`PolicySet::authorize`]). The gateway and `moltgate explain` both call it,
//! so they cannot disagree about a request.
//!
//! A message is evaluated as up to two actions ([`actions`]): its own action
//! (the gateway asks for `forward`), then, when it carries a command `<name>`
//! and its action is not already `command:<name>`, `command:<name>`. Each is
//! decided by ABAC + the RBAC command allowlist
//! ([`AbacPolicy::decide_as`]). The first denial decides and ends the
//! evaluation; `confirm` is asked for when any evaluated action's allowing
//! rule asks for it.

use crate::policy::abac::{AbacPolicy, AccessRequest, DecidedBy, Decision};
use crate::policy::rbac::Permissions;
use crate::policy::PolicySet;

/// The outcome of authorising one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Whether every evaluated action was allowed.
    pub allowed: bool,
    /// Whether any evaluated action's allowing rule asks for a second-step
    /// confirmation.
    pub confirm: bool,
    /// The first denial's decider, else the last allow's.
    pub decided_by: DecidedBy,
    /// Every evaluated action and its decision, in order; a denial is the
    /// last step. One metric and one audit entry per step.
    pub steps: Vec<(String, Decision)>,
    /// The subject's effective roles: JWT roles, then `permissions.yaml`'s.
    pub roles: Vec<String>,
}

impl PolicySet {
    /// Authorises `req` with this set's ABAC rules and permissions.
    pub fn authorize(&self, req: &AccessRequest) -> Authorization {
        authorize(&self.abac, &self.permissions, req)
    }
}

/// The actions a request is evaluated as, in order: its own action, then
/// `command:<name>` when it carries a command and its action is not already
/// that.
pub fn actions(req: &AccessRequest) -> Vec<String> {
    let mut out = vec![req.action.clone()];
    if let Some(name) = req.command.as_deref() {
        let command = format!("command:{name}");
        if req.action != command {
            out.push(command);
        }
    }
    out
}

/// Authorises `req`: see the module documentation.
pub fn authorize(abac: &AbacPolicy, perms: &Permissions, req: &AccessRequest) -> Authorization {
    let mut steps: Vec<(String, Decision)> = Vec::with_capacity(2);
    let mut confirm = false;
    for action in actions(req) {
        let decision = abac.decide_as(req, &action, perms);
        confirm |= decision.confirm;
        let denied = !decision.allowed;
        steps.push((action, decision));
        if denied {
            break;
        }
    }
    let (allowed, decided_by) = match steps.last() {
        Some((_, d)) => (d.allowed, d.decided_by.clone()),
        None => (false, DecidedBy::DefaultDeny),
    };
    Authorization {
        allowed,
        confirm,
        decided_by,
        steps,
        roles: perms.effective_roles(&req.subject),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::policy::abac::{Environment, Subject};
    use crate::policy::explain;

    fn shipped() -> (AbacPolicy, Permissions) {
        let a = AbacPolicy::from_yaml(
            Path::new("policies/abac.yaml"),
            include_str!("../../policies/abac.yaml"),
        );
        let p = Permissions::from_yaml(
            Path::new("policies/permissions.yaml"),
            include_str!("../../policies/permissions.yaml"),
        );
        match (a, p) {
            (Ok(a), Ok(p)) => (a, p),
            (a, p) => panic!("{:?} {:?}", a.err(), p.err()),
        }
    }

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 4, hour, 30, 0)
            .single()
            .unwrap_or_default()
    }

    fn request(resource: &str, command: Option<&str>) -> AccessRequest {
        AccessRequest {
            subject: Subject {
                id: "u1".into(),
                ..Subject::default()
            },
            resource: resource.into(),
            action: "forward".into(),
            chat_type: None,
            command: command.map(str::to_string),
            environment: Environment {
                ip: "127.0.0.1".parse().ok(),
                time: at(10),
            },
        }
    }

    /// What `Gateway::process` did before this function existed: forward,
    /// then `command:<name>`, the first denial decides, confirm ORed, one
    /// audit entry per evaluated action. `authorize` must equal it.
    fn pipeline_reference(
        abac: &AbacPolicy,
        perms: &Permissions,
        req: &AccessRequest,
    ) -> (bool, bool, Vec<String>) {
        let mut access = req.clone();
        let mut actions = vec![req.action.clone()];
        if let Some(c) = &req.command {
            if req.action != format!("command:{c}") {
                actions.push(format!("command:{c}"));
            }
        }
        let (mut confirm, mut rules) = (false, Vec::new());
        for action in actions {
            access.action = action;
            let d = abac.decide(&access, perms);
            confirm |= d.confirm;
            rules.push(d.decided_by.to_string());
            if !d.allowed {
                return (false, confirm, rules);
            }
        }
        (true, confirm, rules)
    }

    /// Requests varied over every attribute the shipped rules look at.
    fn generated() -> Vec<AccessRequest> {
        let roles: [&[&str]; 4] = [&[], &["user"], &["admin"], &["oncall", "user"]];
        let people = [None, Some("alice")];
        let commands = [
            None,
            Some("reboot"),
            Some("status"),
            Some("deploy"),
            Some("delete_all"),
        ];
        let chats = [None, Some("direct"), Some("group")];
        let ips = [
            None,
            Some("127.0.0.1"),
            Some("::1"),
            Some("10.2.3.4"),
            Some("203.0.113.9"),
        ];
        let resources = [
            "/v1/messages",
            "/hooks/slack/demo",
            "/api/v1/messages/7",
            "/nowhere",
        ];
        let mut out = Vec::new();
        for (i, resource) in resources.iter().enumerate() {
            for (j, role) in roles.iter().enumerate() {
                for command in commands {
                    for (k, chat) in chats.iter().enumerate() {
                        for ip in ips {
                            let mut r = request(resource, command);
                            r.subject.roles = role.iter().map(|s| s.to_string()).collect();
                            r.subject.person = people[(i + j) % 2].map(str::to_string);
                            r.subject.tenant = (k == 1).then(|| "acme".into());
                            r.subject.device_type = (j == 1).then(|| "mobile".into());
                            r.subject.claims.insert("department".into(), "sre".into());
                            r.chat_type = chat.map(str::to_string);
                            r.environment.ip = ip.and_then(|s| s.parse().ok());
                            r.environment.time = at([3, 10, 15, 23][(i + j + k) % 4]);
                            if (i + k) % 5 == 4 {
                                r.action = "read".into();
                            }
                            out.push(r);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_then_command_first_denial_decides() {
        let (abac, perms) = shipped();
        // A plain message: one step.
        let a = authorize(&abac, &perms, &request("/v1/messages", None));
        assert!(a.allowed && !a.confirm);
        assert_eq!(a.steps.len(), 1);
        assert_eq!(a.decided_by.to_string(), "local_demo");
        // A command without a role granting it: forward allowed, command denied.
        let mut r = request("/hooks/slack/demo", Some("reboot"));
        r.subject.roles = vec!["user".into()];
        let a = authorize(&abac, &perms, &r);
        assert!(!a.allowed);
        let evaluated: Vec<&str> = a.steps.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(evaluated, ["forward", "command:reboot"]);
        assert_eq!(
            a.decided_by.to_string(),
            "rbac:no_role_grants command:reboot"
        );
        assert_eq!(a.roles, ["user"]);
        // An admin: allowed, and the confirming rule asks for confirmation.
        r.subject.roles = vec!["admin".into()];
        let a = authorize(&abac, &perms, &r);
        assert!(a.allowed && a.confirm);
        assert_eq!(a.decided_by.to_string(), "reboot_needs_confirmation");
        // Forward denied: the command is never evaluated.
        r.environment.ip = "203.0.113.9".parse().ok();
        let a = authorize(&abac, &perms, &r);
        assert_eq!(a.steps.len(), 1);
        assert_eq!(a.decided_by, DecidedBy::DefaultDeny);
        // A command action that already names the command: one step.
        let mut r = request("/v1/messages", Some("status"));
        r.action = "command:status".into();
        r.subject.roles = vec!["user".into()];
        assert_eq!(actions(&r), ["command:status"]);
        assert!(authorize(&abac, &perms, &r).allowed);
    }

    /// `authorize` equals the gateway's former loop, and `moltgate explain`
    /// (from a request file) gives the same decision, over a generated set.
    #[test]
    fn authorize_equals_pipeline_and_explain_over_generated_requests() {
        let (abac, perms) = shipped();
        let requests = generated();
        assert!(requests.len() > 1000);
        let (mut allowed, mut confirmed, mut two_steps) = (0, 0, 0);
        for req in &requests {
            let a = authorize(&abac, &perms, req);
            let (ok, confirm, rules) = pipeline_reference(&abac, &perms, req);
            let steps: Vec<String> = a
                .steps
                .iter()
                .map(|(_, d)| d.decided_by.to_string())
                .collect();
            assert_eq!(
                (a.allowed, a.confirm, &steps),
                (ok, confirm, &rules),
                "{req:?}"
            );
            assert_eq!(a.roles, perms.effective_roles(&req.subject));
            let json = explain::request_json(req);
            let parsed = explain::parse_request(Path::new("gen.json"), &json, at(0))
                .unwrap_or_else(|e| panic!("{e}\n{json}"));
            assert_eq!(&parsed, req, "{json}");
            let x = explain::explain(&abac, &perms, parsed);
            assert_eq!(x.authorization, a, "{json}");
            let out: serde_json::Value =
                serde_json::from_str(&explain::render_json(&x)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out["decision"], if a.allowed { "allow" } else { "deny" });
            assert_eq!(out["decided_by"], a.decided_by.to_string());
            assert_eq!(out["confirm"], a.confirm);
            allowed += usize::from(a.allowed);
            confirmed += usize::from(a.confirm);
            two_steps += usize::from(a.steps.len() == 2);
        }
        // The set exercises every branch.
        assert!(allowed > 0 && allowed < requests.len(), "{allowed}");
        assert!(confirmed > 0 && two_steps > 0, "{confirmed} {two_steps}");
    }
}
