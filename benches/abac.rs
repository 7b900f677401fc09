//! ABAC benches: one decision among 10,000 rules (target <= 2 us, thanks to
//! the action/resource index), and compiling 10,000 rules (part of the
//! reload budget).

use std::hint::black_box;
use std::path::Path;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use moltgate::policy::abac::{AbacPolicy, AccessRequest, Environment, Subject};
use moltgate::policy::rbac::Permissions;

/// 10,000 rules in the seed's shape spread over 2,500 tenants' paths, with
/// glob and literal resources, a few glob actions, and every kind of condition.
fn rules_yaml(n: usize) -> String {
    let mut s = String::from("policies:\n");
    for i in 0..n {
        let t = i / 4;
        match i % 4 {
            0 => s.push_str(&format!(
                "  - id: allow_{i}\n    effect: Allow\n    resources: [\"/api/v1/t{t}/messages/*\"]\n    actions: [read, forward]\n    conditions: {{ time: \"09:00-18:00\", ipRange: \"10.0.0.0/8\", deviceType: [mobile, desktop] }}\n"
            )),
            1 => s.push_str(&format!(
                "  - id: night_{i}\n    effect: Deny\n    resources: [\"/api/v1/t{t}/**\"]\n    actions: [forward]\n    conditions: {{ time: \"22:00-06:00\", timezone: Asia/Shanghai }}\n"
            )),
            2 => s.push_str(&format!(
                "  - id: hook_{i}\n    effect: Allow\n    resources: [\"/hooks/t{t}/slack\", \"/hooks/t{t}/feishu\"]\n    actions: [forward, \"command:*\"]\n    conditions: {{ tenant: t{t}, roles: [user, admin] }}\n"
            )),
            _ => s.push_str(&format!(
                "  - id: claims_{i}\n    effect: Allow\n    resources: [\"/api/v1/t{t}/admin/*\"]\n    actions: [read]\n    conditions: {{ claims.department: [sre, eng], chat_type: direct }}\n"
            )),
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = rules_yaml(10_000);
    let path = Path::new("policies/abac.yaml");
    let policy = match AbacPolicy::from_yaml(path, &text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let perms = match Permissions::from_yaml(
        Path::new("policies/permissions.yaml"),
        "roles:\n  admin: [\"command:*\"]\n  user: [command:help]\n",
    ) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let time = Utc
        .with_ymd_and_hms(2025, 3, 4, 10, 0, 0)
        .single()
        .unwrap_or_default();
    let req = AccessRequest {
        subject: Subject {
            id: "u1".into(),
            device_type: Some("mobile".into()),
            tenant: Some("t1234".into()),
            roles: vec!["user".into()],
            ..Subject::default()
        },
        resource: "/api/v1/t1234/messages/77".into(),
        action: "forward".into(),
        chat_type: Some("direct".into()),
        command: None,
        environment: Environment {
            ip: "10.1.2.3".parse().ok(),
            time,
        },
    };
    assert!(policy.decide(&req, &perms).allowed);
    let mut cmd = req.clone();
    cmd.resource = "/hooks/t1234/slack".into();
    cmd.action = "command:help".into();
    assert!(policy.decide(&cmd, &perms).allowed);
    let mut miss = req.clone();
    miss.resource = "/api/v1/unknown/x".into();

    let mut g = c.benchmark_group("abac");
    g.bench_function("decide_10k_rules_allow", |b| {
        b.iter(|| policy.decide(black_box(&req), &perms))
    });
    g.bench_function("decide_10k_rules_command_rbac", |b| {
        b.iter(|| policy.decide(black_box(&cmd), &perms))
    });
    g.bench_function("decide_10k_rules_default_deny", |b| {
        b.iter(|| policy.decide(black_box(&miss), &perms))
    });
    g.sample_size(10);
    g.bench_function("compile_10k_rules", |b| {
        b.iter(|| AbacPolicy::from_yaml(path, black_box(&text)).map(|p| p.len()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
