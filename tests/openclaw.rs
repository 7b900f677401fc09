//! The real OpenClaw gateway (npm `openclaw` 2026.9.6, installed by
//! scripts/openclaw.sh) with a real WebSocket client, directly (no moltgate
//! in between): the ground truth that the passthrough tests stand on. Its
//! model is the fake OpenAI-compatible server of tests/common/fake_openai.rs.
//!
//! One gateway takes about 1.3 GiB and 8-25 s to start, so this binary runs
//! one, in one test, in steps: token mode first, then the same process
//! switched to trusted-proxy mode.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::fake_openai::{FakeOpenAi, PHONE_TEXT};
use common::openclaw::{self as oc, Auth, Client, Connect, Device, OpenClaw, Refused, USER_HEADER};

/// The address a trusted proxy reports for its client (TEST-NET-3).
const CLIENT_IP: &str = "203.0.113.7";

#[test]
fn real_openclaw_token_and_trusted_proxy_modes() {
    let t0 = std::time::Instant::now();
    let step = |name: &str| eprintln!("[{:>5.1}s] {name}", t0.elapsed().as_secs_f64());
    let model = FakeOpenAi::start();
    let mut gw = OpenClaw::start(&model.base_url(), Auth::Token);
    step("OpenClaw started (token mode)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    rt.block_on(token_mode_turn(&gw, &model));
    rt.block_on(forwarded_headers_refused_in_token_mode(&gw));
    rt.block_on(compression_not_negotiated(&gw));
    step("token-mode checks done");

    gw.set_auth(Auth::TrustedProxy {
        users: vec!["alice".into()],
    });
    step("restarted in trusted-proxy mode");
    rt.block_on(trusted_proxy_turn(&gw, &model));
    rt.block_on(trusted_proxy_needs_attribution_and_identity(&gw));
    step("trusted-proxy checks done");

    // The identity header decides who the client is: granting a second user
    // (hot-reloaded, no restart) lets that user chat.
    gw.set_auth(Auth::TrustedProxy {
        users: vec!["alice".into(), "mallory".into()],
    });
    step("identityScopes hot-reloaded");
    rt.block_on(async {
        let headers = [(USER_HEADER, "mallory"), ("x-forwarded-for", CLIENT_IP)];
        let ws = oc::open(&gw.url(), &headers).await.expect("upgrade");
        let mut c = Client::handshake(ws, &Connect::trusted_proxy())
            .await
            .expect("connect");
        let turn = c
            .chat_send("proxied-mallory", "hello again")
            .await
            .unwrap_or_else(|e| panic!("chat.send: {e}\n{}", gw.log_text()));
        assert_eq!(turn.final_text().as_deref(), Some(PHONE_TEXT));
        c.close().await;
    });
    step("second user's turn done");
    drop(gw);
    step("OpenClaw stopped");
}

/// Prints a turn's frames (visible with `--nocapture` or on failure).
fn show(label: &str, sent: &[String], turn_frames: &[String]) {
    eprintln!("--- {label}: sent");
    sent.iter().for_each(|f| eprintln!(">> {f}"));
    eprintln!("--- {label}: received during the turn");
    turn_frames.iter().for_each(|f| eprintln!("<< {f}"));
}

/// Token mode: the challenge, a signed `connect`, and one `chat.send` whose
/// answer streams from the fake model with the exact text in every field.
async fn token_mode_turn(gw: &OpenClaw, model: &FakeOpenAi) {
    let ws = oc::open(&gw.url(), &[]).await.expect("upgrade");
    let mut c = Client::handshake(ws, &Connect::token())
        .await
        .unwrap_or_else(|e| panic!("token-mode connect: {e}\n{}", gw.log_text()));
    assert!(c.challenge["nonce"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(c.challenge["ts"].as_u64().is_some());
    assert_eq!(c.hello["type"], "hello-ok");
    assert_eq!(c.hello["protocol"], 4);
    assert_eq!(c.hello["auth"]["role"], "operator");
    let scopes = c.hello["auth"]["scopes"].to_string();
    assert!(scopes.contains("operator.write"), "scopes: {scopes}");
    eprintln!("<< {}", c.received[0]);
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    eprintln!(
        "<< hello-ok: {} bytes; keys {:?}; server {}; auth {}; policy {}; features {:?}; snapshot {:?}",
        c.received[1].len(),
        keys(&c.hello),
        c.hello["server"],
        c.hello["auth"],
        c.hello["policy"],
        keys(&c.hello["features"]),
        keys(&c.hello["snapshot"]),
    );

    let before = model.chat_requests().len();
    let message = "hello, my card is 4111 1111 1111 1111";
    let turn = c
        .chat_send("direct-token", message)
        .await
        .unwrap_or_else(|e| panic!("chat.send: {e}\n{}", gw.log_text()));
    show("token mode", &c.sent, &turn.frames);

    assert_eq!(turn.ack["payload"]["status"], "started", "{}", turn.ack);
    assert_eq!(turn.final_state().as_deref(), Some("final"));
    assert_eq!(turn.final_text().as_deref(), Some(PHONE_TEXT));
    assert_eq!(turn.streamed_text(), PHONE_TEXT);
    assert_eq!(turn.terminal_reply().as_deref(), Some(PHONE_TEXT));
    assert_eq!(turn.assistant_deltas().concat(), PHONE_TEXT);
    assert_eq!(
        turn.assistant_texts().last().map(String::as_str),
        Some(PHONE_TEXT)
    );
    // The number reaches the client split across increments: no single
    // deltaText or data.delta holds it whole.
    let deltas = turn.chat_deltas();
    assert!(deltas.len() >= 2, "one increment only: {deltas:?}");
    assert!(turn
        .chat_deltas()
        .iter()
        .chain(turn.assistant_deltas().iter())
        .all(|d| !d.contains("13800138000")));

    // The model got exactly this turn, streamed, with the user's text.
    let calls = model.wait_chat_requests(before + 1, Duration::from_secs(5));
    assert_eq!(calls.len(), before + 1, "one model call per turn");
    let call = &calls[before];
    assert_eq!(call["stream"], true);
    assert_eq!(call["model"], common::fake_openai::MODEL);
    assert!(model.saw(message), "the model never saw the user's text");
    let user = call["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| common::fake_openai::json_strings(&m["content"]))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(user.contains(message), "user messages: {user}");
    c.close().await;
}

/// Token mode, no `trustedProxies`: any forwarded header marks the upgrade
/// as proxied and OpenClaw refuses it with 403 before the WebSocket opens.
async fn forwarded_headers_refused_in_token_mode(gw: &OpenClaw) {
    for header in [
        ("x-forwarded-for", CLIENT_IP),
        ("forwarded", "for=203.0.113.7"),
        ("x-real-ip", CLIENT_IP),
        ("x-forwarded-proto", "https"),
        (USER_HEADER, "alice"),
    ] {
        match oc::open(&gw.url(), &[header]).await {
            Err(Refused::Http { status, body }) => {
                assert_eq!(status, 403, "{header:?}");
                assert!(body.contains("proxy_attribution_required"), "{body}");
            }
            Err(e) => panic!("{header:?}: {e}"),
            Ok(_) => panic!("{header:?}: upgraded"),
        }
    }
}

/// OpenClaw never negotiates `permessage-deflate`, even when offered.
async fn compression_not_negotiated(gw: &OpenClaw) {
    let offer = (
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits",
    );
    let (ws, resp) = oc::open_with_response(&gw.url(), &[offer])
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().get("sec-websocket-extensions").is_none(),
        "{:?}",
        resp.headers()
    );
    let c = Client::handshake(ws, &Connect::token())
        .await
        .expect("connect");
    c.close().await;
}

/// Trusted-proxy mode: the identity header plus a non-loopback
/// `X-Forwarded-For` from the trusted (loopback) proxy address connects a
/// client that carries no credentials, and a turn works.
async fn trusted_proxy_turn(gw: &OpenClaw, model: &FakeOpenAi) {
    let headers = [(USER_HEADER, "alice"), ("x-forwarded-for", CLIENT_IP)];
    let ws = oc::open(&gw.url(), &headers).await.expect("upgrade");
    let mut c = Client::handshake(ws, &Connect::trusted_proxy())
        .await
        .unwrap_or_else(|e| panic!("trusted-proxy connect: {e}\n{}", gw.log_text()));
    assert_eq!(c.hello["type"], "hello-ok");
    eprintln!("trusted-proxy hello-ok auth: {}", c.hello["auth"]);
    eprintln!(">> {}", c.sent[0]);
    let message = "hi, this is alice behind the proxy";
    let turn = c
        .chat_send("proxied-alice", message)
        .await
        .unwrap_or_else(|e| panic!("chat.send: {e}\n{}", gw.log_text()));
    show("trusted-proxy mode", &c.sent, &turn.frames);
    assert_eq!(turn.final_text().as_deref(), Some(PHONE_TEXT));
    assert_eq!(turn.streamed_text(), PHONE_TEXT);
    assert_eq!(turn.terminal_reply().as_deref(), Some(PHONE_TEXT));
    assert!(model.saw(message));
    c.close().await;
}

/// Trusted-proxy mode refusals: the identity header without a forwarded
/// client address, or with a loopback one (403); the forwarded address
/// without the identity header (a signed connect is refused with
/// `trusted_proxy_user_missing`; an unsigned one with
/// `DEVICE_IDENTITY_REQUIRED`); a user with no granted scopes connects but
/// may not chat.
async fn trusted_proxy_needs_attribution_and_identity(gw: &OpenClaw) {
    for headers in [
        vec![(USER_HEADER, "alice")],
        vec![(USER_HEADER, "alice"), ("x-forwarded-for", "127.0.0.1")],
    ] {
        match oc::open(&gw.url(), &headers).await {
            Err(Refused::Http { status, body }) => {
                assert_eq!(status, 403, "{headers:?}");
                assert!(body.contains("proxy_attribution_required"), "{body}");
            }
            Err(e) => panic!("{headers:?}: {e}"),
            Ok(_) => panic!("{headers:?}: upgraded"),
        }
    }

    let ws = oc::open(&gw.url(), &[("x-forwarded-for", CLIENT_IP)])
        .await
        .expect("upgrade");
    let signed = Connect {
        device: Some(Device::generate()),
        ..Connect::trusted_proxy()
    };
    match Client::handshake(ws, &signed).await {
        Err(Refused::Res(res)) => assert_eq!(
            res["error"]["details"]["authReason"], "trusted_proxy_user_missing",
            "{res}"
        ),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected without the identity header"),
    }

    let headers = [(USER_HEADER, "mallory"), ("x-forwarded-for", CLIENT_IP)];
    let ws = oc::open(&gw.url(), &headers).await.expect("upgrade");
    let mut c = Client::handshake(ws, &Connect::trusted_proxy())
        .await
        .expect("connect");
    match c.chat_send("proxied-mallory", "hello").await {
        Err(Refused::Res(res)) => {
            let err: &Value = &res["error"];
            assert_eq!(err["details"]["missingScope"], "operator.write", "{res}");
        }
        other => panic!("a user without scopes chatted: {other:?}"),
    }
    c.close().await;
}
