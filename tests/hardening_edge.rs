//! Issue 10, items 1, 7, 8 and 9, against the running gateway:
//!
//! - 1: the client address comes from every `X-Forwarded-For` line of a
//!   trusted proxy, as one list walked from the right (a spoofed first line
//!   cannot pick the address), and from `Forwarded` (RFC 7239) when
//!   configured;
//! - 7: `per_ip` does not count verified platform webhooks (the platform's
//!   egress), but does count the API and every request that fails
//!   verification;
//! - 8: a weak HS JWT secret (empty, published, short) stops `run` and
//!   `check`, and a reload cannot bring one in; the shipped demo still starts;
//! - 9: the admin listener refuses a public address without a token, guards
//!   `/metrics` and `POST /reload` with it, limits reloads and refuses
//!   cross-site and DNS-rebound requests.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fake_api::FakeApi;
use common::platforms as p;
use common::{admin_raw, post, rt, Gateway, Setup, BIN, SECURITY_POLICY};
use moltgate::path::answer::SLOW_DOWN;
use serde_json::{json, Value};

const TG_PATH: &str = "/hooks/telegram/edge";

fn security(extra: &str) -> String {
    format!("{SECURITY_POLICY}{extra}")
}

/// The generic API and a Telegram route (replies inline within 5 s).
fn routes(fake: &FakeApi) -> String {
    format!(
        "  - {{ path: /v1/messages, platform: generic, upstream: assistant }}\n  - {{ path: {TG_PATH}, platform: telegram, upstream: assistant, deadline: 5s, api_base: \"{}\", secrets: {} }}\n",
        fake.base(),
        p::telegram::secrets()
    )
}

fn setup(fake: &FakeApi, security_extra: &str) -> Setup {
    Setup {
        routes: routes(fake),
        policies: vec![
            ("security_policy.yaml", security(security_extra)),
            ("abac.yaml", common::ALLOW_ALL_ABAC.into()),
        ],
        ..Default::default()
    }
}

/// A generic API message.
fn api_body(text: &str) -> String {
    json!({"sender": {"name": "Ada"}, "content": {"text": text}, "context": {"chat_type": "private"}})
        .to_string()
}

/// POSTs an API message with `token` and extra header lines (in order).
async fn api(gw: &Gateway, token: &str, lines: &[(&str, &str)]) -> (u16, Value, String) {
    let mut headers = vec![("authorization", format!("Bearer {token}"))];
    headers.extend(lines.iter().map(|(k, v)| (*k, v.to_string())));
    let resp = post(gw, "/v1/messages", &headers, api_body("hello")).await;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body, retry)
}

/// Delivers a Telegram update from user `from` (signed with the route's
/// secret token, or a guessed one), through a proxy naming `client`:
/// (status, the inline reply text or "").
async fn telegram(
    gw: &Gateway,
    update_id: u64,
    from: u64,
    client: Option<&str>,
    forged: bool,
) -> (u16, String) {
    let update = p::telegram::update(
        update_id,
        &from.to_string(),
        json!({"text": format!("m{update_id}")}),
    );
    let mut signed = p::telegram::seal(&update);
    if forged {
        for (k, v) in &mut signed.headers {
            if *k == "x-telegram-bot-api-secret-token" {
                *v = "guessed-secret-token".into();
            }
        }
    }
    if let Some(ip) = client {
        signed.headers.push(("x-forwarded-for", ip.to_string()));
    }
    let resp = post(gw, TG_PATH, &signed.headers, signed.body).await;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let reply = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, reply)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `moltgate args` in `cwd` with `env`, for at most 20 s (a gateway
/// that starts is killed then, and reported as `None`).
fn run_bounded(args: &[&str], cwd: Option<&Path>, env: &[(&str, &str)]) -> Option<Output> {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

/// Starts `moltgate run -c` on `setup`'s files after `edit(config text,
/// admin port)`, with `env`; waits until `/healthz` answers and the public
/// port accepts connections.
fn start_with(
    setup: &Setup,
    edit: impl Fn(String, u16) -> String,
    env: &[(&str, &str)],
) -> Gateway {
    for attempt in 1..=3 {
        let (dir, public, admin, path) = setup.write();
        let text = edit(std::fs::read_to_string(&path).unwrap(), admin);
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (out, sink) = (child.stderr.take().unwrap(), logs.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut gw = Gateway {
            dir,
            public,
            admin,
            child: Some(child),
            logs,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let exited = gw.child.as_mut().unwrap().try_wait().unwrap().is_some();
            let up = common::admin_get(admin, "/healthz").map(|(s, _)| s) == Some(200)
                && std::net::TcpStream::connect(("127.0.0.1", public)).is_ok();
            if up {
                return gw;
            }
            if exited || Instant::now() > deadline {
                eprintln!("start attempt {attempt} failed:\n{}", gw.log_text());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("the gateway did not start");
}

// ------------------------------------------------------------- item 1 ----

/// A trusted proxy (127.0.0.1) that appends its own `X-Forwarded-For` line
/// is honoured: the client's first line, whatever it claims, cannot pick
/// the address that the IP lists judge.
#[test]
fn every_xff_line_counts_and_a_spoofed_first_line_cannot_pick_the_address() {
    let fake = FakeApi::start();
    let gw = setup(
        &fake,
        "ip_whitelist: [10.0.0.0/8, 127.0.0.1/32, 198.51.100.0/24]\nip_blacklist: [198.51.100.0/24]\ntrusted_proxies: [127.0.0.1/32]\n",
    )
    .start();
    let token = gw.token("edge-ip", &[]);
    rt().block_on(async {
        let xff = "x-forwarded-for";
        // The proxy's line names a deny-listed client: refused, whatever the first line says.
        let (s, b, _) = api(&gw, &token, &[(xff, "10.1.2.3"), (xff, "198.51.100.7")]).await;
        assert_eq!((s, b["error"].as_str()), (403, Some("blacklist")), "{b}");
        // The proxy's line names a client outside the allow list: a spoofed
        // allowed address on the first line does not help.
        let (s, b, _) = api(&gw, &token, &[(xff, "10.1.2.3"), (xff, "192.0.2.1")]).await;
        assert_eq!(
            (s, b["error"].as_str()),
            (403, Some("not_whitelisted")),
            "{b}"
        );
        // The proxy's line names an allowed client: a deny-listed first line does not frame it.
        let (s, b, _) = api(&gw, &token, &[(xff, "198.51.100.7"), (xff, "10.1.2.3")]).await;
        assert_eq!(s, 200, "{b}");
        // Two trusted hops, each on its own line, after the client.
        let (s, b, _) = api(
            &gw,
            &token,
            &[
                (xff, "10.9.9.9"),
                (xff, "198.51.100.7, 127.0.0.1"),
                (xff, "127.0.0.1"),
            ],
        )
        .await;
        assert_eq!((s, b["error"].as_str()), (403, Some("blacklist")), "{b}");
    });
    let refused = gw.wait_audits(3, |a| a["status"] == 403).len();
    assert_eq!(refused, 3);
}

/// `Forwarded` (RFC 7239) is read when `client_ip_headers` names it, with
/// quoted IPv6 and ports, every line, and precedence over
/// `X-Forwarded-For`; by default it is ignored, so a client behind a proxy
/// that writes only `X-Forwarded-For` cannot pick its address with it.
#[test]
fn forwarded_header_is_honoured_only_when_configured() {
    let fake = FakeApi::start();
    let lists =
        "ip_blacklist: [198.51.100.0/24, \"2001:db8:bad::/48\"]\ntrusted_proxies: [127.0.0.1/32]\n";
    let gw = setup(
        &fake,
        &format!("{lists}client_ip_headers: [forwarded, x-forwarded-for]\n"),
    )
    .start();
    let token = gw.token("edge-fwd", &[]);
    let fwd = "forwarded";
    let xff = "x-forwarded-for";
    rt().block_on(async {
        let (s, b, _) = api(
            &gw,
            &token,
            &[(fwd, "for=\"[2001:db8:bad::1]:4711\";proto=https")],
        )
        .await;
        assert_eq!((s, b["error"].as_str()), (403, Some("blacklist")), "{b}");
        let (s, b, _) = api(
            &gw,
            &token,
            &[
                (fwd, "for=10.1.2.3"),
                (fwd, "for=198.51.100.9;by=127.0.0.1"),
            ],
        )
        .await;
        assert_eq!((s, b["error"].as_str()), (403, Some("blacklist")), "{b}");
        let (s, b, _) = api(&gw, &token, &[(fwd, "for=198.51.100.9, for=10.1.2.3")]).await;
        assert_eq!(s, 200, "{b}");
        // Forwarded present: it decides, X-Forwarded-For is not read.
        let (s, b, _) = api(&gw, &token, &[(fwd, "for=10.1.2.3"), (xff, "198.51.100.7")]).await;
        assert_eq!(s, 200, "{b}");
        // Absent: X-Forwarded-For is.
        let (s, b, _) = api(&gw, &token, &[(xff, "198.51.100.7")]).await;
        assert_eq!(s, 403, "{b}");
    });
    // The default reads X-Forwarded-For only.
    std::fs::write(gw.policies().join("security_policy.yaml"), security(lists)).unwrap();
    let (s, body) = common::admin_request(gw.admin, "POST", "/reload").unwrap();
    assert_eq!(s, 200, "{body}");
    rt().block_on(async {
        let (s, b, _) = api(&gw, &token, &[(fwd, "for=198.51.100.7")]).await;
        assert_eq!(s, 200, "Forwarded is not read by default: {b}");
        let (s, b, _) = api(&gw, &token, &[(fwd, "for=10.1.2.3"), (xff, "198.51.100.7")]).await;
        assert_eq!((s, b["error"].as_str()), (403, Some("blacklist")), "{b}");
    });
}

// ------------------------------------------------------------- item 7 ----

/// N+1 platform users behind one egress address all get through with
/// `per_ip` N: a webhook is limited by platform user (and tenant, route,
/// global), and the per-user limit still bites.
#[test]
fn webhook_per_ip_does_not_count_platform_users() {
    const N: u64 = 3;
    let fake = FakeApi::start();
    let gw = setup(
        &fake,
        &format!("rate_limiting:\n  per_ip: {{ window: 60s, max_requests: {N} }}\n  per_user: {{ window: 60s, max_requests: 2 }}\n"),
    )
    .start();
    rt().block_on(async {
        for user in 0..=N {
            let (s, reply) = telegram(&gw, 71_000 + user, 810_000 + user, None, false).await;
            assert_eq!(s, 200);
            assert!(
                reply.starts_with(&format!("echo: m{}", 71_000 + user)),
                "user {user}: {reply:?}"
            );
        }
        // The first user's second message passes, the third is limited by per_user.
        let (_, reply) = telegram(&gw, 71_100, 810_000, None, false).await;
        assert!(reply.starts_with("echo: m71100"), "{reply:?}");
        let (s, reply) = telegram(&gw, 71_101, 810_000, None, false).await;
        assert_eq!((s, reply.as_str()), (200, SLOW_DOWN));
    });
    let limited = gw.wait_audit(|a| a["decision"] == "rate_limited");
    assert_eq!(limited["rules"], "rate:per_user", "{limited}");
    assert_eq!(
        gw.audit_lines()
            .iter()
            .filter(|a| a["decision"] == "rate_limited")
            .count(),
        1
    );
}

/// `per_ip` still applies to the API, and to requests that fail
/// verification on any route: once an address has spent it on failures,
/// its further failures get 429, and on the API its valid tokens too (a
/// guesser learns nothing); a platform's verified messages from that
/// address still pass.
#[test]
fn failed_verifications_spend_per_ip_without_silencing_the_platform() {
    let fake = FakeApi::start();
    let gw = setup(
        &fake,
        "rate_limiting:\n  per_ip: { window: 60s, max_requests: 3 }\ntrusted_proxies: [127.0.0.1/32]\n",
    )
    .start();
    let xff = "x-forwarded-for";
    let tokens: Vec<String> = (0..4)
        .map(|i| gw.token(&format!("edge-rate-{i}"), &[]))
        .collect();
    rt().block_on(async {
        // The API: four users behind one address share per_ip.
        for t in &tokens[..3] {
            assert_eq!(api(&gw, t, &[(xff, "192.0.2.20")]).await.0, 200);
        }
        let (s, b, retry) = api(&gw, &tokens[3], &[(xff, "192.0.2.20")]).await;
        assert_eq!((s, b["error"].as_str()), (429, Some("rate_limited")), "{b}");
        assert!(!retry.is_empty());
        // Token guessing spends per_ip; past it even a valid token gets 429.
        for _ in 0..3 {
            let (s, b, _) = api(&gw, "not.a.token", &[(xff, "192.0.2.30")]).await;
            assert_eq!(s, 401, "{b}");
        }
        let (s, b, retry) = api(&gw, &tokens[0], &[(xff, "192.0.2.30")]).await;
        assert_eq!((s, b["error"].as_str()), (429, Some("rate_limited")), "{b}");
        assert!((1..=61).contains(&retry.parse::<u64>().unwrap()), "{retry}");
        // A webhook: forged deliveries from the platform's address are limited…
        for i in 0..3 {
            assert_eq!(
                telegram(&gw, 72_000 + i, 820_000, Some("203.0.113.5"), true)
                    .await
                    .0,
                401
            );
        }
        assert_eq!(
            telegram(&gw, 72_010, 820_000, Some("203.0.113.5"), true)
                .await
                .0,
            429
        );
        // …and its verified messages are not: five users, one address.
        for user in 0..5 {
            let (s, reply) = telegram(
                &gw,
                72_100 + user,
                820_100 + user,
                Some("203.0.113.5"),
                false,
            )
            .await;
            assert_eq!(s, 200);
            assert!(reply.starts_with("echo: "), "user {user}: {reply:?}");
        }
    });
    let limited = gw.wait_audits(3, |a| a["decision"] == "rate_limited");
    assert_eq!(limited.len(), 3, "{limited:?}");
    assert!(
        limited.iter().all(|a| a["rules"] == "rate:per_ip"),
        "{limited:?}"
    );
}

// ------------------------------------------------------------- item 8 ----

/// `check` and `run` refuse a weak HS secret outside the demo, with the
/// located, actionable message.
#[test]
fn weak_jwt_secrets_refuse_start_and_check() {
    let jwt = |secret: &str| {
        format!("jwt_validation:\n  issuer: auth.example.com\n  algorithms: [HS256]\n  secret: {secret}\n")
    };
    for (secret, message) in [
        (
            "s3cret-word",
            "security_policy.yaml:4:3: jwt_validation.secret is 11 bytes; HS256 needs at least 32 random bytes (generate one with: openssl rand -base64 48)",
        ),
        (
            "\"${MOLTGATE_JWT_SECRET:-demo-only-secret-change-me}\"",
            "security_policy.yaml:4:3: jwt_validation.secret is a published default that anyone can sign tokens with; set MOLTGATE_JWT_SECRET",
        ),
        ("\"\"", "security_policy.yaml:4:3: jwt_validation.secret is empty; HS256 needs at least 32"),
    ] {
        let (_dir, _, _, config) = Setup {
            policies: vec![("security_policy.yaml", jwt(secret))],
            ..Default::default()
        }
        .write();
        let config = config.to_str().unwrap();
        let check = run_bounded(&["check", "-c", config], None, &[]).unwrap();
        assert!(!check.status.success(), "{secret}");
        assert!(stderr(&check).contains(message), "{secret}: {}", stderr(&check));
        let run = run_bounded(&["run", "-c", config], None, &[]).expect("the gateway must refuse to start");
        assert!(!run.status.success());
        assert!(stderr(&run).contains(message), "{secret}: {}", stderr(&run));
        assert!(!stderr(&run).contains("demo-only-secret"), "the secret is never echoed");
    }
}

/// README's first command runs `moltgate run` in the repository: the
/// shipped `moltgate.yaml` (or the embedded copy) with the shipped policies
/// starts with their published secret. Any edit of the config (or a public
/// address) makes it a deployment, which needs `MOLTGATE_JWT_SECRET`.
#[test]
fn shipped_demo_starts_with_its_published_secret_and_an_edited_copy_does_not() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::create_dir(dir.join("policies")).unwrap();
    for f in std::fs::read_dir(root.join("policies")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join("policies").join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(root.join("moltgate.yaml"), dir.join("moltgate.yaml")).unwrap();
    let (public, admin) = (common::free_port(), common::free_port());
    let (public_addr, admin_addr) = (format!("127.0.0.1:{public}"), format!("127.0.0.1:{admin}"));
    let env = [
        ("MOLTGATE_PUBLIC", public_addr.as_str()),
        ("MOLTGATE_ADMIN", admin_addr.as_str()),
    ];
    let ok = run_bounded(&["check"], Some(dir), &env).unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));

    // It starts and serves a token minted with the published secret.
    let mut child = Command::new(BIN)
        .arg("run")
        .current_dir(dir)
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (out, sink) = (child.stderr.take().unwrap(), logs.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let gw = Gateway {
        dir: tempfile::tempdir().unwrap(),
        public,
        admin,
        child: Some(child),
        logs,
    };
    gw.wait_admin("/healthz", 200);
    let token = Command::new(BIN)
        .args(["token", "--sub", "alice"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(token.status.success(), "{}", stderr(&token));
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let resp = rt().block_on(async {
        let client = common::client_for(&dir.join("certs/dev/ca.crt"), true);
        let resp = client
            .post(format!("https://localhost:{public}/v1/messages"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(api_body("hello demo"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    });
    assert_eq!(resp.0, 200, "{}", resp.1);
    assert!(
        gw.log_text()
            .contains("the demo config accepts this JWT secret"),
        "{}",
        gw.log_text()
    );
    drop(gw);

    // The embedded copy is the demo too.
    std::fs::rename(dir.join("moltgate.yaml"), dir.join("shipped.yaml")).unwrap();
    let ok = run_bounded(&["check"], Some(dir), &env).unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));

    // An edited copy, or the demo on a public address, is not.
    let edited = std::fs::read_to_string(dir.join("shipped.yaml")).unwrap() + "# edited\n";
    std::fs::write(dir.join("moltgate.yaml"), edited).unwrap();
    let refused = run_bounded(&["check"], Some(dir), &env).unwrap();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("security_policy.yaml:"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("is a published default"),
        "{}",
        stderr(&refused)
    );
    let refused = run_bounded(&["run"], Some(dir), &env).expect("an edited demo must not start");
    assert!(
        stderr(&refused).contains("is a published default"),
        "{}",
        stderr(&refused)
    );
    let strong = [env[0], env[1], ("MOLTGATE_JWT_SECRET", common::JWT_SECRET)];
    let ok = run_bounded(&["check"], Some(dir), &strong).unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    std::fs::rename(dir.join("shipped.yaml"), dir.join("moltgate.yaml")).unwrap();
    let public_env = [("MOLTGATE_PUBLIC", "0.0.0.0:8443"), env[1]];
    let refused = run_bounded(&["check"], Some(dir), &public_env).unwrap();
    assert!(
        stderr(&refused).contains("is a published default"),
        "{}",
        stderr(&refused)
    );
}

/// A reload never weakens the secret of a gateway that started strong.
#[test]
fn reload_cannot_weaken_the_jwt_secret() {
    let gw = Setup::default().start();
    let token = gw.token("edge-reload", &[]);
    let weak = SECURITY_POLICY.replace(common::JWT_SECRET, "short-secret");
    std::fs::write(gw.policies().join("security_policy.yaml"), weak).unwrap();
    let (s, body) = common::admin_request(gw.admin, "POST", "/reload").unwrap();
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("jwt_validation.secret is 12 bytes"), "{body}");
    assert!(!body.contains("short-secret"));
    let (s, _, _) = rt().block_on(api(&gw, &token, &[]));
    assert_eq!(s, 200, "the old set keeps serving");
}

// ------------------------------------------------------------- item 9 ----

/// Without a token, a non-loopback admin address is refused by `check` and `run`.
#[test]
fn admin_without_token_refuses_a_public_address() {
    for admin_line in [
        "admin: {{ address: 0.0.0.0:{port} }}",
        "admin: {{ address: 0.0.0.0:{port}, token: \"${{MOLTGATE_EDGE_UNSET_TOKEN:-}}\" }}",
    ] {
        let (_dir, _, admin, config) = Setup::default().write();
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("admin: {{ address: 127.0.0.1:{admin} }}"),
            &admin_line
                .replace("{port}", &admin.to_string())
                .replace("{{", "{")
                .replace("}}", "}"),
        );
        std::fs::write(&config, text).unwrap();
        let config = config.to_str().unwrap();
        let message = format!("listen.admin.address '0.0.0.0:{admin}' is not a loopback address and listen.admin.token is not set");
        let check = run_bounded(&["check", "-c", config], None, &[]).unwrap();
        assert!(!check.status.success());
        assert!(stderr(&check).contains(&message), "{}", stderr(&check));
        let run = run_bounded(&["run", "-c", config], None, &[]).expect("must refuse to start");
        assert!(!run.status.success());
        assert!(stderr(&run).contains(&message), "{}", stderr(&run));
    }
}

/// With a token (from the environment), the admin listener may bind any
/// address; `/metrics` and `POST /reload` need the bearer token,
/// `/healthz` and `/readyz` stay open, reloads are limited to one per
/// second, and the token appears in no log line and no metric.
#[test]
fn admin_token_guards_metrics_and_reload() {
    const TOKEN: &str = "adm-7f3c9a1e5b2d4f6a8c0e1b3d5f7a9c2e";
    let gw = start_with(
        &Setup::default(),
        |text, admin| {
            text.replace(
                &format!("admin: {{ address: 127.0.0.1:{admin} }}"),
                &format!("admin: {{ address: 0.0.0.0:{admin}, token: \"${{MOLTGATE_EDGE_ADMIN_TOKEN}}\" }}"),
            )
        },
        &[("MOLTGATE_EDGE_ADMIN_TOKEN", TOKEN)],
    );
    let port = gw.admin;
    let bearer = format!("Bearer {TOKEN}");
    let req = |method: &str, path: &str, headers: &[(&str, &str)]| {
        admin_raw(port, method, path, headers).unwrap()
    };
    for path in ["/healthz", "/readyz"] {
        assert_eq!(req("GET", path, &[]).0, 200, "{path} stays open");
    }
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789abcdef"),
        Some("Basic YWRtaW46YWRtaW4="),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let (s, head, body) = req("GET", "/metrics", &headers);
        assert_eq!(s, 401, "{auth:?}: {body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let mut json = headers.clone();
        json.push(("content-type", "application/json"));
        assert_eq!(req("POST", "/reload", &json).0, 401, "{auth:?}");
    }
    let (s, _, metrics) = req("GET", "/metrics", &[("authorization", &bearer)]);
    assert_eq!(s, 200);
    assert!(
        metrics.contains("moltgate_requests_total") || metrics.contains("moltgate_"),
        "{metrics}"
    );
    // The token is enough for a reload (no content type needed), once per second.
    let (s, _, body) = req("POST", "/reload", &[("authorization", &bearer)]);
    assert_eq!(s, 200, "{body}");
    let (s, head, body) = req("POST", "/reload", &[("authorization", &bearer)]);
    assert_eq!(s, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(req("POST", "/reload", &[("authorization", &bearer)]).0, 200);
    let (_, _, metrics) = req("GET", "/metrics", &[("authorization", &bearer)]);
    assert!(!metrics.contains(TOKEN));
    gw.wait_log("admin request refused");
    assert!(
        !gw.log_text().contains(TOKEN),
        "the token never reaches the logs"
    );
    assert!(!gw.log_text().contains("7f3c9a1e5b2d4f6a"));
}

/// Without a token (loopback only), `POST /reload` refuses what a web page
/// could send cross-site (no content type, form, multipart, plain text)
/// and a `Host` a page could rebind to 127.0.0.1; `application/json` from
/// a local tool reloads, at most once per second.
#[test]
fn tokenless_reload_refuses_cross_site_and_rebinding() {
    let gw = Setup::default().start();
    let port = gw.admin;
    let req = |method: &str, path: &str, headers: &[(&str, &str)]| {
        admin_raw(port, method, path, headers).unwrap()
    };
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let (s, _, body) = req("POST", "/reload", &headers);
        assert_eq!(s, 403, "{ct:?}: {body}");
        assert!(body.contains("cross_site_refused"), "{body}");
    }
    let evil = format!("rebind.example:{port}");
    let (s, _, body) = req(
        "POST",
        "/reload",
        &[("host", &evil), ("content-type", "application/json")],
    );
    assert_eq!((s, body.contains("host_not_local")), (403, true), "{body}");
    assert_eq!(req("GET", "/metrics", &[("host", &evil)]).0, 403);
    assert_eq!(req("GET", "/healthz", &[("host", &evil)]).0, 200);
    assert_eq!(
        req("GET", "/metrics", &[("host", &format!("127.0.0.1:{port}"))]).0,
        200
    );
    let json = [("content-type", "application/json")];
    let (s, _, body) = req("POST", "/reload", &json);
    assert_eq!(s, 200, "{body}");
    let (s, head, _) = req("POST", "/reload", &json);
    assert_eq!(s, 429);
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // Refused requests do not use up the budget.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(req("POST", "/reload", &[]).0, 403);
    assert_eq!(req("POST", "/reload", &json).0, 200);
}
