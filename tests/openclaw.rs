//! The real OpenClaw gateway (npm `openclaw` 2026.9.6, installed by
//! scripts/openclaw.sh) with a real WebSocket client: directly (the ground
//! truth), then through moltgate's passthrough (`platform: websocket`,
//! `profile: openclaw`) over TLS 1.3. Its model is the fake
//! OpenAI-compatible server of tests/common/fake_openai.rs, which streams a
//! phone number split across chunks and records what reached it. In token
//! mode, moltgate's OpenAI-compatible front (`platform: openai`,
//! passthrough) also stands before OpenClaw's own `POST /v1/chat/completions`
//! on the same port, with a relay between them recording what OpenClaw got.
//!
//! One gateway takes about 1.3 GiB and 8-25 s to start, so this binary runs
//! one, in one test, in steps: token mode first, then the same process
//! switched to trusted-proxy mode.

mod common;

use std::time::Duration;

use serde_json::{json, Value};

use common::fake_openai::{FakeOpenAi, PHONE_TEXT};
use common::openclaw::{self as oc, Auth, Client, Connect, Device, OpenClaw, Refused, USER_HEADER};
use common::{Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

/// The phone number as the shipped DLP rules show it.
const PHONE_MASKED: &str = "call me at 138****8000";

/// OpenClaw's OpenAI-compatible endpoint, and moltgate's route in front of it.
const COMPLETIONS: &str = "/v1/chat/completions";

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
    let tap = oc::Tap::start(gw.port);
    let mg = moltgate_in_front(gw.port, tap.port);
    rt.block_on(through_moltgate_token_mode(&mg, &gw, &model));
    step("token mode through moltgate done");
    rt.block_on(openai_front_to_openclaw(&mg, &gw, &model, &tap));
    step("OpenClaw's /v1/chat/completions through moltgate done");

    gw.set_auth(Auth::TrustedProxy {
        users: vec!["alice".into()],
    });
    step("restarted in trusted-proxy mode");
    rt.block_on(trusted_proxy_turn(&gw, &model));
    rt.block_on(trusted_proxy_needs_attribution_and_identity(&gw));
    step("trusted-proxy checks done");
    rt.block_on(through_moltgate_trusted_proxy(&mg, &gw));
    step("trusted-proxy mode through moltgate done");

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

/// moltgate in front of the gateway: `/openclaw` for token mode (no
/// forwarded headers), `/openclaw-tp` for trusted-proxy mode (the identity
/// header from the JWT). The test client stands behind a proxy of its own
/// (moltgate trusts 127.0.0.1 for `X-Forwarded-For`), so the address
/// moltgate admits and forwards is a non-loopback one, as OpenClaw requires.
/// And `/v1/chat/completions` (`platform: openai`, passthrough) to
/// OpenClaw's own OpenAI-compatible endpoint through `tap_port` (an
/// [`oc::Tap`] in front of the same gateway), with the gateway token as
/// moltgate's upstream bearer; its timeout (header, then per piece) allows
/// for a whole agent run before OpenClaw answers a `stream: false` call.
fn moltgate_in_front(openclaw_port: u16, tap_port: u16) -> common::Gateway {
    let route = "platform: websocket, mode: passthrough, upstream: openclaw";
    let ws = "profile: openclaw, max_frame: 1048576";
    let turn = oc::TURN_WITHIN.as_secs();
    Setup {
        upstreams: format!(
            "  openclaw: {{ kind: http, nodes: [\"127.0.0.1:{openclaw_port}\"], timeout: 10s }}\n  openclaw_http: {{ kind: http, nodes: [\"127.0.0.1:{tap_port}\"], timeout: {turn}s }}\n"
        ),
        routes: format!(
            "  - {{ path: /openclaw, {route}, websocket: {{ {ws} }} }}\n  - {{ path: /openclaw-tp, {route}, websocket: {{ {ws}, identity_header: {USER_HEADER} }} }}\n  - {{ path: {COMPLETIONS}, platform: openai, mode: passthrough, upstream: openclaw_http, secrets: {{ token: {} }} }}\n",
            oc::TOKEN
        ),
        policies: vec![
            (
                "security_policy.yaml",
                format!("{SECURITY_POLICY}trusted_proxies: [127.0.0.1/32]\n"),
            ),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", include_str!("../policies/dlp.yaml").into()),
        ],
        ..Default::default()
    }
    .start()
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A WebSocket to moltgate over TLS, with a JWT for `sub` and `extra`
/// headers; the 101 negotiates no extension.
async fn open_moltgate(
    mg: &common::Gateway,
    path: &str,
    sub: &str,
    extra: &[(&'static str, &str)],
) -> tokio_tungstenite::WebSocketStream<Tls> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("wss://localhost:{}{path}", mg.public)
        .into_client_request()
        .unwrap();
    let token = mg.token(sub, &[]);
    let headers = req.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (k, v) in extra {
        headers.insert(*k, v.parse().unwrap());
    }
    let tls = common::raw_tls(mg).await;
    let (ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .unwrap_or_else(|e| panic!("upgrade through moltgate: {e}\n{}", mg.log_text()));
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().get("sec-websocket-extensions").is_none(),
        "compression negotiated: {:?}",
        resp.headers()
    );
    ws
}

/// No frame of the turn shows the phone number or a part of it that the
/// mask hides, and every field of the end shows it masked.
fn assert_masked_everywhere(turn: &oc::Turn) {
    for frame in &turn.frames {
        assert!(
            !frame.contains("13800138000") && !frame.contains("0013"),
            "unmasked in {frame}"
        );
    }
    assert_eq!(turn.final_text().as_deref(), Some(PHONE_MASKED));
    assert_eq!(turn.terminal_reply().as_deref(), Some(PHONE_MASKED));
    let shown = turn.chat_messages();
    assert!(!shown.is_empty(), "no chat message: {:?}", turn.frames);
    for text in shown {
        assert!(PHONE_MASKED.starts_with(&text), "{text:?}");
    }
}

/// Token mode through moltgate: the challenge and the signed `connect` pass
/// untouched (OpenClaw checks the device signature over them), the client's
/// forwarded headers and compression offer are not passed on, a card in
/// `chat.send` never reaches the model, and the streamed phone number
/// reaches the client masked in every frame and field.
async fn through_moltgate_token_mode(mg: &common::Gateway, gw: &OpenClaw, model: &FakeOpenAi) {
    let extra = [
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("x-forwarded-for", CLIENT_IP),
        (USER_HEADER, "mallory"),
    ];
    let ws = open_moltgate(mg, "/openclaw", "alice", &extra).await;
    let mut c = Client::handshake(ws, &Connect::token())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "connect through moltgate: {e}\n{}\n{}",
                gw.log_text(),
                mg.log_text()
            )
        });
    assert_eq!(c.hello["type"], "hello-ok");
    assert_eq!(c.hello["auth"]["method"], "token");
    let card = "5500 0000 0000 0004";
    let turn = c
        .chat_send("through-moltgate", &format!("my card is {card}"))
        .await
        .unwrap_or_else(|e| panic!("chat.send: {e}\n{}", mg.log_text()));
    show("token mode through moltgate", &c.sent, &turn.frames);
    assert!(
        model.saw("my card is "),
        "the masked message reached the model"
    );
    assert!(!model.saw(card), "the card reached the model");
    assert_masked_everywhere(&turn);
    c.close().await;
    mg.wait_audit(|a| {
        a["route"] == "/openclaw" && a["decision"] == "proxied" && a["sender_id"] == "alice"
    });
    assert!(!mg.log_text().contains(card));
}

/// Trusted-proxy mode through moltgate: the identity comes from the JWT
/// (`alice`, who has scopes), not from the client's spoofed header
/// (`mallory`, who has none at this point: a turn as mallory would fail).
async fn through_moltgate_trusted_proxy(mg: &common::Gateway, gw: &OpenClaw) {
    let extra = [(USER_HEADER, "mallory"), ("x-forwarded-for", CLIENT_IP)];
    let ws = open_moltgate(mg, "/openclaw-tp", "alice", &extra).await;
    let mut c = Client::handshake(ws, &Connect::trusted_proxy())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "trusted-proxy connect through moltgate: {e}\n{}",
                gw.log_text()
            )
        });
    assert_eq!(c.hello["auth"]["method"], "trusted-proxy");
    let turn = c
        .chat_send("through-moltgate-tp", "hello from alice")
        .await
        .unwrap_or_else(|e| panic!("chat.send as alice: {e}\n{}", gw.log_text()));
    assert_masked_everywhere(&turn);
    c.close().await;
}

/// The `data:` payloads of a Server-Sent Events body, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .flat_map(|event| event.lines())
        .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_string()))
        .collect()
}

/// `choices[0].delta.content` of each `chat.completion.chunk` payload.
fn sse_contents(data: &[String]) -> Vec<String> {
    data.iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect()
}

/// What OpenClaw answered on the tap's connections `from..`, as text.
fn received_since(tap: &oc::Tap, from: usize) -> String {
    tap.conns()[from..]
        .iter()
        .map(|c| String::from_utf8_lossy(&c.received).into_owned())
        .collect()
}

/// What the fake model got in calls `from..`: every JSON string of them.
fn model_text_since(model: &FakeOpenAi, from: usize) -> Vec<String> {
    model.chat_requests()[from..]
        .iter()
        .flat_map(common::fake_openai::json_strings)
        .collect()
}

/// `platform: openai`, `mode: passthrough` in front of OpenClaw's own
/// OpenAI-compatible endpoint (`POST /v1/chat/completions`, token mode),
/// with a real HTTP client over TLS to moltgate and a tap recording what
/// OpenClaw got: a card in the user's message never reaches OpenClaw or its
/// model; OpenClaw accepts moltgate's gateway token, never the client's JWT
/// (which it refuses when sent to it directly); a streamed answer whose
/// phone number the model splits across chunks reaches the client masked
/// in every chunk and whole, then `[DONE]`; a request without a JWT (or
/// with OpenClaw's own token instead) is refused by moltgate and never
/// reaches OpenClaw.
async fn openai_front_to_openclaw(
    mg: &common::Gateway,
    gw: &OpenClaw,
    model: &FakeOpenAi,
    tap: &oc::Tap,
) {
    let jwt = mg.token("alice", &[]);
    let client = mg.client(false);
    let post = |body: &Value| {
        client
            .post(mg.url(COMPLETIONS))
            .timeout(oc::TURN_WITHIN)
            .json(body)
    };
    let card = "4111 1111 1111 1111";

    // Ground truth: OpenClaw itself refuses the client's JWT.
    let direct = client
        .post(format!("http://127.0.0.1:{}{COMPLETIONS}", gw.port))
        .bearer_auth(&jwt)
        .json(
            &json!({"model": "openclaw/default", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    let status = direct.status();
    eprintln!(
        "direct with the JWT: {status} {}",
        direct.text().await.unwrap()
    );
    assert_eq!(status, 401, "OpenClaw accepted the client's JWT");

    // A whole answer: the card is masked before OpenClaw sees the request.
    let (calls, taps, conns) = (
        model.chat_requests().len(),
        tap.requests().len(),
        tap.conns().len(),
    );
    let message = format!("my card is {card}, what is your number?");
    let resp = post(
        &json!({"model": "openclaw/default", "messages": [{"role": "user", "content": message}]}),
    )
    .bearer_auth(&jwt)
    .send()
    .await
    .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    eprintln!("<< {status} {text}");
    assert_eq!(status, 200, "{text}\n{}", gw.log_text());
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["choices"][0]["message"]["content"], PHONE_MASKED);
    // OpenClaw answered with the number: moltgate masked it.
    let upstream = received_since(tap, conns);
    eprintln!("<< OpenClaw's own answer, as moltgate got it:\n{upstream}");
    assert!(upstream.contains(PHONE_TEXT), "{upstream}");
    let got = tap.requests()[taps..].to_vec();
    assert_eq!(got.len(), 1, "{got:?}");
    eprintln!(">> to OpenClaw:\n{}", got[0].head);
    assert!(got[0]
        .head
        .starts_with("POST /v1/chat/completions HTTP/1.1"));
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {}", oc::TOKEN))
    );
    assert!(!got[0].head.contains(&jwt), "the JWT reached OpenClaw");
    assert_eq!(
        got[0].header("accept-encoding").as_deref(),
        Some("identity")
    );
    let sent = String::from_utf8_lossy(&got[0].body).into_owned();
    eprintln!(">> {sent}");
    assert!(
        sent.contains("my card is ") && !sent.contains("4111"),
        "{sent}"
    );
    let calls_now = model.wait_chat_requests(calls + 1, Duration::from_secs(10));
    assert_eq!(calls_now.len(), calls + 1, "one model call");
    let seen = model_text_since(model, calls);
    assert!(seen.iter().any(|s| s.contains("my card is ")), "{seen:?}");
    assert!(
        !seen.iter().any(|s| s.contains("4111")),
        "the card reached the model"
    );
    assert!(
        !seen.iter().any(|s| s.contains(&jwt)),
        "the JWT reached the model"
    );

    // A streamed answer: the model sends "call me at 138", "0013", "8000".
    let calls = model.chat_requests().len();
    let conns = tap.conns().len();
    let mut resp = post(&json!({"model": "openclaw/default", "stream": true, "messages": [{"role": "user", "content": "and streamed?"}]}))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.log_text());
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut chunks = Vec::new();
    while let Some(chunk) = tokio::time::timeout(oc::TURN_WITHIN, resp.chunk())
        .await
        .expect("the stream stalled")
        .expect("the stream broke")
    {
        chunks.push(String::from_utf8_lossy(&chunk).into_owned());
    }
    let body = chunks.concat();
    eprintln!("<< streamed, {} reads:\n{body}", chunks.len());
    let upstream = received_since(tap, conns);
    eprintln!("<< OpenClaw's own answer, as moltgate got it:\n{upstream}");
    for chunk in &chunks {
        assert!(!chunk.contains("13800138000"), "unmasked in {chunk:?}");
    }
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let pieces = sse_contents(&data);
    let mut shown = String::new();
    for piece in &pieces {
        shown.push_str(piece);
        assert!(PHONE_MASKED.starts_with(&shown), "{pieces:?}");
    }
    assert_eq!(shown, PHONE_MASKED, "{pieces:?}");
    assert!(
        data.iter().any(|d| d.contains(r#""finish_reason":"stop""#)),
        "{body}"
    );
    // OpenClaw itself streamed the number unmasked, split across events
    // (the raw answer is chunked: each event is one chunk, so its `data:`
    // lines read whole): moltgate masked it across them.
    let upstream_pieces = sse_contents(&sse_data(&upstream));
    assert_eq!(upstream_pieces.concat(), PHONE_TEXT, "{upstream}");
    assert!(
        upstream_pieces.iter().all(|p| !p.contains("13800138000")),
        "OpenClaw sent the number in one event: {upstream_pieces:?}"
    );
    assert_eq!(
        model
            .wait_chat_requests(calls + 1, Duration::from_secs(10))
            .len(),
        calls + 1
    );

    // No JWT, or OpenClaw's own token instead of one: moltgate refuses the
    // request, which never reaches OpenClaw (nor its model).
    let (calls, taps, conns) = (
        model.chat_requests().len(),
        tap.requests().len(),
        tap.conns().len(),
    );
    let hi = json!({"model": "openclaw/default", "messages": [{"role": "user", "content": "hi"}]});
    for (bearer, error) in [(None, "jwt_missing"), (Some(oc::TOKEN), "jwt_malformed")] {
        let mut req = post(&hi);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        eprintln!("<< bearer {bearer:?}: {status} {text}");
        assert_eq!(status, 401, "{bearer:?}: {text}");
        let refusal: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(refusal["error"], error, "moltgate's refusal: {text}");
    }
    assert_eq!(
        tap.requests().len(),
        taps,
        "a refused request reached OpenClaw"
    );
    assert_eq!(tap.conns().len(), conns);
    assert_eq!(model.chat_requests().len(), calls);

    mg.wait_audit(|a| {
        a["route"] == COMPLETIONS && a["decision"] == "proxied" && a["sender_id"] == "alice"
    });
    let log = mg.log_text();
    assert!(!log.contains(card) && !log.contains("13800138000"));
}
