//! The policy CLIs, by their exact output: `moltgate dlp scan` (stdin and
//! file), `moltgate explain` (text and `--json`) with a fixed
//! `environment.time`, and `moltgate check` over the policy files.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Setup, ALLOW_ALL_ABAC, BIN, SECURITY_POLICY};

const DLP: &str = r##"patterns:
  credit_card:
    regex: '\b(?:[3-6]\d{3}|2[2-7]\d{2})(?:[ -]?\d){9,15}\b'
    validate: luhn
    action: mask
    mask: { keep_suffix: 4 }
  id_card:
    regex: '\b[1-9]\d{5}(18|19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}[\dXx]\b'
    validate: gb11643
    action: block
  cn_mobile:
    regex: '(?:\+86[ -]?|\b)1[3-9]\d{9}\b'
    action: mask
    mask: { keep_prefix: 3, keep_suffix: 4 }
keywords:
  internal:
    words: ["机密", "confidential"]
    action: alert
    case_insensitive: true
  fruit_egress:
    words: ["pineapple"]
    action: mask
    direction: egress
    mask: { char: "#" }
"##;

/// Inputs and the exact line `dlp scan` prints for each.
const SCAN: &[(&str, &str)] = &[
    (
        "card 4111 1111 1111 1111 here",
        r#"{"line":1,"findings":[{"type":"credit_card","start":5,"end":24,"action":"mask"}],"masked":"card ***************1111 here"}"#,
    ),
    (
        "order 4111111111111112 at 1700000000123",
        r#"{"line":2,"findings":[],"masked":"order 4111111111111112 at 1700000000123"}"#,
    ),
    (
        "call 13812341234 or +86 13912345678",
        r#"{"line":3,"findings":[{"type":"cn_mobile","start":5,"end":16,"action":"mask"},{"type":"cn_mobile","start":20,"end":35,"action":"mask"}],"masked":"call 138****1234 or +86********5678"}"#,
    ),
    (
        "id 11010519491231002X, not 110105194912310021",
        r#"{"line":4,"findings":[{"type":"id_card","start":3,"end":21,"action":"block"}],"masked":"id 11010519491231002X, not 110105194912310021"}"#,
    ),
    (
        "中文机密 CONFIDENTIAL",
        r#"{"line":5,"findings":[{"type":"internal","start":6,"end":12,"action":"alert"},{"type":"internal","start":13,"end":25,"action":"alert"}],"masked":"中文机密 CONFIDENTIAL"}"#,
    ),
    ("", r#"{"line":6,"findings":[],"masked":""}"#),
    (
        "I like pineapple",
        r#"{"line":7,"findings":[{"type":"fruit_egress","start":7,"end":16,"action":"mask"}],"masked":"I like #########"}"#,
    ),
];

fn policies_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn run(args: &[&str], cwd: Option<&Path>, stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn expected_scan() -> String {
    SCAN.iter().map(|(_, out)| format!("{out}\n")).collect()
}

fn scan_input() -> String {
    SCAN.iter().map(|(line, _)| format!("{line}\n")).collect()
}

/// `dlp scan` reads standard input (`-` or nothing) and prints one exact
/// JSON line per input line, with byte offsets.
#[test]
fn dlp_scan_stdin_exact_lines() {
    let dir = policies_dir(&[("dlp.yaml", DLP)]);
    let p = dir.path().to_str().unwrap();
    let input = scan_input();
    for args in [
        vec!["dlp", "scan", "-p", p],
        vec!["dlp", "scan", "--policies", p, "-"],
    ] {
        let out = stdout(&run(&args, None, Some(&input)));
        assert_eq!(out, expected_scan(), "{args:?}");
    }
    // Each line is valid JSON whose offsets slice out the finding.
    for (line, out) in SCAN {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        for f in v["findings"].as_array().unwrap() {
            let (s, e) = (
                f["start"].as_u64().unwrap() as usize,
                f["end"].as_u64().unwrap() as usize,
            );
            assert!(line.get(s..e).is_some_and(|t| !t.is_empty()), "{line}: {f}");
        }
    }
}

/// `dlp scan FILE` prints the same; `-p` defaults to `policies/` in the
/// working directory; a missing dlp.yaml or input is an error.
#[test]
fn dlp_scan_file_and_errors() {
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("policies")).unwrap();
    std::fs::write(work.path().join("policies/dlp.yaml"), DLP).unwrap();
    std::fs::write(work.path().join("in.txt"), scan_input()).unwrap();
    let out = stdout(&run(&["dlp", "scan", "in.txt"], Some(work.path()), None));
    assert_eq!(out, expected_scan());

    let o = run(&["dlp", "scan", "missing.txt"], Some(work.path()), None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.txt"));

    let empty = tempfile::tempdir().unwrap();
    let o = run(
        &["dlp", "scan", "-p", empty.path().to_str().unwrap()],
        None,
        Some("x\n"),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("dlp.yaml"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());
}

/// The shipped `policies/dlp.yaml` finds each category the issue names and
/// leaves checksum-failing numbers alone.
#[test]
fn dlp_scan_with_the_shipped_policy() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let lines = [
        ("visa 4111 1111 1111 1111", Some(("credit_card", "mask"))),
        ("id 11010519491231002X", Some(("id_card", "block"))),
        ("phone 13812341234", Some(("cn_mobile", "mask"))),
        ("mail alice@example.com", Some(("email", "mask"))),
        (
            "key AKIAIOSFODNN7EXAMPLE",
            Some(("aws_access_key", "block")),
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----",
            Some(("private_key", "block")),
        ),
        (
            "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
            Some(("github_token", "block")),
        ),
        ("order 4111111111111112", None),
        ("ts 1700000000123 ref 110105194912310021", None),
    ];
    let input: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
    let out = stdout(&run(&["dlp", "scan", "-p", shipped], None, Some(&input)));
    let outs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outs.len(), lines.len());
    for ((line, want), v) in lines.iter().zip(&outs) {
        let findings = v["findings"].as_array().unwrap();
        match want {
            None => {
                assert!(findings.is_empty(), "{line}: {v}");
                assert_eq!(v["masked"], *line);
            }
            Some((kind, action)) => {
                assert_eq!(findings.len(), 1, "{line}: {v}");
                assert_eq!(
                    (findings[0]["type"].as_str(), findings[0]["action"].as_str()),
                    (Some(*kind), Some(*action)),
                    "{line}"
                );
            }
        }
    }
    assert_eq!(outs[0]["masked"], "visa ***************1111");
    assert_eq!(outs[2]["masked"], "phone 138****1234");
}

const ABAC: &str = r#"policies:
  - id: office_hours
    effect: Allow
    resources: ["/v1/messages"]
    actions: [forward]
    conditions: { time: "09:00-18:00", ipRange: "10.0.0.0/8" }
  - id: no_contractors
    effect: Deny
    resources: ["/v1/**"]
    actions: [forward]
    conditions: { claims.contractor: ["true"] }
  - id: ops_commands
    effect: Allow
    resources: ["/v1/messages"]
    actions: ["command:*"]
"#;

const PERMISSIONS: &str = "roles:\n  admin: [\"command:reboot\"]\n  user: [\"command:help\"]\n";

/// Runs `explain` (text and JSON) on `request`; returns (text, json).
fn explain(dir: &Path, request: &str) -> (String, String) {
    let req = dir.join("request.json");
    std::fs::write(&req, request).unwrap();
    let p = dir.join("policies");
    let (p, r) = (p.to_str().unwrap(), req.to_str().unwrap());
    let text = stdout(&run(&["explain", "-p", p, r], None, None));
    let json = stdout(&run(&["explain", "--json", "-p", p, r], None, None));
    (text, json)
}

fn explain_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/abac.yaml"), ABAC).unwrap();
    std::fs::write(dir.path().join("policies/permissions.yaml"), PERMISSIONS).unwrap();
    dir
}

/// Allow, deny (overriding an allow), default deny, and a command with and
/// without a role granting it: exact text and JSON.
#[test]
fn explain_exact_text_and_json() {
    let dir = explain_dir();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "allow",
            r#"{"subject":{"id":"alice"},"resource":"/v1/messages","action":"forward","environment":{"ip":"10.1.2.3","time":"2025-03-04T10:00:00Z"}}"#,
            "decision: allow\ndecided_by: office_hours\nconfirm: no\nrbac: not needed (not a command)\nroles: (none)\nrequest: action=forward resource=/v1/messages subject=alice ip=10.1.2.3 time=2025-03-04T10:00:00Z\nrules:\n  office_hours (allow): matched\n  no_contractors (deny): not matched (claims.contractor)\n",
            r#"{"decision":"allow","decided_by":"office_hours","confirm":false,"rbac":null,"roles":[],"rules":[{"id":"office_hours","effect":"allow","confirm":false,"matched":true,"failed":null},{"id":"no_contractors","effect":"deny","confirm":false,"matched":false,"failed":"claims.contractor"}]}"#,
        ),
        (
            "deny overrides allow",
            r#"{"subject":{"id":"bob","claims":{"contractor":true}},"resource":"/v1/messages","action":"forward","environment":{"ip":"10.1.2.3","time":"2025-03-04T10:00:00Z"}}"#,
            "decision: deny\ndecided_by: no_contractors\nconfirm: no\nrbac: not needed (not a command)\nroles: (none)\nrequest: action=forward resource=/v1/messages subject=bob ip=10.1.2.3 time=2025-03-04T10:00:00Z\nrules:\n  office_hours (allow): matched\n  no_contractors (deny): matched\n",
            r#"{"decision":"deny","decided_by":"no_contractors","confirm":false,"rbac":null,"roles":[],"rules":[{"id":"office_hours","effect":"allow","confirm":false,"matched":true,"failed":null},{"id":"no_contractors","effect":"deny","confirm":false,"matched":true,"failed":null}]}"#,
        ),
        (
            "default deny (after hours)",
            r#"{"subject":{"id":"alice"},"resource":"/v1/messages","action":"forward","environment":{"ip":"10.1.2.3","time":"2025-03-04T20:00:00Z"}}"#,
            "decision: deny\ndecided_by: default_deny\nconfirm: no\nrbac: not needed (not a command)\nroles: (none)\nrequest: action=forward resource=/v1/messages subject=alice ip=10.1.2.3 time=2025-03-04T20:00:00Z\nrules:\n  office_hours (allow): not matched (time)\n  no_contractors (deny): not matched (claims.contractor)\n",
            r#"{"decision":"deny","decided_by":"default_deny","confirm":false,"rbac":null,"roles":[],"rules":[{"id":"office_hours","effect":"allow","confirm":false,"matched":false,"failed":"time"},{"id":"no_contractors","effect":"deny","confirm":false,"matched":false,"failed":"claims.contractor"}]}"#,
        ),
        (
            "default deny (no rule for the resource)",
            r#"{"subject":{"id":"alice"},"resource":"/hooks/slack/demo","action":"forward","environment":{"time":"2025-03-04T10:00:00Z"}}"#,
            "decision: deny\ndecided_by: default_deny\nconfirm: no\nrbac: not needed (not a command)\nroles: (none)\nrequest: action=forward resource=/hooks/slack/demo subject=alice ip=(none) time=2025-03-04T10:00:00Z\nrules: (none match this resource and action)\n",
            r#"{"decision":"deny","decided_by":"default_deny","confirm":false,"rbac":null,"roles":[],"rules":[]}"#,
        ),
        (
            "command without a role",
            r#"{"subject":{"id":"carl","roles":["user"]},"resource":"/v1/messages","action":"command:reboot","environment":{"ip":"10.1.2.3","time":"2025-03-04T10:00:00Z"}}"#,
            "decision: deny\ndecided_by: rbac:no_role_grants command:reboot\nconfirm: no\nrbac: no role grants command:reboot\nroles: user\nrequest: action=command:reboot resource=/v1/messages subject=carl ip=10.1.2.3 time=2025-03-04T10:00:00Z\nrules:\n  ops_commands (allow): matched\n",
            r#"{"decision":"deny","decided_by":"rbac:no_role_grants command:reboot","confirm":false,"rbac":{"permission":"command:reboot","granted":false,"role":null,"pattern":null},"roles":["user"],"rules":[{"id":"ops_commands","effect":"allow","confirm":false,"matched":true,"failed":null}]}"#,
        ),
        (
            "command with a role",
            r#"{"subject":{"id":"root","roles":["user","admin"]},"resource":"/v1/messages","action":"command:reboot","environment":{"ip":"10.1.2.3","time":"2025-03-04T10:00:00Z"}}"#,
            "decision: allow\ndecided_by: ops_commands\nconfirm: no\nrbac: command:reboot granted by role admin (permission command:reboot)\nroles: user, admin\nrequest: action=command:reboot resource=/v1/messages subject=root ip=10.1.2.3 time=2025-03-04T10:00:00Z\nrules:\n  ops_commands (allow): matched\n",
            r#"{"decision":"allow","decided_by":"ops_commands","confirm":false,"rbac":{"permission":"command:reboot","granted":true,"role":"admin","pattern":"command:reboot"},"roles":["user","admin"],"rules":[{"id":"ops_commands","effect":"allow","confirm":false,"matched":true,"failed":null}]}"#,
        ),
    ];
    for (name, request, text, json) in cases {
        let (got_text, got_json) = explain(dir.path(), request);
        assert_eq!(&got_text, text, "{name}");
        assert_eq!(got_json, format!("{json}\n"), "{name}");
    }
}

/// A misspelt key in the request file is refused with file:line:col and a suggestion.
#[test]
fn explain_refuses_unknown_request_keys() {
    let dir = explain_dir();
    let req = dir.path().join("request.json");
    std::fs::write(
        &req,
        "{\"resource\":\"/v1/messages\",\"action\":\"forward\",\n \"enviroment\":{}}\n",
    )
    .unwrap();
    let p = dir.path().join("policies");
    let o = run(
        &["explain", "-p", p.to_str().unwrap(), req.to_str().unwrap()],
        None,
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("request.json:2:")
            && err.contains("unknown key 'enviroment' (did you mean 'environment'?)"),
        "{err}"
    );
}

/// `moltgate check` validates the policy files too: the shipped examples
/// pass, a misspelt condition and a bad regex fail with file:line:col.
#[test]
fn check_covers_policies() {
    let (dir, _, _, config) = Setup {
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", ABAC.into()),
            ("permissions.yaml", PERMISSIONS.into()),
            ("dlp.yaml", DLP.into()),
        ],
        ..Default::default()
    }
    .write();
    let check = || run(&["check", "-c", config.to_str().unwrap()], None, None);
    let o = check();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ok: "));

    let policies = dir.path().join("policies");
    let broken = "policies:\n  - id: typo\n    effect: Allow\n    resources: [\"/v1/messages\"]\n    actions: [forward]\n    conditions:\n      ipRnage: 10.0.0.0/8\n";
    std::fs::write(policies.join("abac.yaml"), broken).unwrap();
    let o = check();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("abac.yaml:7:7: unknown key 'ipRnage' (did you mean 'ipRange'?)"),
        "{err}"
    );
    std::fs::write(policies.join("abac.yaml"), ABAC).unwrap();

    std::fs::write(
        policies.join("dlp.yaml"),
        "patterns:\n  ok: { regex: 'a+', action: alert }\n  bad: { regex: '(', action: mask }\n",
    )
    .unwrap();
    let o = check();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("dlp.yaml:3:3: pattern 'bad': invalid regex"),
        "{err}"
    );

    // The shipped examples load as written, once the operator sets their
    // own JWT secret: outside the demo config their published default is refused.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("policies: policies/", &format!("policies: {shipped}"));
    std::fs::write(&config, text).unwrap();
    let o = check();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("jwt_validation.secret is a published default"),
        "{err}"
    );
    let o = Command::new(BIN)
        .args(["check", "-c", config.to_str().unwrap()])
        .env("MOLTGATE_JWT_SECRET", common::JWT_SECRET)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The README Quickstart's `explain` step works as written: the shipped
/// `examples/request.json` against the shipped `policies/`.
#[test]
fn explain_the_shipped_example_request() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = stdout(&run(
        &["explain", "-p", "policies/", "examples/request.json"],
        Some(Path::new(root)),
        None,
    ));
    assert_eq!(
        out,
        "decision: allow
decided_by: local_demo
confirm: no
rbac: not needed (not a command)
roles: (none)
request: action=forward resource=/v1/messages subject=alice ip=127.0.0.1 time=2025-03-04T10:00:00Z
rules:
  local_demo (allow): matched
  acme_engineering_api (allow): not matched (ipRange)
"
    );
    let readme = std::fs::read_to_string(Path::new(root).join("README.md")).unwrap();
    assert!(readme.contains("moltgate explain -p policies/ examples/request.json"));
}

/// A message carrying a command is decided as the gateway decides it:
/// `forward`, then `command:<name>`, the first denial deciding.
#[test]
fn explain_a_message_with_a_command_takes_both_steps() {
    let dir = explain_dir();
    let (text, json) = explain(
        dir.path(),
        r#"{"subject":{"id":"carl","roles":["user"]},"resource":"/v1/messages","action":"forward","command":"reboot","environment":{"ip":"10.1.2.3","time":"2025-03-04T10:00:00Z"}}"#,
    );
    assert_eq!(
        text,
        "decision: deny
decided_by: rbac:no_role_grants command:reboot
confirm: no
rbac: no role grants command:reboot
roles: user
request: action=forward resource=/v1/messages subject=carl ip=10.1.2.3 time=2025-03-04T10:00:00Z
steps: forward=allow (office_hours), command:reboot=deny (rbac:no_role_grants command:reboot)
rules (forward):
  office_hours (allow): matched
  no_contractors (deny): not matched (claims.contractor)
rules (command:reboot):
  ops_commands (allow): matched
"
    );
    assert_eq!(
        json,
        concat!(
            r#"{"decision":"deny","decided_by":"rbac:no_role_grants command:reboot","confirm":false,"#,
            r#""rbac":{"permission":"command:reboot","granted":false,"role":null,"pattern":null},"roles":["user"],"#,
            r#""rules":[{"id":"office_hours","effect":"allow","confirm":false,"matched":true,"failed":null},{"id":"no_contractors","effect":"deny","confirm":false,"matched":false,"failed":"claims.contractor"}],"#,
            r#""steps":[{"action":"forward","decision":"allow","decided_by":"office_hours","confirm":false,"rules":[{"id":"office_hours","effect":"allow","confirm":false,"matched":true,"failed":null},{"id":"no_contractors","effect":"deny","confirm":false,"matched":false,"failed":"claims.contractor"}]},"#,
            r#"{"action":"command:reboot","decision":"deny","decided_by":"rbac:no_role_grants command:reboot","confirm":false,"rules":[{"id":"ops_commands","effect":"allow","confirm":false,"matched":true,"failed":null}]}]}"#,
            "\n"
        )
    );
    // After hours `forward` is denied, so the command is not evaluated.
    let (text, _) = explain(
        dir.path(),
        r#"{"subject":{"id":"carl","roles":["admin"]},"resource":"/v1/messages","action":"forward","command":"/reboot","environment":{"ip":"10.1.2.3","time":"2025-03-04T20:00:00Z"}}"#,
    );
    assert!(
        text.starts_with("decision: deny\ndecided_by: default_deny\nconfirm: no\nrbac: not checked (forward denied)\nroles: admin\n"),
        "{text}"
    );
    assert!(
        text.contains("steps: forward=deny (default_deny), command:reboot=not evaluated\n")
            && text.ends_with("rules (command:reboot): (not evaluated)\n"),
        "{text}"
    );
}

/// Runs `check` on a fresh setup with `abac` (and otherwise the given
/// policies); returns (success, stdout, stderr).
fn check_with(policies: Vec<(&'static str, String)>, routes: &str) -> (bool, String, String) {
    let (_dir, _, _, config) = Setup {
        policies,
        routes: routes.into(),
        ..Default::default()
    }
    .write();
    let o = run(&["check", "-c", config.to_str().unwrap()], None, None);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

const TWO_ROUTES: &str = "  - { path: /v1/messages, platform: generic, upstream: assistant }\n  - { path: /v1/chat, platform: generic, upstream: assistant }\n";

/// `check` reports every error of every policy file, each on its own line,
/// and exits non-zero.
#[test]
fn check_reports_every_error_in_every_file() {
    let abac = "policies:\n  - { id: a, effect: Allow, resources: ['/v1/**'], actions: [forward], conditions: { ipRnage: 10.0.0.0/8 } }\n  - { id: b, effect: Alow, resources: ['/v1/**'], actions: [forward] }\n  - { id: c, effect: Allow, resources: ['/v1/**'], actions: [forward], conditions: { time: '9-5' } }\n  - { id: d, effect: Allow, resources: ['/v1/**'], actions: [forward] }\n  - { id: d, effect: Deny, resources: ['/x'], actions: [forward] }\n";
    let dlp = "patterns:\n  one: { regex: '(', action: mask }\n  two: { regex: 'ok', action: alert }\n  three: { regex: '[', action: block }\n  four: { regx: 'x', action: block }\n";
    let permissions =
        "roles:\n  admin: ['command:*']\nsubjects:\n  alice: [admn]\n  bob: [nobody]\n";
    let (ok, out, err) = check_with(
        vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", abac.into()),
            ("dlp.yaml", dlp.into()),
            ("permissions.yaml", permissions.into()),
        ],
        TWO_ROUTES,
    );
    assert!(!ok, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    let expect = [
        "abac.yaml:2:86: unknown key 'ipRnage' (did you mean 'ipRange'?)",
        "abac.yaml:3:22: unknown value 'Alow' (did you mean 'Allow'?)",
        "abac.yaml:4:92: invalid time window '9-5'",
        "abac.yaml:6:7: duplicate rule id 'd'",
        "dlp.yaml:2:3: pattern 'one': invalid regex: unclosed group (column 1)",
        "dlp.yaml:4:3: pattern 'three': invalid regex: unclosed character class (column 1)",
        "dlp.yaml:5:11: unknown key 'regx' (did you mean 'regex'?)",
        "permissions.yaml:4:3: subject 'alice' has undeclared role 'admn' (did you mean 'admin'?)",
        "permissions.yaml:5:3: subject 'bob' has undeclared role 'nobody'",
    ];
    for want in expect {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "missing {want:?} in:\n{err}"
        );
    }
    // One diagnostic per line, nothing else.
    assert_eq!(lines.len(), expect.len(), "{err}");
}

/// A pattern without a maximum length cannot be masked safely in a stream:
/// `check` refuses it, at the rule, when a route streams (OpenAI, WebSocket),
/// and accepts it when none does.
#[test]
fn check_refuses_an_unbounded_pattern_on_a_streamed_route() {
    let dlp = "patterns:\n  card: { regex: '4[0-9]{15}', action: mask }\n  ticket: { regex: 'TICKET-[0-9]+', action: mask }\n";
    let policies = || {
        vec![
            ("security_policy.yaml", SECURITY_POLICY.to_string()),
            ("abac.yaml", ALLOW_ALL_ABAC.to_string()),
            ("dlp.yaml", dlp.to_string()),
        ]
    };
    let streamed = "  - { path: /v1/chat/completions, platform: openai, upstream: assistant }\n";
    let (ok, out, err) = check_with(policies(), streamed);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("dlp.yaml:3:3: pattern of rule 'ticket' has no maximum length")
            && err.contains("route '/v1/chat/completions' streams replies"),
        "{err}"
    );
    let (ok, out, err) = check_with(policies(), TWO_ROUTES);
    assert!(ok, "{out}{err}");
}

/// Adapter files are checked with the policies: every error located in its
/// file, with a suggestion; an adapter route on an unknown upstream too.
#[test]
fn check_reports_adapter_errors_at_their_place() {
    let base = || {
        vec![
            ("security_policy.yaml", SECURITY_POLICY.to_string()),
            ("abac.yaml", ALLOW_ALL_ABAC.to_string()),
        ]
    };
    let typo = "name: acme\nroute: { path: /hooks/acme, upstream: assistant }\nformat: json\nverfy: { scheme: token, header: X-Token, secret: s3cret-token-value }\nfields: { id: /id, text: /text }\nreply:\n  inline: { body: { text: \"{{replly}}\" } }\n";
    let mut policies = base();
    policies.push(("adapters/acme.yaml", typo.to_string()));
    let (ok, out, err) = check_with(policies, TWO_ROUTES);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("adapters/acme.yaml:4:1: unknown key 'verfy' (did you mean 'verify'?)"),
        "{err}"
    );
    assert!(
        !err.contains("s3cret-token-value"),
        "the secret is never printed"
    );
    let unknown = "name: acme\nroute: { path: /hooks/acme, upstream: nowhere }\nformat: json\nverify: { scheme: token, header: X-Token, secret: s3cret-token-value }\nfields: { id: /id, text: /text }\n";
    let mut policies = base();
    policies.push(("adapters/acme.yaml", unknown.to_string()));
    let (ok, out, err) = check_with(policies, TWO_ROUTES);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("adapters/acme.yaml") && err.contains("upstream 'nowhere'"),
        "{err}"
    );
}

/// Route coverage: a resource glob that matches no route is a warning (exit
/// 0); a rule that can never apply is an error; no Allow for `forward` on
/// any route is a warning naming the file.
#[test]
fn check_flags_globs_that_match_no_route() {
    let security = ("security_policy.yaml", SECURITY_POLICY.to_string());
    let typo = "policies:\n  - id: api\n    effect: Allow\n    resources: [\"v1/messages\", \"/v1/chat\"]\n    actions: [forward]\n";
    let (ok, out, err) = check_with(
        vec![security.clone(), ("abac.yaml", typo.into())],
        TWO_ROUTES,
    );
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ok: ") && out.contains("; 2 warning(s)"),
        "{out}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].ends_with("policies/abac.yaml:4:17: warning: resource 'v1/messages' matches no route (routes: /v1/messages, /v1/chat); did you mean '/v1/messages'?"),
        "{err}"
    );
    assert!(
        lines[1].ends_with("policies/abac.yaml: warning: no Allow rule can allow 'forward' on route '/v1/messages': every message on it will be denied"),
        "{err}"
    );

    let dead =
        "policies:\n  - { id: api, effect: Allow, resources: [v1/messages], actions: [forward] }\n";
    let (ok, out, err) = check_with(
        vec![security.clone(), ("abac.yaml", dead.into())],
        TWO_ROUTES,
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("abac.yaml:2:43: resource 'v1/messages' can match no route path (route paths start with '/'), so rule 'api' never applies"),
        "{err}"
    );
    assert!(
        err.contains("abac.yaml: warning: no Allow rule can allow 'forward' on any route (routes: /v1/messages, /v1/chat): every message will be denied; add one to "),
        "{err}"
    );

    // A bare "*" means every route: nothing to say.
    let star = "policies:\n  - { id: all, effect: Allow, resources: ['*'], actions: [forward] }\n";
    let (ok, out, err) = check_with(vec![security, ("abac.yaml", star.into())], TWO_ROUTES);
    assert!(ok && err.is_empty(), "{err}");
    assert!(!out.contains("warning"), "{out}");
}

/// `check` and `run` on a config whose certificate and key do not go
/// together: (check's success and stderr, run's exit status and stderr).
fn check_and_run_with_tls(
    edit: impl Fn(&Path, &str) -> String,
) -> (bool, String, Option<i32>, String) {
    let (dir, _, _, config) = Setup::default().write();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, edit(dir.path(), &text)).unwrap();
    let check = run(&["check", "-c", config.to_str().unwrap()], None, None);
    // `run` must refuse to start, not serve: bounded wait for its exit.
    let mut child = Command::new(BIN)
        .args(["run", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (
        check.status.success(),
        String::from_utf8_lossy(&check.stderr).into_owned(),
        status,
        err,
    )
}

/// A typo in the certificate path with `dev_autogenerate: true` used to
/// write a new certificate beside the old key; the listener thread then
/// died while /healthz said 200. Now both commands refuse, by name.
#[test]
fn a_certificate_path_typo_never_pairs_a_new_certificate_with_the_old_key() {
    let (checked, check_err, status, run_err) = check_and_run_with_tls(|_, text| {
        text.replace(
            "tls: { cert: certs/server.crt, key: certs/server.key }",
            "tls: { cert: certs/sever.crt, key: certs/server.key, dev_autogenerate: true }",
        )
    });
    assert!(!checked);
    assert!(check_err.contains("sever.crt not found"), "{check_err}");
    assert!(
        status.is_some_and(|c| c != 0),
        "run must exit non-zero: {status:?}\n{run_err}"
    );
    assert!(
        run_err.contains("refusing to pair a new certificate or key with an old one"),
        "{run_err}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused_by_check_and_run() {
    let other = tempfile::tempdir().unwrap();
    assert!(run(
        &["certs", "dev", other.path().to_str().unwrap()],
        None,
        None
    )
    .status
    .success());
    let other_key = other.path().join("server.key");
    let (checked, check_err, status, run_err) = check_and_run_with_tls(|_, text| {
        text.replace(
            "key: certs/server.key",
            &format!("key: {}", other_key.display()),
        )
    });
    assert!(!checked);
    assert!(
        check_err.contains("does not belong to the certificate"),
        "{check_err}"
    );
    assert!(status.is_some_and(|c| c != 0), "{status:?}\n{run_err}");
    assert!(
        run_err.contains("does not belong to the certificate"),
        "{run_err}"
    );
}
