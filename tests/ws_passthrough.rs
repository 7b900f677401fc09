//! `platform: websocket`, `mode: passthrough` in front of a WebSocket bot
//! gateway, with a real WebSocket client (tokio-tungstenite) over TLS 1.3
//! to the real gateway, and `common::fake_ws` as the bot gateway: the edge
//! cases the real OpenClaw cannot be driven into (malformed, fragmented,
//! oversized and binary frames, refusals, the json profile). The real
//! OpenClaw behind moltgate is in tests/openclaw.rs.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use common::fake_ws::FakeWsBot;
use common::{Gateway, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

type Ws = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The shipped DLP rules (cards and phones masked, ID numbers blocked).
const DLP: &str = include_str!("../policies/dlp.yaml");

fn gateway(bot_node: &str) -> Gateway {
    let oc = "platform: websocket, mode: passthrough, upstream: bot";
    Setup {
        upstreams: format!("  bot: {{ kind: http, nodes: [\"{bot_node}\"], timeout: 5s }}\n"),
        routes: format!(
            "  - {{ path: /oc, {oc}, websocket: {{ profile: openclaw, max_frame: 4096 }} }}\n\
             \x20 - {{ path: /oc-id, {oc}, websocket: {{ profile: openclaw, identity_header: X-Forwarded-User, upstream_path: /gw }} }}\n\
             \x20 - {{ path: /j, {oc}, websocket: {{ profile: json, ingress_pointers: [/text], egress_pointers: [/payload/got/text] }} }}\n"
        ),
        policies: vec![
            (
                "security_policy.yaml",
                format!("{SECURITY_POLICY}rate_limiting:\n  per_user: {{ window: 60s, max_requests: 5 }}\n"),
            ),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", DLP.into()),
        ],
        ..Default::default()
    }
    .start()
}

/// Opens `path` with `token` and extra headers; the 101 offers no extension.
async fn open(
    gw: &Gateway,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<Ws, WsError> {
    let tls = common::raw_tls(gw).await;
    let mut req = format!("wss://localhost:{}{path}", gw.public)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    for (k, v) in extra {
        let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    Ok(ws)
}

/// The next text frame (bounded wait), as it arrived.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

async fn req(ws: &mut Ws, id: &str, method: &str, message: &str) -> Value {
    let frame =
        json!({"type":"req","id":id,"method":method,"params":{"message":message,"sessionKey":"s"}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    next_json(ws).await
}

async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
            Err(_) => panic!("no close within 10 s"),
        }
    }
}

/// A connect frame in OpenClaw's own key order and spacing: it must reach
/// the bot gateway as these exact bytes.
const CONNECT: &str = r#"{"type":"req", "id":"1","method":"connect","params":{"minProtocol":4,"maxProtocol":4,"client":{"id":"cli","mode":"cli","platform":"linux","version":"1.0.0"},"role":"operator","scopes":["operator.read","operator.write"],"auth":{"token":"t0k-4111111111111111"},"device":{"id":"d","publicKey":"k","signature":"s","signedAt":1,"nonce":"n-1"}}}"#;

#[test]
fn frames_are_inspected_both_ways_and_unchanged_ones_pass_as_sent() {
    let bot = FakeWsBot::start();
    let gw = gateway(&bot.node());
    let token = gw.token("alice", &[]);
    let rt = common::rt();
    rt.block_on(async {
        let spoofed = [
            (
                "sec-websocket-extensions",
                "permessage-deflate; client_max_window_bits",
            ),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-user", "mallory"),
        ];
        let mut ws = open(&gw, "/oc", Some(&token), &spoofed).await.unwrap();
        // The challenge and the connect handshake pass untouched.
        let challenge = next_text(&mut ws).await;
        assert_eq!(
            challenge,
            json!({"type":"event","event":"connect.challenge","payload":{"nonce":"n-1","ts":1}})
                .to_string()
        );
        ws.send(Message::text(CONNECT)).await.unwrap();
        assert_eq!(next_json(&mut ws).await["id"], "1");
        assert_eq!(bot.seen().frames[0], CONNECT);
        // A card in chat.send is masked before the bot gateway sees it.
        let res = req(&mut ws, "2", "chat.send", "my card is 4111 1111 1111 1111").await;
        let echoed = res["payload"]["echo"].as_str().unwrap();
        assert!(
            echoed.starts_with("my card is ") && !echoed.contains("4111 1111 1111 1111"),
            "{res}"
        );
        assert!(!bot
            .seen()
            .frames
            .iter()
            .any(|f| f.contains("4111 1111 1111 1111")));
        // A phone number streamed across three increments reaches the
        // client masked in every frame and field.
        assert_eq!(
            req(&mut ws, "3", "chat.send", "phone please").await["ok"],
            true
        );
        let mut last = Value::Null;
        while last["payload"]["state"] != "final" {
            let text = next_text(&mut ws).await;
            assert!(
                !text.contains("0013") && !text.contains("13800138000"),
                "{text}"
            );
            last = serde_json::from_str(&text).unwrap();
        }
        assert_eq!(
            last["payload"]["message"]["content"][0]["text"],
            "call me at 138****8000"
        );
        // A block rule refuses the frame in OpenClaw's shape; the connection stays.
        let refused = req(&mut ws, "4", "chat.send", "my id is 11010519491231002X").await;
        assert_eq!(
            (refused["type"].as_str(), refused["ok"].as_bool()),
            (Some("res"), Some(false)),
            "{refused}"
        );
        assert_eq!(refused["id"], "4");
        assert!(!bot
            .seen()
            .frames
            .iter()
            .any(|f| f.contains("11010519491231002X")));
        assert_eq!(req(&mut ws, "5", "sessions.list", "").await["ok"], true);
        ws.close(None).await.unwrap();
    });
    // The upstream upgrade: no extension offered, nothing forwarded, no JWT.
    let (path, headers) = &bot.seen().upgrades[0];
    assert_eq!(path, "/oc");
    for name in [
        "sec-websocket-extensions",
        "x-forwarded-for",
        "x-forwarded-user",
        "authorization",
        "forwarded",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached the upstream");
    }
    // One audit line per message frame, and the connection's own lines.
    gw.wait_audit(|a| {
        a["route"] == "/oc" && a["decision"] == "upgraded" && a["sender_id"] == "alice"
    });
    gw.wait_audit(|a| a["route"] == "/oc" && a["decision"] == "blocked");
    gw.wait_audit(|a| {
        a["route"] == "/oc" && a["decision"] == "closed" && a["reason"] == "client_closed"
    });
    let proxied = gw.wait_audits(2, |a| a["route"] == "/oc" && a["decision"] == "proxied");
    assert_eq!(
        proxied.len(),
        2,
        "two chat.send passed (connect and sessions.list are not messages)"
    );
    let metrics = gw.metrics();
    assert!(metrics.contains("moltgate_websocket_frames_total{direction=\"ingress\",route=\"/oc\",verdict=\"refused\"} 1"), "{metrics}");
    assert!(metrics.contains("moltgate_websocket_connections_total{mode=\"passthrough\",result=\"upgraded\",route=\"/oc\"} 1"));
    assert!(
        !gw.log_text().contains("11010519491231002X")
            && !gw.log_text().contains("4111 1111 1111 1111")
    );
}

#[test]
fn the_identity_header_is_set_once_from_the_token() {
    let bot = FakeWsBot::start();
    let gw = gateway(&bot.node());
    let token = gw.token("alice", &[]);
    let rt = common::rt();
    rt.block_on(async {
        let spoofed = [
            ("x-forwarded-user", "mallory"),
            ("x-forwarded-for", "6.6.6.6"),
            ("origin", "https://chat.example"),
        ];
        let mut ws = open(&gw, "/oc-id", Some(&token), &spoofed).await.unwrap();
        next_text(&mut ws).await;
        ws.close(None).await.unwrap();
    });
    let (path, headers) = &bot.seen().upgrades[0];
    assert_eq!(path, "/gw", "upstream_path");
    let all = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(all("x-forwarded-user"), ["alice"]);
    assert_eq!(
        all("x-forwarded-for"),
        ["127.0.0.1"],
        "the address moltgate admitted"
    );
    assert_eq!(all("origin"), ["https://chat.example"]);
}

#[test]
fn garbage_fragments_limits_and_close_codes() {
    let bot = FakeWsBot::start();
    let gw = gateway(&bot.node());
    let token = gw.token("bob", &[]);
    let rt = common::rt();
    rt.block_on(async {
        let mut ws = open(&gw, "/oc", Some(&token), &[]).await.unwrap();
        next_text(&mut ws).await;
        // Not JSON: refused, never forwarded, connection kept.
        ws.send(Message::text("hello?")).await.unwrap();
        let refused = next_json(&mut ws).await;
        assert_eq!((refused["ok"].as_bool(), refused["error"]["code"].as_str()), (Some(false), Some("malformed")), "{refused}");
        // A message in three fragments is reassembled, inspected, forwarded.
        let whole = json!({"type":"req","id":"f","method":"chat.send","params":{"message":"card 4111 1111 1111 1111"}}).to_string();
        let (a, rest) = whole.split_at(20);
        let (b, c) = rest.split_at(25);
        for (i, part) in [a, b, c].iter().enumerate() {
            let op = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            ws.send(Message::Frame(Frame::message(part.as_bytes().to_vec(), op, i == 2))).await.unwrap();
        }
        let res = next_json(&mut ws).await;
        assert_eq!(res["id"], "f");
        assert!(!res["payload"]["echo"].as_str().unwrap().contains("4111 1111 1111 1111"), "{res}");
        // Rate limits count message frames only: 5 per minute for bob.
        for i in 0..20 {
            assert_eq!(req(&mut ws, &format!("l{i}"), "sessions.list", "").await["ok"], true);
        }
        let mut limited = None;
        for i in 0..5 {
            let res = req(&mut ws, &format!("m{i}"), "chat.send", "hi").await;
            if res["ok"] == false {
                limited = Some((i, res));
                break;
            }
        }
        let (i, res) = limited.expect("a message frame over the limit is refused");
        assert_eq!((i, res["error"]["code"].as_str()), (4, Some("rate_limited")), "{res}");
        assert!(!bot.seen().frames.iter().any(|f| f.contains("\"m4\"")));
        // Over max_frame (4096): 1009.
        ws.send(Message::text("x".repeat(5000))).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));

        // Binary frames cannot be inspected: 1003, both ways.
        let mut ws = open(&gw, "/oc", Some(&token), &[]).await.unwrap();
        next_text(&mut ws).await;
        ws.send(Message::binary(vec![0u8; 4])).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));
        let mut ws = open(&gw, "/oc", Some(&token), &[]).await.unwrap();
        next_text(&mut ws).await;
        ws.send(Message::text(json!({"type":"req","id":"b","method":"binary"}).to_string())).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));
        // An upstream frame over max_frame closes the client with 1011.
        let mut ws = open(&gw, "/oc", Some(&token), &[]).await.unwrap();
        next_text(&mut ws).await;
        ws.send(Message::text(json!({"type":"req","id":"g","method":"big","params":{"size":9000}}).to_string())).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Error));
    });
    gw.wait_audit(|a| a["decision"] == "closed" && a["reason"] == "frame_too_big");
    gw.wait_audit(|a| a["decision"] == "closed" && a["reason"] == "binary_frame");
    gw.wait_audit(|a| a["route"] == "/oc" && a["status"] == 429);
}

#[test]
fn no_token_no_upgrade_and_no_upstream_is_502() {
    let dead = format!("127.0.0.1:{}", common::free_port());
    let gw = gateway(&dead);
    let token = gw.token("alice", &[]);
    let rt = common::rt();
    rt.block_on(async {
        match open(&gw, "/oc", None, &[]).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| "an upgrade")),
        }
        match open(&gw, "/oc", Some(&token), &[]).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
            other => panic!("expected 502, got {:?}", other.map(|_| "an upgrade")),
        }
    });
    assert!(gw.metrics().contains("moltgate_websocket_connections_total{mode=\"passthrough\",result=\"upstream_unreachable\",route=\"/oc\"} 1"));
}

#[test]
fn the_json_profile_inspects_the_pointed_fields() {
    let bot = FakeWsBot::start();
    let gw = gateway(&bot.node());
    let token = gw.token("alice", &[]);
    let rt = common::rt();
    rt.block_on(async {
        let mut ws = open(&gw, "/j", Some(&token), &[]).await.unwrap();
        next_text(&mut ws).await;
        let frame = json!({"id":"j1","text":"call 13800138000","other":"13800138000"});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        let res = next_json(&mut ws).await;
        // The bot saw the pointed field masked and the rest as sent; its
        // answer's pointed field is masked on the way back too.
        assert_eq!(res["payload"]["got"]["text"], "call 138****8000", "{res}");
        assert_eq!(res["payload"]["got"]["other"], "13800138000");
        ws.send(Message::text(
            json!({"id":"j2","text":"id 11010519491231002X"}).to_string(),
        ))
        .await
        .unwrap();
        let refused = next_json(&mut ws).await;
        assert_eq!(
            (refused["type"].as_str(), refused["id"].as_str()),
            (Some("error"), Some("j2")),
            "{refused}"
        );
    });
}
