//! The backbone against the real binary: TLS 1.3 only, the generic API, JWT
//! refusals, hostile bodies, failover across real `moltgate assistant`
//! nodes, 503 when none is up, `moltgate check`, and shutdown signals.

mod common;

use common::rt;

use std::sync::Arc;
use std::time::Duration;

use common::{raw_tls, AssistantNode, Setup};
use serde_json::json;

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

fn message(text: &str) -> String {
    json!({"platform":"test","sender":{"id":"x","name":"Alice"},"content":{"text":text,"attachments":[]},"timestamp":1700000000,"context":{"room_id":"r1","thread_id":"t1","chat_type":"private"}}).to_string()
}

/// TLS 1.2 fails the handshake; TLS 1.3 is served over HTTP/2 and HTTP/1.1.
#[test]
fn tls13_only_over_h2_and_h1() {
    let gw = Setup::default().start();
    let rt = rt();
    rt.block_on(async {
        // A TLS 1.2-only client (rustls) must fail the handshake.
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(gw.ca()).unwrap();
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let tls12 = rustls::ClientConfig::builder_with_provider(moltgate::tls::client_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.public))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let err = tokio_rustls::TlsConnector::from(Arc::new(tls12))
            .connect(name.clone(), tcp)
            .await
            .expect_err("TLS 1.2 handshake must fail");
        assert!(err.to_string().to_lowercase().contains("protocol"), "{err}");

        // A TLS 1.3 client negotiates fine.
        let tls13 = rustls::ClientConfig::builder_with_provider(moltgate::tls::client_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.public))
            .await
            .unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls13))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );

        let token = gw.token("alice", &[]);
        for (http1, version) in [
            (false, reqwest::Version::HTTP_2),
            (true, reqwest::Version::HTTP_11),
        ] {
            let resp = send(
                &gw.client(http1),
                &gw.url("/v1/messages"),
                Some(&token),
                message("hello"),
            )
            .await;
            assert_eq!(resp.version(), version);
            assert_eq!(resp.status(), 200);
        }
    });
}

/// A generic message is answered by the embedded assistant, with an audit line.
#[test]
fn generic_message_answered_by_embedded_assistant() {
    let gw = Setup::default().start();
    let token = gw.token(
        "alice",
        &["roles=admin,user", "tenant=acme", "device_type=mobile"],
    );
    rt().block_on(async {
        let resp = send(&gw.client(false), &gw.url("/v1/messages"), Some(&token), message("hello moltgate")).await;
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["replies"], json!([{"text": "echo: hello moltgate (turn 1)"}]));
        let id = body["envelope_id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        let audit = gw.wait_audit(|a| a["envelope_id"] == id.as_str());
        assert_eq!(audit["decision"], "answered");
        assert_eq!(audit["sender_id"], "alice");
        assert_eq!(audit["thread_id"], "t1");
        assert_eq!(audit["ai_response_code"], 0);
        assert_eq!(audit["service"], "moltgate");
        assert!(audit["processing_time_ms"].as_f64().is_some());
        assert!(audit["timestamp"].is_string() && audit["level"] == "INFO");
        // Message text never reaches the logs.
        assert!(!gw.log_text().contains("hello moltgate"));
        let metrics = gw.metrics();
        assert!(metrics.contains(r#"moltgate_requests_total{outcome="answered",platform="generic",route="/v1/messages"} 1"#), "{metrics}");
        assert!(metrics.contains("moltgate_message_latency_seconds_count{platform=\"generic\"} 1"), "{metrics}");
    });
}

/// Missing, expired, wrong-issuer (or none), wrong-audience (or none) and
/// forged tokens get 401 with WWW-Authenticate.
#[test]
fn bad_jwts_get_401() {
    let gw = Setup::default().start();
    let now = chrono::Utc::now().timestamp();
    let mint = |claims: serde_json::Value, secret: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let expired = mint(
        json!({"sub":"a","iss":"auth.example.com","aud":"moltbot.api","exp":now-3600}),
        common::JWT_SECRET.as_bytes(),
    );
    let wrong_iss = mint(
        json!({"sub":"a","iss":"evil.example.com","aud":"moltbot.api","exp":now+3600}),
        common::JWT_SECRET.as_bytes(),
    );
    let forged = mint(
        json!({"sub":"a","iss":"auth.example.com","aud":"moltbot.api","exp":now+3600}),
        b"guess",
    );
    // Found by the jwt_verify fuzz target: jsonwebtoken checks iss and aud
    // only when present as strings, so these passed while an issuer and an
    // audience were configured.
    let signed = |claims| mint(claims, common::JWT_SECRET.as_bytes());
    let no_iss = signed(json!({"sub":"a","aud":"moltbot.api","exp":now+3600}));
    let numeric_iss = signed(json!({"sub":"a","iss":7,"aud":"moltbot.api","exp":now+3600}));
    let no_aud = signed(json!({"sub":"a","iss":"auth.example.com","exp":now+3600}));
    let numeric_aud = signed(json!({"sub":"a","iss":"auth.example.com","aud":7,"exp":now+3600}));
    rt().block_on(async {
        let c = gw.client(false);
        for (token, description) in [
            (None, None),
            (Some(expired.as_str()), Some("token expired")),
            (Some(wrong_iss.as_str()), Some("wrong issuer")),
            (Some(no_iss.as_str()), Some("wrong issuer")),
            (Some(numeric_iss.as_str()), Some("wrong issuer")),
            (Some(no_aud.as_str()), Some("wrong audience")),
            (Some(numeric_aud.as_str()), Some("wrong audience")),
            (Some(forged.as_str()), Some("invalid signature")),
            (Some("garbage"), Some("malformed token")),
        ] {
            let resp = send(&c, &gw.url("/v1/messages"), token, message("hi")).await;
            assert_eq!(resp.status(), 401, "{description:?}");
            let www = resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(www.starts_with("Bearer realm=\"moltgate\""), "{www}");
            if let Some(d) = description {
                assert!(www.contains(&format!("error_description=\"{d}\"")), "{www}");
            }
        }
    });
    let metrics = gw.metrics();
    assert!(
        metrics
            .contains(r#"moltgate_rejections_total{reason="jwt_expired",route="/v1/messages"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"moltgate_rejections_total{reason="jwt_issuer",route="/v1/messages"} 3"#),
        "{metrics}"
    );
    // No token ever reached the log.
    assert!(!gw.log_text().contains(&forged));
}

/// Malformed JSON is 400, oversize is 413 (declared or streamed), unknown
/// path 404, wrong method 405; none reaches the assistant.
#[test]
fn hostile_bodies_and_paths() {
    let gw = Setup {
        routes:
            "  - { path: /v1/messages, platform: generic, upstream: assistant, body_limit: 4096 }\n"
                .into(),
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        let c = gw.client(false);
        let url = gw.url("/v1/messages");
        for bad in [
            "{",
            "[1,2]",
            "{\"content\":{}}",
            "\u{0}\u{1}",
            "{\"content\":{\"text\":1}}",
        ] {
            let resp = send(&c, &url, Some(&token), bad.to_string()).await;
            assert_eq!(resp.status(), 400, "{bad:?}");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "malformed_json");
        }
        // Declared too large: refused before the body is read.
        let big = message(&"x".repeat(5000));
        assert_eq!(
            send(&c, &url, Some(&token), big.clone()).await.status(),
            413
        );
        // Streamed (chunked, no length): refused once past the limit, never truncated.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
            .into_bytes()
            .chunks(512)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let resp = c
            .post(&url)
            .bearer_auth(&token)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        // Just under the limit is fine.
        assert_eq!(
            send(&c, &url, Some(&token), message(&"y".repeat(3500)))
                .await
                .status(),
            200
        );
        assert_eq!(c.get(gw.url("/nope")).send().await.unwrap().status(), 404);
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "POST");
    });
    let metrics = gw.metrics();
    assert!(
        metrics.contains(
            r#"moltgate_rejections_total{reason="malformed_json",route="/v1/messages"} 5"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"moltgate_rejections_total{reason="body_too_large",route="/v1/messages"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"moltgate_rejections_total{reason="unknown_path",route="unmatched"} 1"#),
        "{metrics}"
    );
    // Only the one good message was answered.
    assert!(metrics.contains(r#"moltgate_requests_total{outcome="answered",platform="generic",route="/v1/messages"} 1"#), "{metrics}");
}

/// A client that stops sending its body gets 408 after the body timeout.
#[test]
fn slow_body_times_out() {
    let gw = Setup {
        extra: "limits: { body_timeout: 1s }\n".into(),
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = raw_tls(&gw).await;
        let head = format!("POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{\"content\":");
        tls.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(900));
    });
}

/// A client that writes its whole oversized body before reading still gets
/// the 413: the gateway discards the unread body before closing, so the
/// close is not a TCP reset that would destroy the answer in flight.
#[test]
fn refused_body_is_drained_so_the_413_arrives() {
    let gw = Setup {
        routes:
            "  - { path: /v1/messages, platform: generic, upstream: assistant, body_limit: 4096 }\n"
                .into(),
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for round in 0..5 {
            let mut tls = raw_tls(&gw).await;
            let body = vec![b'x'; 900_000];
            let head = format!(
                "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.write_all(&body).await.unwrap();
            tls.flush().await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer))
                .await
                .expect("the gateway closes after the 413");
            let text = String::from_utf8_lossy(&answer);
            assert!(read.is_ok(), "round {round}: {read:?}, got {text:?}");
            assert!(text.starts_with("HTTP/1.1 413"), "round {round}: {text}");
            assert!(text.contains("body_too_large"), "{text}");
        }
    });
}

/// Two external assistant nodes; one is killed; every message is still answered.
#[test]
fn failover_between_assistant_nodes() {
    let a = AssistantNode::start();
    let mut b = AssistantNode::start();
    let gw = Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"], balance: round_robin, timeout: 5s, accept_timeout: 2s, health_check: {{ interval: 1s, timeout: 500ms }} }}\n",
            a.port, b.port
        ),
        extra: "context: { turns: 100 }\n".into(),
        ..Default::default()
    }
    .start();
    gw.wait_admin("/readyz", 200);
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        let c = gw.client(false);
        for i in 0..6 {
            let resp = send(&c, &gw.url("/v1/messages"), Some(&token), message(&format!("m{i}"))).await;
            assert_eq!(resp.status(), 200);
        }
        let metrics = gw.metrics();
        for port in [a.port, b.port] {
            assert!(
                metrics.contains(&format!("moltgate_upstream_attempts_total{{node=\"127.0.0.1:{port}\",result=\"accepted\",upstream=\"assistant\"}} 3")),
                "round robin spreads: {metrics}"
            );
        }
        b.kill();
        for i in 0..10 {
            let resp = send(&c, &gw.url("/v1/messages"), Some(&token), message(&format!("after {i}"))).await;
            assert_eq!(resp.status(), 200, "message {i} after the kill");
            let body: serde_json::Value = resp.json().await.unwrap();
            // The context lives in the gateway, so the conversation goes on
            // on the surviving node: 6 earlier turns, then these.
            assert_eq!(body["replies"][0]["text"], format!("echo: after {i} (turn {})", 7 + i));
        }
        let metrics = gw.metrics();
        assert!(
            metrics.contains(&format!("moltgate_upstream_node_healthy{{node=\"127.0.0.1:{}\",upstream=\"assistant\"}} 0", b.port)),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("moltgate_upstream_node_healthy{{node=\"127.0.0.1:{}\",upstream=\"assistant\"}} 1", a.port)),
            "{metrics}"
        );
    });
}

/// With no node up, the answer is 503 with Retry-After, and /readyz says not ready.
#[test]
fn no_node_up_is_503_with_retry_after() {
    let dead = common::free_port();
    let gw = Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{dead}\"], timeout: 2s, accept_timeout: 1s, retry_after: 7, health_check: {{ interval: 1s, timeout: 300ms }} }}\n"
        ),
        ..Default::default()
    }
    .start();
    let token = gw.token("alice", &[]);
    rt().block_on(async {
        let c = gw.client(false);
        for _ in 0..2 {
            let resp = send(
                &c,
                &gw.url("/v1/messages"),
                Some(&token),
                message("anyone?"),
            )
            .await;
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "7");
        }
    });
    gw.wait_admin("/readyz", 503);
    let audit = gw.wait_audit(|a| a["decision"] == "unavailable");
    assert_eq!(audit["ai_response_code"], 14);
}

/// `moltgate check` passes a good config and names file:line:col on a broken one.
#[test]
fn check_names_file_line_col() {
    let (dir, _, _, path) = Setup::default().write();
    let ok = std::process::Command::new(common::BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("ok: "));

    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("policies: policies/", "polices: policies/");
    std::fs::write(&path, text).unwrap();
    let bad = std::process::Command::new(common::BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("moltgate.yaml:4:1: unknown key 'polices' (did you mean 'policies'?)"),
        "{err}"
    );

    // A broken policy file is caught too.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("polices: policies/", "policies: policies/");
    std::fs::write(&path, text).unwrap();
    std::fs::write(
        dir.path().join("policies/security_policy.yaml"),
        "jwt_validation:\n  issuer: x\n  leewy: 5\n",
    )
    .unwrap();
    let bad = std::process::Command::new(common::BIN)
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("security_policy.yaml:3:3: unknown key 'leewy' (did you mean 'leeway'?)"),
        "{err}"
    );
}

/// SIGTERM stops gracefully (exit 0); SIGINT stops fast.
#[test]
fn signals_stop_the_gateway() {
    let mut gw = Setup::default().start();
    let status = gw.signal("TERM");
    assert!(status.success(), "{status:?}");
    gw.wait_log("graceful shutdown");
    let mut gw = Setup::default().start();
    let started = std::time::Instant::now();
    let status = gw.signal("INT");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.wait_log("fast shutdown");
}

/// `moltgate token` refuses without an HS secret.
#[test]
fn token_refuses_without_hs_secret() {
    let (_dir, _, _, path) = Setup {
        policies: vec![(
            "security_policy.yaml",
            "jwt_validation: { issuer: x }\n".into(),
        )],
        ..Default::default()
    }
    .write();
    let out = std::process::Command::new(common::BIN)
        .args(["token", "-c"])
        .arg(&path)
        .args(["--sub", "alice"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no HS secret"));
}
