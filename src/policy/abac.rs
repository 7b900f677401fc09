//! ABAC: decides whether a subject may perform an action on a resource,
//! from the rules in `policies/abac.yaml`, with RBAC (`permissions.yaml`)
//! supplying roles and the command allowlist.
//!
//! The file is parsed and compiled once per (re)load: globs become small
//! automata, CIDRs and time zones are parsed, and rules are indexed by action
//! and by resource ([`rules`]), so a decision looks at a handful of candidate
//! rules instead of scanning all of them, and the request path compiles and
//! allocates nothing except on the rare deny-by-RBAC path. Whole requests
//! (the `forward` action and the command a message carries) are decided by
//! [`crate::policy::authorize`], which calls this module once per action.
//!
//! # Semantics
//! - A rule applies when one of its `resources` globs and one of its
//!   `actions` globs match and every condition holds.
//! - `*` matches any run of characters except `/`; `**` matches any run
//!   including `/` (`/hooks/**` matches `/hooks/slack/demo`, not `/hooks`); a
//!   bare `*` or `**` matches everything ([`crate::policy::glob`]).
//! - Deny overrides allow. With no applying Allow the answer is deny
//!   (`default_deny`). Among applying rules of the deciding effect, the first
//!   in file order names the decision, except that an Allow carrying
//!   `confirm: true` wins over one without, so an obligation is never lost.
//! - A condition whose attribute is missing from the request does not hold:
//!   policies fail closed.
//! - An action `command:<name>` that ABAC allows must also be granted to one of
//!   the subject's roles by `permissions.yaml` (permission `command:<name>`,
//!   globs like `command:*` allowed): that is the command allowlist.
//!
//! # Where each attribute comes from
//! | attribute | source |
//! |-----------|--------|
//! | `subject.id` | JWT `sub` (HTTP API) or the platform's sender id (webhooks) |
//! | `subject.person` | JWT claim naming the person, or the platform sender's mapped person id |
//! | `subject.roles` (`roles`) | JWT `roles` claim ∪ `permissions.yaml` `subjects:` entries for the person or `platform:user_id` |
//! | `subject.tenant` (`tenant`) | JWT `tenant` claim, or the platform's tenant/workspace/corp id |
//! | `subject.device_type` (`deviceType`) | JWT `device_type` claim (absent for webhooks: such conditions fail closed) |
//! | `subject.platform` (`platform`) | the route's platform (`generic`, `slack`, `feishu`, ...) |
//! | `subject.claims` (`claims.<name>`) | every JWT claim, by name |
//! | `resource` | the route path the message arrived on (`/v1/messages`, `/hooks/slack/demo`) |
//! | `action` | `forward` for every inbound message; `command:<name>` when it starts with `/<name>` |
//! | `chat_type` | the platform parser's conversation type (`direct`, `group`, ...) |
//! | `command` | the command name without its slash (`backup` for `/backup now`) |
//! | `environment.ip` (`ipRange`) | the client IP from the socket (or `X-Forwarded-For` from a trusted proxy) |
//! | `environment.time` (`time`) | the gateway's clock when the message arrived |

mod conditions;
mod decision;
mod file;
pub(crate) mod rules;
mod scalar;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::yaml::FileError;
use crate::policy::rbac::{Grant, Permissions};
use rules::{Index, Rule};

pub use crate::policy::glob::Glob;
pub use crate::policy::request::{AccessRequest, Environment};
pub use crate::policy::subject::Subject;
pub use decision::{DecidedBy, Decision, Effect, RuleTrace};

pub(crate) use file::locate_in_rule;

/// Where a compiled `abac.yaml` came from: what lints name and point into.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// The file, as it was named when loaded.
    pub(crate) path: PathBuf,
    /// Its text; `None` when the file does not exist.
    pub(crate) text: Option<Arc<str>>,
}

/// A compiled `abac.yaml`. The default has no rules, so it denies everything.
#[derive(Debug, Default)]
pub struct AbacPolicy {
    rules: Vec<Rule>,
    index: Index,
    source: Option<Source>,
}

impl AbacPolicy {
    /// Parses and compiles `abac.yaml`. On failure the error carries every
    /// problem found in the file (each rule's), each at `file:line:col`.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, FileError> {
        let rules = file::compile(path, text)?;
        let index = Index::build(&rules);
        Ok(Self {
            rules,
            index,
            source: Some(Source {
                path: path.to_path_buf(),
                text: Some(Arc::from(text)),
            }),
        })
    }

    /// The policy in force when `path` (an `abac.yaml`) does not exist: no
    /// rules, so everything is denied; lints name `path` as the file to write.
    pub fn missing(path: &Path) -> Self {
        Self {
            source: Some(Source {
                path: path.to_path_buf(),
                text: None,
            }),
            ..Self::default()
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the file has no rules (everything is then denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every rule id in file order, e.g. to pre-register metric labels.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }

    /// Decides `req` for its own action: ABAC (deny overrides, default deny),
    /// then the RBAC command allowlist for a `command:<name>` action. A whole
    /// message is decided by [`crate::policy::PolicySet::authorize`].
    pub fn decide(&self, req: &AccessRequest, perms: &Permissions) -> Decision {
        self.decide_as(req, &req.action, perms)
    }

    /// Decides `req` as if its action were `action`.
    pub fn decide_as(&self, req: &AccessRequest, action: &str, perms: &Permissions) -> Decision {
        let mut best_deny: Option<usize> = None;
        // (confirm, index): a confirming Allow beats a plain one, then file order.
        let mut best_allow: Option<(bool, usize)> = None;
        self.index
            .candidates(&self.rules, &req.resource, action, |i| {
                let rule = &self.rules[i];
                let holds = || rule.conditions.check(req, action, perms).is_ok();
                match rule.effect {
                    Effect::Deny => {
                        if best_deny.is_none_or(|d| i < d) && holds() {
                            best_deny = Some(i);
                        }
                    }
                    Effect::Allow => {
                        let better = match best_allow {
                            None => true,
                            Some((c, j)) => (rule.confirm && !c) || (rule.confirm == c && i < j),
                        };
                        if best_deny.is_none() && better && holds() {
                            best_allow = Some((rule.confirm, i));
                        }
                    }
                }
            });
        if let Some(i) = best_deny {
            return self.rule_decision(i, false, None);
        }
        let Some((confirm, i)) = best_allow else {
            return Decision::default_deny();
        };
        if !action.starts_with("command:") {
            return self.rule_decision(i, confirm, None);
        }
        match perms.grant(&req.subject, action) {
            Some(g) => self.rule_decision(i, confirm, Some(g)),
            None => Decision {
                allowed: false,
                decided_by: DecidedBy::NoRoleGrants {
                    permission: action.to_string(),
                },
                confirm: false,
                grant: None,
            },
        }
    }

    /// Every rule whose resource and action match `req`, in file order, with
    /// the first failing condition of each: the detail behind a decision.
    pub fn trace(&self, req: &AccessRequest, perms: &Permissions) -> Vec<RuleTrace> {
        self.trace_as(req, &req.action, perms)
    }

    /// [`trace`](Self::trace) as if the request's action were `action`.
    pub fn trace_as(
        &self,
        req: &AccessRequest,
        action: &str,
        perms: &Permissions,
    ) -> Vec<RuleTrace> {
        let mut hits = Vec::new();
        self.index
            .candidates(&self.rules, &req.resource, action, |i| hits.push(i));
        hits.sort_unstable();
        hits.dedup();
        hits.into_iter()
            .map(|i| {
                let r = &self.rules[i];
                RuleTrace {
                    id: r.id.clone(),
                    effect: r.effect,
                    confirm: r.confirm,
                    failed: r
                        .conditions
                        .check(req, action, perms)
                        .err()
                        .map(|f| f.describe(&r.conditions).into_owned()),
                }
            })
            .collect()
    }

    /// The compiled rules, in file order (for lints).
    pub(crate) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Where the rules came from, when loaded from a file (for lints).
    pub(crate) fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    fn rule_decision(&self, i: usize, confirm: bool, grant: Option<Grant>) -> Decision {
        let rule = &self.rules[i];
        Decision {
            allowed: rule.effect == Effect::Allow,
            decided_by: DecidedBy::Rule {
                id: rule.id.clone(),
                effect: rule.effect,
            },
            confirm,
            grant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use conditions::TimeWindow;
    use std::net::IpAddr;

    const P: &str = "policies/abac.yaml";

    fn policy(text: &str) -> AbacPolicy {
        match AbacPolicy::from_yaml(Path::new(P), text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn load_err(text: &str) -> FileError {
        match AbacPolicy::from_yaml(Path::new(P), text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn perms(text: &str) -> Permissions {
        match Permissions::from_yaml(Path::new("policies/permissions.yaml"), text) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 4, h, m, 0)
            .single()
            .unwrap_or_default()
    }

    fn req(resource: &str, action: &str) -> AccessRequest {
        AccessRequest {
            subject: Subject {
                id: "u1".into(),
                ..Subject::default()
            },
            resource: resource.into(),
            action: action.into(),
            chat_type: None,
            command: None,
            environment: Environment {
                ip: Some("10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                time: at(10, 0),
            },
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    fn id(d: &Decision) -> String {
        d.decided_by.to_string()
    }

    /// One Allow rule with the given conditions on /r for action forward.
    fn with_cond(cond: &str) -> AbacPolicy {
        policy(&format!(
            "policies:\n  - id: r\n    effect: Allow\n    resources: [\"/r\"]\n    actions: [forward]\n    conditions: {cond}\n"
        ))
    }

    fn allowed(p: &AbacPolicy, r: &AccessRequest) -> bool {
        p.decide(r, &Permissions::default()).allowed
    }

    const SEED: &str = include_str!("../../tests/fixtures/seed/abac.yaml");

    #[test]
    fn seed_loads_and_decides() {
        let p = policy(SEED);
        assert_eq!(p.rule_ids().collect::<Vec<_>>(), ["msg_routing_policy"]);
        let mut r = req("/api/v1/messages/42", "forward");
        r.subject.device_type = Some("mobile".into());
        let d = p.decide(&r, &Permissions::default());
        assert!(d.allowed, "{d:?}");
        assert_eq!(id(&d), "msg_routing_policy");
        // `*` stays within one segment.
        r.resource = "/api/v1/messages/42/x".into();
        assert_eq!(id(&p.decide(&r, &Permissions::default())), "default_deny");
    }

    #[test]
    fn shipped_example_loads_and_serves_the_demo() {
        let p = policy(include_str!("../../policies/abac.yaml"));
        let perms = perms(include_str!("../../policies/permissions.yaml"));
        for (res, addr) in [("/v1/messages", "127.0.0.1"), ("/hooks/slack/demo", "::1")] {
            for hour in [0, 3, 12, 23] {
                let mut r = req(res, "forward");
                r.environment.ip = ip(addr);
                r.environment.time = at(hour, 30);
                r.subject.platform = Some("generic".into());
                let d = p.decide(&r, &perms);
                assert!(d.allowed, "{res} {addr} {hour}: {d:?}");
            }
        }
        let mut r = req("/v1/messages", "forward");
        r.environment.ip = ip("203.0.113.9");
        assert!(!p.decide(&r, &perms).allowed);
    }

    #[test]
    fn effects_and_precedence() {
        let p = policy(
            "policies:
  - id: allow_all
    effect: Allow
    resources: ['/**']
    actions: ['*']
  - id: deny_admin
    effect: Deny
    resources: ['/admin/**']
    actions: [forward]
  - id: allow_admin
    effect: allow
    resources: ['/admin/x']
    actions: [forward]
",
        );
        let d = p.decide(&req("/v1/messages", "forward"), &Permissions::default());
        assert!(d.allowed);
        assert_eq!(id(&d), "allow_all");
        // Deny overrides allow, even a more specific later allow.
        let d = p.decide(&req("/admin/x", "forward"), &Permissions::default());
        assert!(!d.allowed);
        assert_eq!(id(&d), "deny_admin");
        assert_eq!(
            d.decided_by,
            DecidedBy::Rule {
                id: "deny_admin".into(),
                effect: Effect::Deny
            }
        );
        // Default deny when nothing allows.
        let empty = policy("policies: []\n");
        let d = empty.decide(&req("/x", "read"), &Permissions::default());
        assert_eq!(d.decided_by, DecidedBy::DefaultDeny);
        assert_eq!(d.decided_by.metric_label(), "default_deny");
        assert!(policy("{}\n").is_empty());
    }

    #[test]
    fn first_matching_deny_in_file_order_names_the_decision() {
        let p = policy(
            "policies:
  - { id: d1, effect: Deny, resources: ['/a/*'], actions: [read] }
  - { id: d2, effect: Deny, resources: ['/a/b'], actions: [read] }
  - { id: a1, effect: Allow, resources: ['/a/b'], actions: [read] }
",
        );
        assert_eq!(
            id(&p.decide(&req("/a/b", "read"), &Permissions::default())),
            "d1"
        );
    }

    #[test]
    fn action_must_match() {
        let p = with_cond("{}");
        assert!(allowed(&p, &req("/r", "forward")));
        assert!(!allowed(&p, &req("/r", "read")));
        assert!(!allowed(&p, &req("/other", "forward")));
    }

    #[test]
    fn time_condition_and_overnight_window() {
        let p = with_cond("{ time: '09:00-18:00' }");
        let mut r = req("/r", "forward");
        for (h, m, ok) in [(9, 0, true), (17, 59, true), (18, 0, false), (8, 59, false)] {
            r.environment.time = at(h, m);
            assert_eq!(allowed(&p, &r), ok, "{h}:{m}");
        }
        let p = with_cond("{ time: '22:00-06:00' }");
        for (h, ok) in [
            (22, true),
            (23, true),
            (0, true),
            (5, true),
            (6, false),
            (12, false),
        ] {
            r.environment.time = at(h, 30);
            assert_eq!(allowed(&p, &r), ok, "{h}");
        }
        let p = with_cond("{ time: '00:00-24:00' }");
        r.environment.time = at(23, 59);
        assert!(allowed(&p, &r));
    }

    #[test]
    fn timezone_shifts_the_window() {
        // 09:00-18:00 in Shanghai (UTC+8) is 01:00-10:00 UTC.
        let p = with_cond("{ time: '09:00-18:00', timezone: Asia/Shanghai }");
        let mut r = req("/r", "forward");
        r.environment.time = at(2, 0);
        assert!(allowed(&p, &r));
        r.environment.time = at(12, 0);
        assert!(!allowed(&p, &r));
        assert!(load_err("policies:\n  - { id: r, effect: Allow, resources: [x], actions: [y], conditions: { time: '09:00-18:00', timezone: Mars/Olympus } }\n")
            .message
            .contains("unknown timezone 'Mars/Olympus'"));
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions: { timezone: UTC }\n");
        assert!(e.message.contains("needs a 'time'"), "{e}");
    }

    #[test]
    fn ip_range_condition() {
        let p = with_cond("{ ipRange: ['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'] }");
        let mut r = req("/r", "forward");
        for (a, ok) in [
            ("10.9.9.9", true),
            ("11.0.0.1", false),
            ("2001:db8::5", true),
            ("::ffff:10.0.0.1", true),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ] {
            r.environment.ip = ip(a);
            assert_eq!(allowed(&p, &r), ok, "{a}");
        }
        r.environment.ip = None;
        assert!(!allowed(&p, &r), "missing IP fails closed");
        let single = with_cond("{ ipRange: 10.0.0.0/8 }");
        r.environment.ip = ip("10.0.0.1");
        assert!(allowed(&single, &r));
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions:\n      ipRange: 10.0.0.0/33\n");
        assert!(e.message.contains("invalid CIDR '10.0.0.0/33'"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
    }

    #[test]
    fn string_conditions_and_missing_attributes() {
        type Setter = fn(&mut AccessRequest, Option<String>);
        let cases: [(&str, Setter); 5] = [
            ("deviceType", |r, v| r.subject.device_type = v),
            ("platform", |r, v| r.subject.platform = v),
            ("tenant", |r, v| r.subject.tenant = v),
            ("chat_type", |r, v| r.chat_type = v),
            ("command", |r, v| r.command = v),
        ];
        for (name, set) in cases {
            let p = with_cond(&format!("{{ {name}: [a, b] }}"));
            let mut r = req("/r", "forward");
            set(&mut r, Some("b".into()));
            assert!(allowed(&p, &r), "{name} match");
            set(&mut r, Some("c".into()));
            assert!(!allowed(&p, &r), "{name} mismatch");
            set(&mut r, None);
            assert!(!allowed(&p, &r), "{name} missing fails closed");
            let t = p.trace(&r, &Permissions::default());
            assert_eq!(t[0].failed.as_deref(), Some(name));
        }
        // A single scalar is a one-item list; numbers are compared as text.
        let p = with_cond("{ tenant: 42 }");
        let mut r = req("/r", "forward");
        r.subject.tenant = Some("42".into());
        assert!(allowed(&p, &r));
    }

    #[test]
    fn command_condition_defaults_from_action() {
        let p = policy("policies:\n  - { id: c, effect: Allow, resources: ['/r'], actions: ['command:*'], conditions: { command: ['/backup'] } }\n");
        let perms = perms("roles: { u: ['command:*'] }\n");
        let mut r = req("/r", "command:backup");
        r.subject.roles = vec!["u".into()];
        assert!(p.decide(&r, &perms).allowed);
        r.action = "command:reboot".into();
        assert!(!p.decide(&r, &perms).allowed);
    }

    #[test]
    fn roles_condition_uses_jwt_and_permissions_subjects() {
        let p = with_cond("{ roles: [ops, admin] }");
        let perms =
            perms("roles: { admin: [], ops: [] }\nsubjects: { alice: [admin], 'slack:U1': ops }\n");
        let mut r = req("/r", "forward");
        assert!(!p.decide(&r, &perms).allowed, "no roles");
        r.subject.roles = vec!["ops".into()];
        assert!(p.decide(&r, &perms).allowed, "jwt role");
        r.subject.roles.clear();
        r.subject.person = Some("alice".into());
        assert!(p.decide(&r, &perms).allowed, "person mapping");
        r.subject.person = None;
        r.subject.platform = Some("slack".into());
        r.subject.id = "U1".into();
        assert!(p.decide(&r, &perms).allowed, "platform:user_id mapping");
        r.subject.platform = Some("discord".into());
        assert!(!p.decide(&r, &perms).allowed);
    }

    #[test]
    fn claims_conditions() {
        let p = with_cond("{ claims.dept: [eng, ops], claims.level: 3, claims.mfa: true }");
        let mut r = req("/r", "forward");
        r.subject
            .claims
            .insert("dept".into(), serde_json::json!(["sales", "ops"]));
        r.subject
            .claims
            .insert("level".into(), serde_json::json!(3));
        r.subject
            .claims
            .insert("mfa".into(), serde_json::json!(true));
        assert!(allowed(&p, &r));
        r.subject
            .claims
            .insert("mfa".into(), serde_json::json!(false));
        assert!(!allowed(&p, &r));
        assert_eq!(
            p.trace(&r, &Permissions::default())[0].failed.as_deref(),
            Some("claims.mfa")
        );
        r.subject.claims.remove("mfa");
        assert!(!allowed(&p, &r), "missing claim fails closed");
        r.subject
            .claims
            .insert("mfa".into(), serde_json::json!({"x": true}));
        assert!(!allowed(&p, &r), "object never matches");
    }

    #[test]
    fn all_conditions_must_hold() {
        let p = with_cond("{ time: '09:00-18:00', ipRange: 10.0.0.0/8, deviceType: mobile }");
        let mut r = req("/r", "forward");
        r.subject.device_type = Some("mobile".into());
        assert!(allowed(&p, &r));
        r.environment.ip = ip("8.8.8.8");
        assert!(!allowed(&p, &r));
    }

    #[test]
    fn command_needs_rbac_grant() {
        let p = policy("policies:\n  - { id: cmds, effect: Allow, resources: ['/r'], actions: ['command:*'] }\n  - { id: reboot, effect: Allow, resources: ['/r'], actions: ['command:reboot'], confirm: true }\n");
        let perms =
            perms("roles:\n  admin: ['command:*']\n  user: ['command:backup', message:send]\n");
        let mut r = req("/r", "command:reboot");
        r.subject.roles = vec!["user".into()];
        let d = p.decide(&r, &perms);
        assert!(!d.allowed);
        assert_eq!(id(&d), "rbac:no_role_grants command:reboot");
        assert_eq!(d.decided_by.metric_label(), "rbac:no_role_grants");
        r.subject.roles = vec!["admin".into()];
        let d = p.decide(&r, &perms);
        assert!(d.allowed);
        // The confirming rule wins over the earlier plain one.
        assert_eq!(id(&d), "reboot");
        assert!(d.confirm);
        assert_eq!(
            d.grant,
            Some(Grant {
                role: "admin".into(),
                permission: "command:*".into()
            })
        );
        r.action = "command:backup".into();
        r.subject.roles = vec!["user".into()];
        let d = p.decide(&r, &perms);
        assert!(d.allowed && !d.confirm);
        assert_eq!(id(&d), "cmds");
        // Without an ABAC allow, RBAC alone is not enough.
        r.resource = "/elsewhere".into();
        assert_eq!(id(&p.decide(&r, &perms)), "default_deny");
    }

    #[test]
    fn unknown_condition_is_located_with_suggestion() {
        let text = "policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions:\n      time: '09:00-18:00'\n      ipRnage: 10.0.0.0/8\n";
        let e = load_err(text);
        assert_eq!((e.line, e.column), (Some(8), Some(7)), "{e}");
        assert!(
            e.to_string().starts_with(
                "policies/abac.yaml:8:7: unknown key 'ipRnage' (did you mean 'ipRange'?)"
            ),
            "{e}"
        );
        let e = load_err("policies:\n  - { id: r, effect: Allow, resources: [x], actions: [y], conditions: { chatType: group } }\n");
        assert!(e.message.contains("did you mean 'chat_type'"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        // Unknown rule keys and effects too.
        let e = load_err("policies:\n  - id: r\n    efect: Allow\n");
        assert!(
            e.to_string().starts_with(
                "policies/abac.yaml:3:5: unknown key 'efect' (did you mean 'effect'?)"
            ),
            "{e}"
        );
        let e = load_err("policies:\n  - { id: r, effect: Alow, resources: [x], actions: [y] }\n");
        assert!(e.message.contains("did you mean 'Allow'"), "{e}");
        let e = load_err("policies:\n  - { id: r, effect: Allow, resources: [x], actions: [y], conditions: { 'claims.': x } }\n");
        assert!(e.message.contains("unknown key 'claims.'"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: [x]\n    actions: [y]\n    conditions: { time: '9-18' }\n");
        assert!(e.message.contains("invalid time window '9-18'"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        for bad in ["25:00-26:00", "09:00-09:00", "09:60-10:00", "24:00-01:00"] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
        let e = load_err("policies:\n  - id: r\n    effect: Allow\n    resources: ['/a/***']\n    actions: [y]\n");
        assert!(e.message.contains("'***'"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = load_err("policies:\n  - { id: a, effect: Allow, resources: [x], actions: [y] }\n  - { id: a, effect: Deny, resources: [x], actions: [y] }\n");
        assert!(e.message.contains("duplicate rule id 'a'"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let e = load_err("policies:\n  - { id: a, effect: Allow, resources: [], actions: [y] }\n");
        assert!(e.message.contains("empty list"), "{e}");
        let e = load_err("policies:\n  - { id: a, effect: Allow, resources: [x], actions: [y], conditions: { roles: [a], roles: [b] } }\n");
        assert!(e.line.is_some(), "{e}");
    }

    /// A bare `*` or `**` in `resources` or `actions` means everything: every
    /// route path, every action (it used to match no path, denying everything).
    #[test]
    fn bare_star_means_every_resource_and_action() {
        let perms = perms("roles: { u: ['*'] }\n");
        for (res, act) in [("*", "*"), ("**", "**"), ("*", "forward"), ("'/**'", "*")] {
            let p = policy(&format!(
                "policies:\n  - {{ id: all, effect: Allow, resources: ['{}'], actions: ['{}'] }}\n",
                res.trim_matches('\''),
                act
            ));
            for path in ["/v1/messages", "/hooks/slack/demo", "/a/b/c/d"] {
                let mut r = req(path, "forward");
                assert!(p.decide(&r, &perms).allowed, "{res} {act} {path}");
                if act != "forward" {
                    r.action = "command:reboot".into();
                    r.subject.roles = vec!["u".into()];
                    assert!(p.decide(&r, &perms).allowed, "{res} {act} {path} command");
                }
            }
        }
        // `*` with anything else still stays within one segment.
        let p = policy(
            "policies:\n  - { id: one, effect: Allow, resources: ['/*'], actions: [forward] }\n",
        );
        assert!(
            p.decide(&req("/v1", "forward"), &Permissions::default())
                .allowed
        );
        assert!(
            !p.decide(&req("/v1/messages", "forward"), &Permissions::default())
                .allowed
        );
    }

    /// Every broken rule is reported, each at its own line, in file order,
    /// and the good rules in between do not hide them.
    #[test]
    fn every_error_in_the_file_is_reported() {
        let text = "policies:
  - { id: a, effect: Allow, resources: [x], actions: [y], conditions: { ipRnage: 10.0.0.0/8 } }
  - { id: ok1, effect: Allow, resources: [x], actions: [y] }
  - { id: b, effect: Alow, resources: [x], actions: [y] }
  - { id: c, effect: Allow, resources: ['/a/***'], actions: [y] }
  - { id: ok1, effect: Deny, resources: [x], actions: [y] }
  - { id: d, effect: Allow, resources: [x], actions: [y], conditions: { time: '25:00-26:00' } }
";
        let e = load_err(text);
        let lines: Vec<usize> = e.clone().split().iter().filter_map(|d| d.line).collect();
        assert_eq!(lines, [2, 4, 5, 6, 7], "{e}");
        let shown = e.to_string();
        for want in [
            "unknown key 'ipRnage' (did you mean 'ipRange'?)",
            "unknown value 'Alow' (did you mean 'Allow'?)",
            "'***' is ambiguous",
            "duplicate rule id 'ok1'",
            "invalid time window '25:00-26:00'",
        ] {
            assert!(shown.contains(want), "{want}: {shown}");
        }
        assert_eq!(shown.lines().count(), 5, "{shown}");
    }

    #[test]
    fn index_finds_rules_by_prefix_and_glob_actions() {
        let mut text = String::from("policies:\n");
        for i in 0..200 {
            text.push_str(&format!(
                "  - {{ id: r{i}, effect: Allow, resources: ['/t{i}/*', '/x{i}'], actions: [read, 'cmd:{i}*'] }}\n"
            ));
        }
        text.push_str(
            "  - { id: root, effect: Allow, resources: ['*/deep/**'], actions: ['**'] }\n",
        );
        let p = policy(&text);
        let perms = Permissions::default();
        assert_eq!(id(&p.decide(&req("/t7/a", "read"), &perms)), "r7");
        assert_eq!(id(&p.decide(&req("/x7", "cmd:7zz"), &perms)), "r7");
        assert_eq!(id(&p.decide(&req("/x7", "cmd:8"), &perms)), "default_deny");
        assert_eq!(
            id(&p.decide(&req("/t7/a/b", "read"), &perms)),
            "default_deny"
        );
        assert_eq!(id(&p.decide(&req("/deep/a/b", "zz"), &perms)), "root");
        let t = p.trace(&req("/t7/a", "read"), &perms);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].failed, None);
    }
}
