//! Hostile YAML for `moltgate check` (issue 10, item 12): policy files may come
//! from a ConfigMap or a pull request, so the loader refuses an alias bomb,
//! deep nesting, an oversized file and a key written twice, each at once,
//! with a `file:line:col` error and without a crash.
//!
//! Before the guard in `config::yaml`: the alias bomb below (100 KiB) took
//! 45 s and 5 GiB and was accepted; 400 000 nested `[` kept libyaml busy for
//! minutes; a 17 MiB abac.yaml and a repeated upstream name were accepted; a
//! repeated field was reported at the first line of its rule.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Setup, BIN};

/// How long `check` may take on a hostile file. It takes well under a
/// second; the deadline only bounds a regression (the process is killed).
const QUICK: Duration = Duration::from_secs(20);

/// Runs `moltgate check -c config` with a deadline; returns whether it
/// succeeded and its stderr. Fails the test if it is not done in time, or
/// died of a signal or a panic.
fn check(config: &Path) -> (bool, String) {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(["check", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > QUICK {
            let _ = child.kill();
            let _ = child.wait();
            panic!("moltgate check took more than {QUICK:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = reader.join().unwrap();
    assert!(
        status.code().is_some(),
        "died of a signal: {status:?}\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    (status.success(), err)
}

/// Writes a fresh setup with `abac.yaml` (and the given other policy files)
/// and checks it.
fn check_policies(files: Vec<(&'static str, String)>) -> (bool, String) {
    let mut setup = Setup::default();
    for (name, text) in files {
        setup.policies.retain(|(n, _)| *n != name);
        setup.policies.push((name, text));
    }
    let (_dir, _, _, config) = setup.write();
    check(&config)
}

/// Asserts `check` refused with exactly one error, `file` at `rest`
/// (`file:line:col: message`).
fn assert_refused((ok, err): (bool, String), file: &str, rest: &str) {
    assert!(!ok, "accepted:\n{err}");
    let expected = format!("{file}{rest}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].ends_with(&expected),
        "expected one error ending in {expected:?}, got:\n{err}"
    );
}

/// One list repeated by thousands of aliases: every type accepts it (roles
/// map to lists), so only the alias bound stops it.
#[test]
fn alias_bomb_is_refused_at_the_alias() {
    let mut perms = format!("roles:\n  r0: &a [{}]\n", vec!["x"; 20_000].join(", "));
    for i in 1..2_000 {
        perms.push_str(&format!("  r{i}: *a\n"));
    }
    assert_refused(
        check_policies(vec![("permissions.yaml", perms)]),
        "/policies/permissions.yaml",
        ":7:7: alias '*a' makes aliases expand to more than 100000 values; the limit is 100000",
    );

    // The classic billion laughs: each anchor repeats the one before 9 times.
    let mut abac = String::from(
        "policies:\n  - id: lol\n    effect: Allow\n    actions: [forward]\n    resources: &l0 [a, b, c, d, e, f, g, h, i]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        abac.push_str(&format!(
            "  - {{ id: l{i}, effect: Allow, actions: [forward], resources: &l{i} [{refs}] }}\n"
        ));
    }
    assert_refused(
        check_policies(vec![("abac.yaml", abac)]),
        "/policies/abac.yaml",
        ":10:66: alias '*l4' makes aliases expand to more than 100000 values; the limit is 100000",
    );
}

#[test]
fn deep_nesting_is_refused_at_once() {
    let deep = |n: usize| format!("policies: {}{}\n", "[".repeat(n), "]".repeat(n));
    let too_deep = ": lists and maps are nested more than 64 deep; the limit is 64";
    // 400 000 levels (800 KB, within the size limit), and 10 000.
    for n in [400_000, 10_000] {
        assert_refused(
            check_policies(vec![("abac.yaml", deep(n))]),
            "/policies/abac.yaml",
            &format!(":1:266{too_deep}"),
        );
    }
    // Block nesting, in moltgate.yaml.
    let mut nested = String::from("  assistant:\n");
    for i in 2..70 {
        nested.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
    }
    let setup = Setup {
        upstreams: nested,
        ..Setup::default()
    };
    let (_dir, _, _, config) = setup.write();
    assert_refused(
        check(&config),
        "/moltgate.yaml",
        &format!(":69:129{too_deep}"),
    );
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    let rule = |i: usize| {
        format!("  - id: r{i}\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [forward]\n    description: \"{}\"\n", "x".repeat(60))
    };
    let mut abac = String::from("policies:\n");
    let mut i = 0;
    while abac.len() < 17 << 20 {
        abac.push_str(&rule(i));
        i += 1;
    }
    let len = abac.len();
    assert_refused(
        check_policies(vec![("abac.yaml", abac)]),
        "/policies/abac.yaml",
        &format!(": the file is {len} bytes; the limit is 16777216 bytes (16 MiB)"),
    );
}

#[test]
fn duplicate_keys_in_abac_are_refused_at_the_second() {
    let twice = "policies:\n  - id: a\n    effect: Deny\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [forward]\n";
    assert_refused(
        check_policies(vec![("abac.yaml", twice.into())]),
        "/policies/abac.yaml",
        ":4:5: duplicate key 'effect' (first at line 3, column 5)",
    );
    let condition = "policies:\n  - id: a\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [forward]\n    conditions: { ipRange: 10.0.0.0/8, ipRange: 0.0.0.0/0 }\n";
    assert_refused(
        check_policies(vec![("abac.yaml", condition.into())]),
        "/policies/abac.yaml",
        ":6:40: duplicate condition 'ipRange'",
    );
}

#[test]
fn duplicate_keys_in_the_config_are_refused_at_the_second() {
    // A second upstream of the same name used to replace the first silently.
    let setup = Setup {
        upstreams: "  assistant: { kind: grpc, nodes: [embedded], balance: conversation, timeout: 5s }\n  assistant: { kind: grpc, nodes: [10.0.0.1:50051], balance: conversation, timeout: 5s }\n".into(),
        ..Setup::default()
    };
    let (_dir, _, _, config) = setup.write();
    assert_refused(
        check(&config),
        "/moltgate.yaml",
        ":7:3: duplicate key 'assistant' (first at line 6, column 3)",
    );
    // A top-level key.
    let setup = Setup {
        extra: "policies: elsewhere/\n".into(),
        ..Setup::default()
    };
    let (_dir, _, _, config) = setup.write();
    assert_refused(
        check(&config),
        "/moltgate.yaml",
        ":11:1: duplicate key 'policies' (first at line 4, column 1)",
    );
}
