//! Policy files: every kind the gateway loads, compiled from text, then used.
//!
//! Input: `kind: u8 | file text` (lossy UTF-8). `kind % 6` picks the file:
//! 0 `security_policy.yaml` (JWT, IP lists, trusted proxies, rate limits),
//! 1 `abac.yaml`, 2 `permissions.yaml`, 3 `dlp.yaml`, 4 `identities.yaml`,
//! 5 an `explain` request (JSON).
//!
//! The per-file entry points take text (`*::from_yaml`, `yaml::parse_str`,
//! `JwtVerifier::new`, `explain::parse_request`), so no file is written per
//! input; `security_policy.yaml` is compiled exactly as `PolicySet::load`
//! does it. Key files a fuzzed `jwt_validation` names are read from a fixed
//! key directory (`ed25519.pem`, `jwks.json`), and only when the name is a
//! plain file name there.
//!
//! Properties: nothing panics; every error says what is wrong and any line it
//! names is inside the file; a policy that loads works, and answers like an
//! independent reading of the same file: a token the verifier mints
//! verifies; IP decisions equal a linear scan of the CIDR lists; rate limits
//! admit exactly `max_requests` at one instant, and a reconfigured limiter
//! keeps the counters; ABAC decisions agree with their trace; RBAC grants
//! come from the subject's roles; every linked account maps back to its
//! person; an explain request survives `request_json` → `parse_request`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Instant;

use super::common::*;
use moltgate::config::yaml;
use moltgate::policy::abac::{AbacPolicy, AccessRequest, Effect, Environment, Subject};
use moltgate::policy::dlp::{Direction, DlpPolicy};
use moltgate::policy::identities::Identities;
use moltgate::policy::ip::{Cidr, IpPolicy};
use moltgate::policy::jwt::JwtVerifier;
use moltgate::policy::rate::{RateKeys, RateLimit, RateLimiter, RateLimitingConfig};
use moltgate::policy::rbac::Permissions;
use moltgate::policy::security::SecurityPolicyFile;
use moltgate::policy::{authorize, explain, lint};

const ROUTES: &[&str] = &["/v1/messages", "/hooks/slack/demo", "/hooks/telegram/x"];

static SHIPPED_ABAC: LazyLock<AbacPolicy> = LazyLock::new(|| {
    AbacPolicy::from_yaml(
        Path::new("policies/abac.yaml"),
        include_str!("../../policies/abac.yaml"),
    )
    .expect("the shipped abac.yaml loads")
});

static SHIPPED_PERMISSIONS: LazyLock<Permissions> = LazyLock::new(|| {
    Permissions::from_yaml(
        Path::new("policies/permissions.yaml"),
        include_str!("../../policies/permissions.yaml"),
    )
    .expect("the shipped permissions.yaml loads")
});

/// A few requests that reach different rules: the API from loopback, a
/// command in a group chat, a tenant's engineer by claim from the VPN.
static REQUESTS: LazyLock<Vec<AccessRequest>> = LazyLock::new(|| {
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0).expect("time");
    let subject = |id: &str, platform: &str, roles: &[&str]| Subject {
        id: id.into(),
        platform: Some(platform.into()),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Subject::default()
    };
    let mut claims = BTreeMap::new();
    claims.insert("department".to_string(), serde_json::json!("sre"));
    vec![
        AccessRequest {
            subject: subject("alice", "generic", &["admin"]),
            resource: "/v1/messages".into(),
            action: "forward".into(),
            chat_type: Some("private".into()),
            command: None,
            environment: Environment {
                ip: Some("127.0.0.1".parse().unwrap()),
                time: at(1_700_000_000),
            },
        },
        AccessRequest {
            subject: subject("12345678", "telegram", &[]),
            resource: "/hooks/telegram/x".into(),
            action: "forward".into(),
            chat_type: Some("group".into()),
            command: Some("reboot".into()),
            environment: Environment {
                ip: Some("::1".parse().unwrap()),
                time: at(1_700_050_000),
            },
        },
        AccessRequest {
            subject: Subject {
                tenant: Some("acme".into()),
                device_type: Some("mobile".into()),
                person: Some("zhangsan".into()),
                claims,
                ..subject("bob", "generic", &["user", "oncall"])
            },
            resource: "/v1/messages".into(),
            action: "command:deploy".into(),
            chat_type: None,
            command: None,
            environment: Environment {
                ip: Some("10.1.2.3".parse().unwrap()),
                time: at(1_700_010_000),
            },
        },
    ]
});

/// One fuzz input; panics on a broken property.
pub fn run(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match kind % 6 {
        0 => security(&text),
        1 => abac(&text),
        2 => permissions(&text),
        3 => dlp(&text),
        4 => identities(&text),
        _ => explain_request(&text),
    }
}

fn security(text: &str) {
    let path = Path::new("policies/security_policy.yaml");
    // As `PolicySet::load` reads it: blank is the defaults.
    let file: SecurityPolicyFile = if text.trim().is_empty() {
        SecurityPolicyFile::default()
    } else {
        match yaml::parse_str(path, text) {
            Ok(f) => f,
            Err(e) => return check_file_error(&e, text),
        }
    };
    if let Some(cfg) = &file.jwt_validation {
        let names = [&cfg.public_key, &cfg.jwks];
        if names
            .iter()
            .all(|n| n.as_deref().is_none_or(plain_file_name))
        {
            match JwtVerifier::new(cfg, key_dir(), path, text) {
                Ok(jwt) => use_jwt(&jwt, text),
                Err(e) => check_file_error(&e, text),
            }
        }
    }
    use_ip(&file);
    use_rate(&file.rate_limiting);
}

fn use_jwt(jwt: &JwtVerifier, text: &str) {
    if let Some(weak) = jwt.weak_secret() {
        check_file_error(weak, text);
        assert!(jwt.require_strong_secret(false).is_err());
    }
    assert!(jwt.require_strong_secret(true).is_ok());
    assert!(jwt.no_weaker_than(jwt).is_ok());
    assert!(jwt.verify(None).is_err());
    assert!(jwt.verify(Some("Bearer e30.e30.")).is_err());
    // A token this verifier mints (as `moltgate token` does) verifies.
    if jwt.hs_secret().is_some_and(|s| !s.is_empty()) {
        let mut extra = BTreeMap::new();
        extra.insert("roles".to_string(), serde_json::json!(["user"]));
        let token = jwt
            .mint("alice", &extra, 3600)
            .expect("mint with an HS secret");
        let subject = jwt
            .verify(Some(&format!("Bearer {token}")))
            .unwrap_or_else(|e| panic!("a minted token is refused: {e}"));
        assert_eq!(subject.id, "alice");
        assert_eq!(subject.roles, ["user"]);
    }
}

/// The addresses the IP policy is asked about: fixed ones, and the edges of
/// every listed network (first, last, one before, one after).
fn probe_ips(file: &SecurityPolicyFile) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "203.0.113.7",
        "::ffff:10.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::",
        "2001:db8::1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let lists = [
        &file.ip_whitelist,
        &file.ip_blacklist,
        &file.trusted_proxies,
    ];
    for c in lists.into_iter().flatten().take(24) {
        let net = c.net();
        let (lo, hi) = (net.network(), net.broadcast());
        ips.extend([lo, hi]);
        match (lo, hi) {
            (IpAddr::V4(lo), IpAddr::V4(hi)) => {
                let (lo, hi) = (u32::from(lo), u32::from(hi));
                ips.extend(lo.checked_sub(1).map(|a| IpAddr::V4(a.into())));
                ips.extend(hi.checked_add(1).map(|a| IpAddr::V4(a.into())));
            }
            (IpAddr::V6(lo), IpAddr::V6(hi)) => {
                let (lo, hi) = (u128::from(lo), u128::from(hi));
                ips.extend(lo.checked_sub(1).map(|a| IpAddr::V6(a.into())));
                ips.extend(hi.checked_add(1).map(|a| IpAddr::V6(a.into())));
            }
            _ => {}
        }
    }
    ips
}

fn use_ip(file: &SecurityPolicyFile) {
    let ip = IpPolicy::new(
        &file.ip_whitelist,
        &file.ip_blacklist,
        &file.trusted_proxies,
    )
    .with_client_ip_headers(&file.client_ip_headers);
    let inside = |list: &[Cidr], a: IpAddr| list.iter().any(|c| c.contains(a));
    for a in probe_ips(file) {
        let expected = !inside(&file.ip_blacklist, a)
            && (file.ip_whitelist.is_empty() || inside(&file.ip_whitelist, a));
        assert_eq!(
            ip.check(a).is_allowed(),
            expected,
            "IP decision for {a} differs from the lists"
        );
        let trusted = inside(&file.trusted_proxies, a);
        assert_eq!(ip.is_trusted_proxy(a), trusted, "trusted proxy {a}");
        let headers = headers(&[
            (
                "x-forwarded-for",
                Some(&b"198.51.100.1, 10.0.0.1, unknown, 127.0.0.1"[..]),
            ),
            (
                "forwarded",
                Some(&b"for=198.51.100.2;proto=https, for=\"[2001:db8::2]:80\""[..]),
            ),
        ]);
        let client = ip.client_ip_in(a, &headers);
        if !trusted {
            assert_eq!(client, a.to_canonical(), "an untrusted peer is the client");
        }
        let _ = ip.client_ip(a, Some("1.2.3.4, 5.6.7.8"));
    }
    let _ = ip.sizes();
}

fn use_rate(cfg: &RateLimitingConfig) {
    let now = Instant::now();
    let keys = RateKeys {
        ip: Some("192.0.2.1".parse().unwrap()),
        user: Some("alice"),
        tenant: Some("acme"),
        route: ROUTES[0],
    };
    let max = |l: &Option<RateLimit>| l.as_ref().map(|l| l.max_requests);
    // The smallest budget among the scopes these keys fall under.
    let budget = [
        max(&cfg.global),
        max(&cfg.per_ip),
        max(&cfg.per_user),
        max(&cfg.per_tenant),
        cfg.per_route.get(ROUTES[0]).map(|l| l.max_requests),
    ]
    .into_iter()
    .flatten()
    .min();
    let limiter = RateLimiter::new(cfg);
    for n in 1..=4u32 {
        let admitted = limiter.check(&keys, now).is_ok();
        assert_eq!(
            admitted,
            budget.is_none_or(|b| n <= b),
            "request {n} at one instant with a budget of {budget:?}"
        );
    }
    if budget.is_some_and(|b| b < 4) {
        // A reload with the same windows keeps the spent budget.
        let reloaded = limiter.reconfigure(cfg);
        assert!(
            reloaded.check(&keys, now).is_err(),
            "a reconfigured limiter forgot its counters"
        );
    }
    let per_ip = max(&cfg.per_ip);
    let fresh = RateLimiter::new(cfg);
    for n in 1..=3u32 {
        let admitted = fresh
            .check_unverified("192.0.2.9".parse().unwrap(), now)
            .is_ok();
        assert_eq!(
            admitted,
            per_ip.is_none_or(|b| n <= b),
            "unverified request {n}"
        );
    }
    assert!(fresh.should_notify("alice", now));
    assert!(!fresh.should_notify("alice", now));
    let _ = (fresh.notice_interval(), fresh.tracked_keys());
}

fn abac(text: &str) {
    let policy = match AbacPolicy::from_yaml(Path::new("policies/abac.yaml"), text) {
        Ok(p) => p,
        Err(e) => return check_file_error(&e, text),
    };
    assert_eq!(policy.len(), policy.rule_ids().count());
    decide_all(&policy, &SHIPPED_PERMISSIONS);
    for l in lint::lint(&policy, ROUTES) {
        assert!(!l.message.trim().is_empty(), "an empty lint: {l:?}");
    }
}

/// Decides every fixed request with `abac`, and checks the decision against
/// its trace and the explanation.
fn decide_all(abac: &AbacPolicy, perms: &Permissions) {
    for req in REQUESTS.iter() {
        let decision = abac.decide(req, perms);
        let trace = abac.trace(req, perms);
        let holds = |e: Effect| trace.iter().any(|t| t.effect == e && t.failed.is_none());
        if holds(Effect::Deny) || !holds(Effect::Allow) {
            assert!(!decision.allowed, "allowed against its trace: {trace:?}");
        } else if !req.action.starts_with("command:") {
            assert!(decision.allowed, "denied against its trace: {trace:?}");
        }
        if decision.confirm {
            assert!(trace
                .iter()
                .any(|t| t.effect == Effect::Allow && t.confirm && t.failed.is_none()));
        }
        if let Some(g) = &decision.grant {
            assert!(
                perms.has_role(&req.subject, &g.role),
                "granted by a role not held: {g:?}"
            );
        }
        let authz = authorize::authorize(abac, perms, req);
        let x = explain::explain(abac, perms, req.clone());
        assert_eq!(x.authorization.allowed, authz.allowed);
        let _ = explain::render_text(&x);
        let json = explain::render_json(&x);
        serde_json::from_str::<serde_json::Value>(&json).expect("explain --json is JSON");
    }
}

fn permissions(text: &str) {
    let perms = match Permissions::from_yaml(Path::new("policies/permissions.yaml"), text) {
        Ok(p) => p,
        Err(e) => return check_file_error(&e, text),
    };
    let _ = perms.role_names().count();
    for req in REQUESTS.iter() {
        let s = &req.subject;
        let roles = perms.effective_roles(s);
        for r in &s.roles {
            assert!(roles.contains(r), "the token's role {r} is lost");
        }
        for r in &roles {
            assert!(perms.has_role(s, r));
        }
        for p in ["command:reboot", "command:deploy", "message:send", "x"] {
            if let Some(g) = perms.grant(s, p) {
                assert!(roles.contains(&g.role), "granted by a role not held: {g:?}");
            }
        }
    }
    decide_all(&SHIPPED_ABAC, &perms);
}

fn dlp(text: &str) {
    let policy = match DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), text) {
        Ok(p) => p,
        Err(e) => return check_file_error(&e, text),
    };
    let _ = (policy.rule_names().count(), policy.is_empty());
    let sample = "card 4111 1111 1111 1111, tel 138\u{200b}1234\u{ff15}678, mail a.b@example.com, \
                  AKIAIOSFODNN7EXAMPLE, 机密 confidential 110101199003074477";
    let head: String = text.chars().take(512).collect();
    for t in [sample, head.as_str(), ""] {
        for dir in [Direction::Ingress, Direction::Egress] {
            let out = policy.scan(t, dir);
            check_dlp_outcome(t, &out);
        }
        let line = moltgate::policy::dlp::scan_line_json(&policy, 1, t);
        serde_json::from_str::<serde_json::Value>(&line).expect("dlp scan output is JSON");
    }
}

fn identities(text: &str) {
    let path = Path::new("policies/identities.yaml");
    let ids = match Identities::from_yaml(path, text) {
        Ok(i) => i,
        Err(e) => return check_file_error(&e, text),
    };
    assert_eq!(ids.is_empty(), ids.len() == 0);
    // An independent reading of the same file: every account maps back to its person.
    // (Only where YAML gives plain strings: `5` or `0x10` read as a
    // `String` by the typed file, but as numbers into a JSON value.)
    let Ok(raw) = yaml::parse_str::<serde_json::Value>(path, text) else {
        return;
    };
    let people = raw.get("people").and_then(|p| p.as_object());
    for (person, accounts) in people.into_iter().flatten() {
        let Some(accounts) = accounts
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str()).collect::<Option<Vec<&str>>>())
        else {
            continue;
        };
        let listed = ids
            .accounts_of(person)
            .expect("a listed person has accounts");
        assert_eq!(listed, accounts.as_slice(), "accounts of {person}");
        for a in accounts {
            let (platform, user) = a.split_once(':').expect("a loaded account has a platform");
            assert_eq!(
                ids.person_of(platform, "", user),
                Some(person.as_str()),
                "account {a}"
            );
        }
    }
    let _ = ids.person_of("telegram", "T1", "555");
}

fn explain_request(text: &str) {
    let path = Path::new("request.json");
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
    let req = match explain::parse_request(path, text, now) {
        Ok(r) => r,
        Err(e) => return check_file_error(&e, text),
    };
    // `request_json` writes the request that `parse_request` reads back.
    let again = explain::request_json(&req);
    let back = explain::parse_request(path, &again, now)
        .unwrap_or_else(|e| panic!("request_json output does not parse: {e}\n{again}"));
    assert_eq!(
        back, req,
        "request_json → parse_request changed the request"
    );
    let x = explain::explain(&SHIPPED_ABAC, &SHIPPED_PERMISSIONS, req);
    let _ = explain::render_text(&x);
    serde_json::from_str::<serde_json::Value>(&explain::render_json(&x)).expect("JSON");
}
