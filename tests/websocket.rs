//! moltgate's own WebSocket API (`platform: websocket`, `mode: translate`)
//! with a real WebSocket client (tokio-tungstenite) over TLS 1.3 to the
//! real gateway: the JWT on the upgrade, replies, DLP both ways with the
//! connection kept, per-frame rate limits, and the close codes.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use common::{Gateway, Setup, ALLOW_ALL_ABAC, SECURITY_POLICY};

type Ws = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

const DLP: &str = "keywords:\n  secret_project:\n    words: [bluebird]\n    action: block\n    direction: ingress\n  echo_mask:\n    words: [echo]\n    action: mask\n    direction: egress\n    mask: { char: \"#\" }\n";

fn gateway() -> Gateway {
    Setup {
        routes: "  - { path: /v1/ws, platform: websocket, upstream: assistant, websocket: { max_frame: 4096 } }\n".into(),
        policies: vec![
            (
                "security_policy.yaml",
                format!("{SECURITY_POLICY}rate_limiting:\n  per_user: {{ window: 60s, max_requests: 6 }}\n"),
            ),
            ("abac.yaml", ALLOW_ALL_ABAC.into()),
            ("dlp.yaml", DLP.into()),
        ],
        ..Default::default()
    }
    .start()
}

/// Opens a WebSocket to `/v1/ws` with `token` (or none).
async fn open(gw: &Gateway, token: Option<&str>) -> Result<Ws, WsError> {
    let tls = common::raw_tls(gw).await;
    let mut req = format!("wss://localhost:{}/v1/ws", gw.public)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::client_async(req, tls)
        .await
        .map(|(ws, resp)| {
            assert_eq!(resp.status(), 101);
            assert!(
                resp.headers().get("sec-websocket-extensions").is_none(),
                "no extension (permessage-deflate) is negotiated"
            );
            ws
        })
}

/// The next text frame as JSON (bounded wait).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the connection is open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn say(ws: &mut Ws, id: &str, text: &str) -> Value {
    let frame = json!({"type": "message", "id": id, "content": {"text": text}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    next_json(ws).await
}

/// The close code the gateway ends the connection with.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
            Err(_) => panic!("the gateway did not close within 10 s"),
        }
    }
}

#[test]
fn the_upgrade_needs_a_valid_token() {
    let gw = gateway();
    let rt = common::rt();
    for token in [None, Some("not-a-jwt")] {
        match rt.block_on(open(&gw, token)) {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{token:?}");
                assert!(resp.headers().get("www-authenticate").is_some());
            }
            other => panic!(
                "{token:?}: expected 401, got {:?}",
                other.map(|_| "an upgrade")
            ),
        }
    }
    // The refusals are audited like any failed verification.
    let refused = gw.wait_audits(2, |a| a["route"] == "/v1/ws" && a["status"] == 401);
    assert_eq!(refused.len(), 2, "{}", gw.log_text());
}

#[test]
fn messages_are_answered_scanned_and_limited_frame_by_frame() {
    let gw = gateway();
    let token = gw.token("alice", &[]);
    let rt = common::rt();
    rt.block_on(async {
        let mut ws = open(&gw, Some(&token)).await.expect("upgrade");
        // A reply, its egress masked ("echo" is masked on the way out).
        let reply = say(&mut ws, "c1", "hello there").await;
        assert_eq!(reply["type"], "reply", "{reply}");
        assert_eq!(reply["id"], "c1");
        assert_eq!(reply["final"], true);
        let text = reply["text"].as_str().unwrap();
        assert!(
            text.contains("hello there") && text.starts_with("####"),
            "{text}"
        );

        // A blocked message gets an error frame; the connection stays open.
        let refused = say(&mut ws, "c2", "about bluebird").await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["id"], "c2");
        assert_eq!(refused["error"], "dlp_blocked");
        assert!(
            !refused.to_string().contains("bluebird"),
            "no finding echoed"
        );
        assert_eq!(say(&mut ws, "c3", "still here").await["type"], "reply");

        // A malformed frame is an error frame too.
        ws.send(Message::text("{\"type\":\"message\""))
            .await
            .unwrap();
        assert_eq!(next_json(&mut ws).await["error"], "malformed");

        // per_user is 6 per minute, counted per message frame: 3 were
        // answered or blocked above (the malformed one never reached the
        // path), so three more fit and the next is limited.
        for i in 0..3 {
            assert_eq!(
                say(&mut ws, &format!("r{i}"), "more").await["type"],
                "reply"
            );
        }
        let limited = say(&mut ws, "r3", "one too many").await;
        assert_eq!(limited["error"], "rate_limited", "{limited}");
        ws.close(None).await.unwrap();
    });
    // One audit line for the upgrade, one per message frame that reached the path.
    let upgraded = gw.wait_audits(1, |a| a["route"] == "/v1/ws" && a["decision"] == "upgraded");
    assert_eq!(upgraded.len(), 1, "{}", gw.log_text());
    let answered = gw.wait_audits(5, |a| a["route"] == "/v1/ws" && a["decision"] == "answered");
    assert_eq!(answered.len(), 5, "{}", gw.log_text());
}

#[test]
fn oversized_and_binary_frames_close_the_connection() {
    let gw = gateway();
    let token = gw.token("bob", &[]);
    let rt = common::rt();
    rt.block_on(async {
        let mut ws = open(&gw, Some(&token)).await.unwrap();
        let big = json!({"type": "message", "id": "big", "content": {"text": "x".repeat(5000)}});
        ws.send(Message::text(big.to_string())).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));

        let mut ws = open(&gw, Some(&token)).await.unwrap();
        ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));
    });
}

#[test]
fn a_silent_connection_is_pinged_then_closed() {
    let gw = Setup {
        routes: "  - { path: /v1/ws, platform: websocket, upstream: assistant, websocket: { idle: 200ms } }\n".into(),
        ..Default::default()
    }
    .start();
    let token = gw.token("carol", &[]);
    common::rt().block_on(async {
        let mut ws = open(&gw, Some(&token)).await.unwrap();
        // Not reading, so no pong goes back: pinged after 200 ms, closed after 400.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut pinged = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Ping(_)))) => pinged = true,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    assert!(pinged, "a ping comes before the close");
                    assert_eq!(frame.map(|f| f.code), Some(CloseCode::Away));
                    break;
                }
                other => panic!("expected a ping then a close, got {other:?}"),
            }
        }
    });
}
