//! The pure core of `moltgate explain`: read a request's attributes from
//! JSON, decide it with [`authorize::authorize`] (the function the gateway
//! calls), and say which rule decided and why.
//!
//! It exists so operators can test a policy edit without sending traffic.
//! The CLI glue only reads files, calls [`parse_request`], [`explain`] and
//! [`render_text`] or [`render_json`], and prints the result.
//!
//! # Input
//! ```json
//! {"subject": {"id": "U1", "person": "alice", "roles": ["user"], "tenant": "acme",
//!              "device_type": "mobile", "platform": "slack", "claims": {"department": "sre"}},
//!  "resource": "/v1/messages", "action": "command:reboot",
//!  "chat_type": "direct", "command": "reboot",
//!  "environment": {"ip": "127.0.0.1", "time": "2025-03-04T10:00:00Z"}}
//! ```
//! Only `resource` and `action` are required; every other attribute may be
//! left out to see how rules treat a missing attribute (they fail closed).
//! `environment.time` is RFC 3339 and defaults to the time passed in (now);
//! `command` defaults to the name in a `command:<name>` action. Unknown keys
//! are errors with `file:line:col` and a suggestion. `deviceType` and
//! `chatType` are accepted as aliases.
//!
//! # Text output ([`render_text`]), one `key: value` per line
//! ```text
//! decision: allow|deny
//! decided_by: <rule id> | default_deny | rbac:no_role_grants command:<name>
//! confirm: yes|no
//! rbac: <one of the forms below>
//! roles: <comma-separated effective roles> | (none)
//! request: action=<a> resource=<r> subject=<id> ip=<ip or (none)> time=<RFC 3339, seconds, Z>
//! rules:
//!   <id> (<allow|deny>[, confirm]): matched
//!   <id> (<allow|deny>[, confirm]): not matched (<first failing condition>)
//! ```
//! `rules:` lists, in file order, every rule whose resource and action match;
//! when there is none the line reads `rules: (none match this resource and action)`.
//! The `rbac:` forms are `not needed (not a command)`,
//! `not checked (ABAC denied)`, `not checked (<action> denied)` (an earlier
//! action was denied, so the command was not evaluated),
//! `no role grants command:<name>` and
//! `command:<name> granted by role <role> (permission <pattern>)`.
//!
//! A request whose `command` adds a second action (see
//! [`crate::policy::authorize`]) gets, after `request:`, the line
//! `steps: <action>=allow|deny (<decided by>), ...` (`<action>=not evaluated`
//! after a denial), and one block per action, `rules (<action>):`, instead of
//! `rules:`.
//!
//! # JSON output ([`render_json`]): one line, keys in this order
//! `{"decision":"allow"|"deny","decided_by":"...","confirm":bool,
//!   "rbac":null|{"permission":"command:x","granted":bool,"role":null|"..","pattern":null|".."},
//!   "roles":[...],"rules":[{"id":"..","effect":"allow"|"deny","confirm":bool,"matched":bool,"failed":null|".."}]}`
//! where `rbac` is `null` unless the request's command action was evaluated
//! and ABAC allowed it, and `rules` are those of the request's own action.
//! When the command adds a second action, a last key `"steps"` lists every
//! action: `[{"action":"..","decision":"allow"|"deny"|null,"decided_by":".."|null,
//! "confirm":bool,"rules":[...]}]` (`null` for an action not evaluated).

use std::net::IpAddr;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::config::yaml::{did_you_mean, FileError};
use crate::policy::abac::{
    AbacPolicy, AccessRequest, DecidedBy, Decision, Effect, Environment, RuleTrace, Subject,
};
use crate::policy::authorize::{self, Authorization};
use crate::policy::rbac::Permissions;

/// A decision with everything that explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The request as evaluated (with defaults filled in).
    pub request: AccessRequest,
    /// The decision, from [`authorize::authorize`]: what the gateway decides.
    pub authorization: Authorization,
    /// Every action the request implies, in order; those past a denial are
    /// not evaluated.
    pub actions: Vec<String>,
    /// For each evaluated action (as in `authorization.steps`), the rules
    /// matching its resource and action, in file order, with their outcome.
    pub rules: Vec<Vec<RuleTrace>>,
}

impl Explanation {
    /// The decision of the `i`th action, when it was evaluated.
    fn step(&self, i: usize) -> Option<&Decision> {
        self.authorization.steps.get(i).map(|(_, d)| d)
    }

    /// Whether the request implies more than one action.
    fn multi(&self) -> bool {
        self.actions.len() > 1
    }
}

/// Parses an explain request; `now` is used when `environment.time` is absent.
pub fn parse_request(
    path: &Path,
    text: &str,
    now: DateTime<Utc>,
) -> Result<AccessRequest, FileError> {
    let raw: RawRequest = serde_json::from_str(text).map_err(|e| json_error(path, &e))?;
    let env = raw.environment.unwrap_or_default();
    let ip = match env.ip.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.trim().parse::<IpAddr>().map_err(|_| {
            FileError::whole(path, format!("environment.ip '{s}' is not an IP address"))
        })?),
    };
    let time = match env.time.as_deref() {
        None => now,
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map_err(|_| {
                FileError::whole(
                    path,
                    format!("environment.time '{s}' is not RFC 3339, like 2025-03-04T10:00:00Z"),
                )
            })?
            .with_timezone(&Utc),
    };
    let s = raw.subject.unwrap_or_default();
    let command = raw
        .command
        .map(|c| c.strip_prefix('/').map_or(c.clone(), str::to_string));
    Ok(AccessRequest {
        subject: Subject {
            id: s.id.unwrap_or_default(),
            person: s.person,
            roles: s.roles,
            tenant: s.tenant,
            device_type: s.device_type,
            platform: s.platform,
            claims: s.claims,
        },
        resource: raw.resource,
        action: raw.action,
        chat_type: raw.chat_type,
        command,
        environment: Environment { ip, time },
    })
}

/// The request file that [`parse_request`] reads back as `req`: every
/// attribute written out (for tests, and to turn a logged request into a file).
pub fn request_json(req: &AccessRequest) -> String {
    let s = &req.subject;
    serde_json::json!({
        "subject": {
            "id": s.id, "person": s.person, "roles": s.roles, "tenant": s.tenant,
            "device_type": s.device_type, "platform": s.platform, "claims": s.claims,
        },
        "resource": req.resource,
        "action": req.action,
        "chat_type": req.chat_type,
        "command": req.command,
        "environment": {
            "ip": req.environment.ip.map(|ip| ip.to_string()),
            "time": req.environment.time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        },
    })
    .to_string()
}

/// Decides `req` with [`authorize::authorize`] and gathers the detail
/// behind the decision.
pub fn explain(abac: &AbacPolicy, perms: &Permissions, req: AccessRequest) -> Explanation {
    let authorization = authorize::authorize(abac, perms, &req);
    let rules = authorization
        .steps
        .iter()
        .map(|(action, _)| abac.trace_as(&req, action, perms))
        .collect();
    Explanation {
        actions: authorize::actions(&req),
        request: req,
        authorization,
        rules,
    }
}

/// The `rbac:` line's text, about the request's (last) command action.
fn rbac_text(x: &Explanation) -> String {
    let Some(i) = x.actions.iter().rposition(|a| a.starts_with("command:")) else {
        return "not needed (not a command)".into();
    };
    let action = &x.actions[i];
    let Some(d) = x.step(i) else {
        let denied = x.authorization.steps.last().map_or("", |(a, _)| a.as_str());
        return format!("not checked ({denied} denied)");
    };
    match (&d.decided_by, &d.grant) {
        (DecidedBy::NoRoleGrants { permission }, _) => format!("no role grants {permission}"),
        (_, Some(g)) => format!(
            "{action} granted by role {} (permission {})",
            g.role, g.permission
        ),
        _ => "not checked (ABAC denied)".into(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn allow_deny(b: bool) -> &'static str {
    if b {
        "allow"
    } else {
        "deny"
    }
}

/// Renders the documented text form (ends with a newline).
pub fn render_text(x: &Explanation) -> String {
    let a = &x.authorization;
    let r = &x.request;
    let mut out = String::new();
    out.push_str(&format!("decision: {}\n", allow_deny(a.allowed)));
    out.push_str(&format!("decided_by: {}\n", a.decided_by));
    out.push_str(&format!("confirm: {}\n", yes_no(a.confirm)));
    out.push_str(&format!("rbac: {}\n", rbac_text(x)));
    let roles = if a.roles.is_empty() {
        "(none)".to_string()
    } else {
        a.roles.join(", ")
    };
    out.push_str(&format!("roles: {roles}\n"));
    out.push_str(&format!(
        "request: action={} resource={} subject={} ip={} time={}\n",
        r.action,
        r.resource,
        if r.subject.id.is_empty() {
            "(none)"
        } else {
            &r.subject.id
        },
        r.environment
            .ip
            .map_or("(none)".to_string(), |ip| ip.to_string()),
        r.environment
            .time
            .to_rfc3339_opts(SecondsFormat::Secs, true),
    ));
    if x.multi() {
        out.push_str(&format!("steps: {}\n", steps_text(x)));
    }
    for (i, action) in x.actions.iter().enumerate() {
        let label = if x.multi() {
            format!("rules ({action})")
        } else {
            "rules".to_string()
        };
        push_rules(&mut out, &label, x.rules.get(i).map(Vec::as_slice));
    }
    out
}

/// `forward=allow (local_demo), command:reboot=not evaluated`.
fn steps_text(x: &Explanation) -> String {
    let parts: Vec<String> = x
        .actions
        .iter()
        .enumerate()
        .map(|(i, action)| match x.step(i) {
            Some(d) => format!("{action}={} ({})", allow_deny(d.allowed), d.decided_by),
            None => format!("{action}=not evaluated"),
        })
        .collect();
    parts.join(", ")
}

/// One `rules:` block; `None` for an action that was not evaluated.
fn push_rules(out: &mut String, label: &str, rules: Option<&[RuleTrace]>) {
    let Some(rules) = rules else {
        out.push_str(&format!("{label}: (not evaluated)\n"));
        return;
    };
    if rules.is_empty() {
        out.push_str(&format!("{label}: (none match this resource and action)\n"));
        return;
    }
    out.push_str(&format!("{label}:\n"));
    for t in rules {
        let confirm = if t.confirm { ", confirm" } else { "" };
        let outcome = match &t.failed {
            None => "matched".to_string(),
            Some(c) => format!("not matched ({c})"),
        };
        out.push_str(&format!("  {} ({}{confirm}): {outcome}\n", t.id, t.effect));
    }
}

#[derive(Serialize)]
struct JsonOut<'a> {
    decision: &'static str,
    decided_by: String,
    confirm: bool,
    rbac: Option<JsonRbac<'a>>,
    roles: &'a [String],
    rules: Vec<JsonRule<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<JsonStep<'a>>>,
}

#[derive(Serialize)]
struct JsonRbac<'a> {
    permission: &'a str,
    granted: bool,
    role: Option<&'a str>,
    pattern: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonRule<'a> {
    id: &'a str,
    effect: &'static str,
    confirm: bool,
    matched: bool,
    failed: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonStep<'a> {
    action: &'a str,
    decision: Option<&'static str>,
    decided_by: Option<String>,
    confirm: bool,
    rules: Vec<JsonRule<'a>>,
}

fn json_rules(rules: Option<&Vec<RuleTrace>>) -> Vec<JsonRule<'_>> {
    rules
        .into_iter()
        .flatten()
        .map(|t| JsonRule {
            id: &t.id,
            effect: match t.effect {
                Effect::Allow => "allow",
                Effect::Deny => "deny",
            },
            confirm: t.confirm,
            matched: t.failed.is_none(),
            failed: t.failed.as_deref(),
        })
        .collect()
}

/// The `rbac` object: the request's command action, when ABAC allowed it.
fn json_rbac(x: &Explanation) -> Option<JsonRbac<'_>> {
    let i = x.actions.iter().rposition(|a| a.starts_with("command:"))?;
    let d = x.step(i)?;
    let checked = d.allowed || matches!(d.decided_by, DecidedBy::NoRoleGrants { .. });
    checked.then(|| JsonRbac {
        permission: &x.actions[i],
        granted: d.grant.is_some(),
        role: d.grant.as_ref().map(|g| g.role.as_str()),
        pattern: d.grant.as_ref().map(|g| g.permission.as_str()),
    })
}

/// Renders the documented one-line JSON form (no trailing newline).
pub fn render_json(x: &Explanation) -> String {
    let a = &x.authorization;
    let steps = x.multi().then(|| {
        x.actions
            .iter()
            .enumerate()
            .map(|(i, action)| JsonStep {
                action,
                decision: x.step(i).map(|d| allow_deny(d.allowed)),
                decided_by: x.step(i).map(|d| d.decided_by.to_string()),
                confirm: x.step(i).is_some_and(|d| d.confirm),
                rules: json_rules(x.rules.get(i)),
            })
            .collect()
    });
    let out = JsonOut {
        decision: allow_deny(a.allowed),
        decided_by: a.decided_by.to_string(),
        confirm: a.confirm,
        rbac: json_rbac(x),
        roles: &a.roles,
        rules: json_rules(x.rules.first()),
        steps,
    };
    // Serializing plain strings and bools cannot fail; keep a fallback anyway.
    serde_json::to_string(&out).unwrap_or_else(|_| "{\"error\":\"cannot render\"}".into())
}

/// Turns a serde_json error into `file:line:col: message` with a did-you-mean.
fn json_error(path: &Path, e: &serde_json::Error) -> FileError {
    let raw = e.to_string();
    let msg = raw.rfind(" at line ").map_or(raw.as_str(), |i| &raw[..i]);
    let mut message = msg.to_string();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            message = format!("unknown key '{name}'");
            if let Some(best) = did_you_mean(name, candidates.iter().copied()) {
                message.push_str(&format!(" (did you mean '{best}'?)"));
            }
            if !candidates.is_empty() {
                message.push_str(&format!("; expected one of: {}", candidates.join(", ")));
            }
        }
    }
    // serde_json says column 0 for an error before the first character of a
    // line; columns here start at 1.
    let pos = (e.line() != 0).then(|| (e.line(), e.column().max(1)));
    FileError::at(path, pos, message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    #[serde(default)]
    subject: Option<RawSubject>,
    resource: String,
    action: String,
    #[serde(default, alias = "chatType")]
    chat_type: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    environment: Option<RawEnvironment>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    person: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default, alias = "deviceType")]
    device_type: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 4, 10, 0, 0)
            .single()
            .unwrap_or_default()
    }

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

    fn run(json: &str) -> Explanation {
        let (a, p) = shipped();
        let req =
            parse_request(Path::new("req.json"), json, now()).unwrap_or_else(|e| panic!("{e}"));
        explain(&a, &p, req)
    }

    /// serde_json reports column 0 for an error at a line break; locations
    /// here start at column 1 (found by policy_load).
    #[test]
    fn json_errors_never_point_at_column_0() {
        let Err(err) = parse_request(Path::new("req.json"), "{\"resource\":\"a\n", now()) else {
            panic!("must be refused");
        };
        assert_eq!((err.line, err.column), (Some(2), Some(1)), "{err}");
    }

    #[test]
    fn text_output_for_local_demo() {
        let x = run(
            r#"{"subject":{"id":"u1","platform":"generic"},"resource":"/v1/messages","action":"forward","environment":{"ip":"127.0.0.1","time":"2025-03-04T03:00:00Z"}}"#,
        );
        assert_eq!(
            render_text(&x),
            "decision: allow
decided_by: local_demo
confirm: no
rbac: not needed (not a command)
roles: (none)
request: action=forward resource=/v1/messages subject=u1 ip=127.0.0.1 time=2025-03-04T03:00:00Z
rules:
  local_demo (allow): matched
  acme_engineering_api (allow): not matched (ipRange)
"
        );
        assert_eq!(
            render_json(&x),
            r#"{"decision":"allow","decided_by":"local_demo","confirm":false,"rbac":null,"roles":[],"rules":[{"id":"local_demo","effect":"allow","confirm":false,"matched":true,"failed":null},{"id":"acme_engineering_api","effect":"allow","confirm":false,"matched":false,"failed":"ipRange"}]}"#
        );
    }

    #[test]
    fn command_with_confirmation_and_rbac_grant() {
        let x = run(
            r#"{"subject":{"id":"x","person":"alice"},"resource":"/hooks/slack/demo","action":"command:reboot","chat_type":"direct","environment":{"ip":"::1"}}"#,
        );
        assert_eq!(
            render_text(&x),
            "decision: allow
decided_by: reboot_needs_confirmation
confirm: yes
rbac: command:reboot granted by role admin (permission command:*)
roles: admin
request: action=command:reboot resource=/hooks/slack/demo subject=x ip=::1 time=2025-03-04T10:00:00Z
rules:
  local_demo_commands (allow): matched
  reboot_needs_confirmation (allow, confirm): matched
  no_reboot_in_groups (deny): not matched (chat_type)
"
        );
        assert!(render_json(&x).contains(r#""rbac":{"permission":"command:reboot","granted":true,"role":"admin","pattern":"command:*"}"#));
    }

    #[test]
    fn command_without_role_and_abac_deny() {
        let x = run(
            r#"{"subject":{"id":"U0DEMO0001","platform":"slack"},"resource":"/hooks/slack/demo","action":"command:reboot","environment":{"ip":"127.0.0.1"}}"#,
        );
        let text = render_text(&x);
        assert!(text.starts_with("decision: deny\ndecided_by: rbac:no_role_grants command:reboot\nconfirm: no\nrbac: no role grants command:reboot\nroles: user\n"), "{text}");
        assert!(render_json(&x).contains(
            r#""rbac":{"permission":"command:reboot","granted":false,"role":null,"pattern":null}"#
        ));

        let x = run(
            r#"{"subject":{"roles":["admin"]},"resource":"/v1/messages","action":"command:reboot","chat_type":"group","environment":{"ip":"127.0.0.1"}}"#,
        );
        let text = render_text(&x);
        assert!(text.starts_with("decision: deny\ndecided_by: no_reboot_in_groups\nconfirm: no\nrbac: not checked (ABAC denied)\n"), "{text}");
        assert!(text.contains("subject=(none)"), "{text}");
        assert!(render_json(&x).contains(r#""rbac":null"#));
    }

    #[test]
    fn default_deny_and_no_rules() {
        let x = run(r#"{"resource":"/nowhere","action":"forward"}"#);
        assert_eq!(
            render_text(&x),
            "decision: deny
decided_by: default_deny
confirm: no
rbac: not needed (not a command)
roles: (none)
request: action=forward resource=/nowhere subject=(none) ip=(none) time=2025-03-04T10:00:00Z
rules: (none match this resource and action)
"
        );
        assert_eq!(
            render_json(&x),
            r#"{"decision":"deny","decided_by":"default_deny","confirm":false,"rbac":null,"roles":[],"rules":[]}"#
        );
    }

    #[test]
    fn seed_request_with_claims_and_aliases() {
        let x = run(
            r#"{"subject":{"id":"bob","tenant":"acme","claims":{"department":"sre"},"deviceType":"mobile"},"resource":"/v1/messages","action":"read","environment":{"ip":"10.2.3.4"}}"#,
        );
        assert!(x.authorization.allowed);
        assert_eq!(
            x.authorization.decided_by.to_string(),
            "acme_engineering_api"
        );
        let x = run(
            r#"{"subject":{"device_type":"desktop"},"resource":"/api/v1/messages/7","action":"forward","environment":{"ip":"10.0.0.1","time":"2025-03-04T17:59:00+00:00"}}"#,
        );
        assert_eq!(x.authorization.decided_by.to_string(), "msg_routing_policy");
    }

    #[test]
    fn bad_requests_are_located() {
        let e = parse_request(
            Path::new("req.json"),
            "{\"resource\":\"/x\",\n \"acton\":\"forward\"}",
            now(),
        )
        .err()
        .unwrap_or_else(|| panic!("expected error"));
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().starts_with("req.json:2:"), "{e}");
        assert!(
            e.message
                .contains("unknown key 'acton' (did you mean 'action'?)"),
            "{e}"
        );
        let e = parse_request(
            Path::new("r"),
            r#"{"resource":"/x","action":"a","environment":{"ip":"nope"}}"#,
            now(),
        )
        .err();
        assert!(e.is_some_and(|e| e.message.contains("not an IP address")));
        let e = parse_request(
            Path::new("r"),
            r#"{"resource":"/x","action":"a","environment":{"time":"10am"}}"#,
            now(),
        )
        .err();
        assert!(e.is_some_and(|e| e.message.contains("RFC 3339")));
        let e = parse_request(Path::new("r"), r#"{"action":"a"}"#, now()).err();
        assert!(e.is_some_and(|e| e.message.contains("missing field `resource`")));
        let r = parse_request(
            Path::new("r"),
            r#"{"resource":"/x","action":"command:a","command":"/b"}"#,
            now(),
        );
        assert_eq!(r.ok().and_then(|r| r.command), Some("b".into()));
    }
}
