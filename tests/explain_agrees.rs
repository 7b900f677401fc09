//! `moltgate explain` and the running gateway decide alike: over a
//! generated set of requests (roles, device type, a JWT claim, command,
//! chat type, client address), the HTTP API's answer (200 allow, 202
//! confirm, 403 deny) matches the decision `moltgate explain` prints for
//! the same attributes. Both call `PolicySet::authorize`; this checks that
//! the gateway feeds it the attributes explain documents.

mod common;

use std::process::Command;

use common::{post, rt, Gateway, Setup, BIN, SECURITY_POLICY};
use serde_json::json;

const ABAC: &str = r#"policies:
  - id: office_forward
    effect: Allow
    resources: ["/v1/**"]
    actions: ["forward"]
    conditions: { ipRange: "10.0.0.0/8" }
  - id: mobile_sre_forward
    effect: Allow
    resources: ["/v1/messages"]
    actions: ["forward"]
    conditions: { deviceType: [mobile], claims.dept: [sre] }
  - id: commands
    effect: Allow
    resources: ["*"]
    actions: ["command:*"]
  - id: reboot_confirm
    effect: Allow
    resources: ["/v1/messages"]
    actions: ["command:reboot"]
    conditions: { roles: [admin] }
    confirm: true
  - id: no_commands_in_groups
    effect: Deny
    resources: ["**"]
    actions: ["command:*"]
    conditions: { chat_type: [group] }
"#;

const PERMISSIONS: &str = "roles:\n  admin: [\"command:*\"]\n  user: [command:help]\n";

/// One generated request's attributes.
#[derive(Debug, Clone)]
struct Case {
    roles: &'static [&'static str],
    device: Option<&'static str>,
    dept: Option<&'static str>,
    command: Option<&'static str>,
    chat_type: &'static str,
    ip: &'static str,
}

/// Every combination of a few values per attribute: 3 × 2 × 2 × 3 × 2 × 2 = 144.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for roles in [&[][..], &["user"][..], &["admin"][..]] {
        for device in [None, Some("mobile")] {
            for dept in [Some("sre"), Some("sales")] {
                for command in [None, Some("help"), Some("reboot")] {
                    for chat_type in ["private", "group"] {
                        for ip in ["10.1.2.3", "192.0.2.10"] {
                            out.push(Case {
                                roles,
                                device,
                                dept,
                                command,
                                chat_type,
                                ip,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

fn start() -> Gateway {
    let security = format!("{SECURITY_POLICY}trusted_proxies: [127.0.0.1/32]\n");
    let setup = Setup {
        policies: vec![
            ("security_policy.yaml", security),
            ("abac.yaml", ABAC.into()),
            ("permissions.yaml", PERMISSIONS.into()),
        ],
        ..Setup::default()
    };
    setup.start()
}

/// What the gateway decided: allow, confirm or deny.
async fn gateway_decision(gw: &Gateway, c: &Case, n: usize) -> &'static str {
    let mut claims = vec![format!("roles={}", c.roles.join(","))];
    if let Some(d) = c.device {
        claims.push(format!("device_type={d}"));
    }
    if let Some(d) = c.dept {
        claims.push(format!("dept={d}"));
    }
    let claims: Vec<&str> = claims.iter().map(String::as_str).collect();
    let token = gw.token(&format!("user-{n}"), &claims);
    let text = match c.command {
        Some(cmd) => format!("/{cmd} please"),
        None => "hello".to_string(),
    };
    let body = json!({"content": {"text": text}, "context": {"chat_type": c.chat_type}});
    let headers = [
        ("authorization", format!("Bearer {token}")),
        ("x-forwarded-for", c.ip.to_string()),
    ];
    let resp = post(gw, "/v1/messages", &headers, body.to_string()).await;
    match resp.status().as_u16() {
        200 => "allow",
        202 => "confirm",
        403 => "deny",
        other => panic!("unexpected status {other} for {c:?}"),
    }
}

/// What `moltgate explain` decides for the same attributes.
fn explain_decision(gw: &Gateway, c: &Case, n: usize) -> &'static str {
    let mut subject = json!({"id": format!("user-{n}"), "roles": c.roles, "platform": "generic"});
    if let Some(d) = c.device {
        subject["device_type"] = json!(d);
    }
    if let Some(d) = c.dept {
        subject["claims"] = json!({"dept": d});
    }
    let mut request = json!({
        "subject": subject,
        "resource": "/v1/messages",
        "action": "forward",
        "chat_type": c.chat_type,
        "environment": {"ip": c.ip},
    });
    if let Some(cmd) = c.command {
        request["command"] = json!(cmd);
    }
    let file = gw.dir.path().join(format!("request-{n}.json"));
    std::fs::write(&file, request.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["explain", "--json", "-p"])
        .arg(gw.policies())
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match (x["decision"].as_str(), x["confirm"].as_bool()) {
        (Some("allow"), Some(true)) => "confirm",
        (Some("allow"), _) => "allow",
        (Some("deny"), _) => "deny",
        _ => panic!("unexpected explain output {x}"),
    }
}

#[test]
fn explain_and_the_gateway_decide_alike() {
    let gw = start();
    let cases = cases();
    let mut seen = std::collections::BTreeMap::new();
    rt().block_on(async {
        for (n, c) in cases.iter().enumerate() {
            let by_gateway = gateway_decision(&gw, c, n).await;
            let by_explain = explain_decision(&gw, c, n);
            assert_eq!(by_gateway, by_explain, "case {n}: {c:?}");
            *seen.entry(by_gateway).or_insert(0) += 1;
        }
    });
    // The generated set must exercise every outcome, or it proves little.
    for outcome in ["allow", "confirm", "deny"] {
        assert!(seen.get(outcome).copied().unwrap_or(0) > 0, "{seen:?}");
    }
}
