//! moltgate's own WebSocket API (`platform: websocket`, `mode: translate`)
//! with a real WebSocket client (tokio-tungstenite) over TLS 1.3 to the
//! real gateway: the JWT on the upgrade, replies streamed part by part as
//! the AI cluster's gRPC stream delivers them, DLP both ways with the
//! connection kept, per-frame rate limits, confirmation, and the close codes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Sends a message and reads its whole answer: the frames up to the one
/// that ends it (an empty `final` reply, or an error).
async fn say(ws: &mut Ws, id: &str, text: &str) -> Vec<Value> {
    let frame = json!({"type": "message", "id": id, "content": {"text": text}});
    ws.send(Message::text(frame.to_string())).await.unwrap();
    let mut answer = Vec::new();
    loop {
        let frame = next_json(ws).await;
        assert_eq!(frame["id"], id, "{frame}");
        let ends = frame["type"] == "error" || frame["final"] == true;
        answer.push(frame);
        if ends {
            return answer;
        }
    }
}

/// The answer's one error frame.
fn error_of(answer: &[Value]) -> &Value {
    assert_eq!(answer.len(), 1, "an error is the whole answer: {answer:?}");
    assert_eq!(answer[0]["type"], "error", "{answer:?}");
    &answer[0]
}

/// The answer's reply parts, checking that it ends with the empty final frame.
fn parts_of(answer: &[Value]) -> Vec<&str> {
    let (end, parts) = answer.split_last().unwrap();
    assert_eq!(end["type"], "reply", "{answer:?}");
    assert_eq!(end["text"], "", "the closing frame is empty: {answer:?}");
    assert_eq!(end["final"], true);
    parts
        .iter()
        .map(|p| {
            assert_eq!(
                (&p["type"], &p["final"]),
                (&json!("reply"), &json!(false)),
                "{p}"
            );
            p["text"].as_str().unwrap()
        })
        .collect()
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
        // The embedded assistant's one part, egress masked ("echo" is
        // masked on the way out), then the empty final frame.
        let reply = say(&mut ws, "c1", "hello there").await;
        assert_eq!(parts_of(&reply), ["####: hello there (turn 1)"]);

        // A blocked message gets an error frame; the connection stays open.
        let refused = say(&mut ws, "c2", "about bluebird").await;
        let refused = error_of(&refused);
        assert_eq!(refused["error"], "dlp_blocked");
        assert!(
            !refused.to_string().contains("bluebird"),
            "no finding echoed"
        );
        assert_eq!(parts_of(&say(&mut ws, "c3", "still here").await).len(), 1);

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
                parts_of(&say(&mut ws, &format!("r{i}"), "more").await).len(),
                1
            );
        }
        let limited = say(&mut ws, "r3", "one too many").await;
        assert_eq!(error_of(&limited)["error"], "rate_limited");
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

/// A gRPC assistant node (real tonic, over loopback) that answers every
/// message in two text parts, `echo 1: <text>` then `echo 2`; for a text
/// containing "hold" it sends the second part only once the test releases
/// it. Counts the second parts it has produced.
struct HeldAssistant {
    port: u16,
    release: Arc<tokio::sync::Notify>,
    seconds_sent: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Held {
    release: Arc<tokio::sync::Notify>,
    seconds_sent: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl moltgate::proto::v1::assistant_server::Assistant for Held {
    type HandleStream = moltgate::assistant::ReplyStream;

    async fn handle(
        &self,
        request: tonic::Request<moltgate::proto::Envelope>,
    ) -> Result<tonic::Response<Self::HandleStream>, tonic::Status> {
        use moltgate::proto::v1::{reply::Kind, Accepted, Final, Reply, TextPart};
        let env = request.into_inner();
        let text = env.content.map(|c| c.text).unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let held = self.clone();
        tokio::spawn(async move {
            let reply = |kind| {
                Ok(Reply {
                    envelope_id: env.id.clone(),
                    kind: Some(kind),
                })
            };
            let first = format!("echo 1: {text}");
            let _ = tx.send(reply(Kind::Accepted(Accepted {}))).await;
            let _ = tx.send(reply(Kind::Text(TextPart { text: first }))).await;
            if text.contains("hold") {
                held.release.notified().await;
            }
            held.seconds_sent.fetch_add(1, Ordering::SeqCst);
            let second = "echo 2".to_string();
            let _ = tx.send(reply(Kind::Text(TextPart { text: second }))).await;
            let _ = tx.send(reply(Kind::Final(Final::default()))).await;
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl HeldAssistant {
    fn start() -> Self {
        use moltgate::proto::v1::assistant_server::AssistantServer;
        let rt = common::background_rt();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Held {
            release: Arc::new(tokio::sync::Notify::new()),
            seconds_sent: Arc::new(AtomicUsize::new(0)),
        };
        let service = AssistantServer::new(held.clone());
        rt.spawn(async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<AssistantServer<Held>>().await;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            port,
            release: held.release,
            seconds_sent: held.seconds_sent,
            _rt: rt,
        }
    }
}

/// A gateway whose `/v1/ws` goes to `ai`; `/reboot` is erin's, with a confirmation.
fn streaming_gateway(ai: &HeldAssistant) -> Gateway {
    let abac = format!(
        "{ALLOW_ALL_ABAC}  - id: reboot_needs_confirmation\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [\"command:reboot\"]\n    confirm: true\n"
    );
    Setup {
        upstreams: format!(
            "  assistant: {{ kind: grpc, nodes: [\"127.0.0.1:{}\"], timeout: 5s }}\n",
            ai.port
        ),
        routes: "  - { path: /v1/ws, platform: websocket, upstream: assistant }\n".into(),
        policies: vec![
            ("security_policy.yaml", SECURITY_POLICY.into()),
            ("abac.yaml", abac),
            ("dlp.yaml", DLP.into()),
            (
                "permissions.yaml",
                "roles:\n  admin: [\"command:*\"]\nsubjects:\n  \"websocket:erin\": [admin]\n"
                    .into(),
            ),
        ],
        ..Default::default()
    }
    .start()
}

/// The first part reaches the client while the assistant still holds the
/// second: the reply streams, it is not collected first.
#[test]
fn reply_parts_stream_as_the_assistant_sends_them() {
    let ai = HeldAssistant::start();
    let gw = streaming_gateway(&ai);
    let token = gw.token("dora", &[]);
    common::rt().block_on(async {
        let mut ws = open(&gw, Some(&token)).await.expect("upgrade");
        let frame = json!({"type": "message", "id": "s1", "content": {"text": "hold on"}});
        ws.send(Message::text(frame.to_string())).await.unwrap();

        // The first part, through egress DLP, while the second is held.
        let first = next_json(&mut ws).await;
        assert_eq!(
            first,
            json!({"type": "reply", "id": "s1", "text": "#### 1: hold on", "final": false})
        );
        assert_eq!(
            ai.seconds_sent.load(Ordering::SeqCst),
            0,
            "the assistant had not produced its second part yet"
        );

        // Released, the second part follows, then the end of the answer.
        ai.release.notify_one();
        let second = next_json(&mut ws).await;
        assert_eq!(
            second,
            json!({"type": "reply", "id": "s1", "text": "#### 2", "final": false})
        );
        assert_eq!(ai.seconds_sent.load(Ordering::SeqCst), 1);
        let end = next_json(&mut ws).await;
        assert_eq!(
            end,
            json!({"type": "reply", "id": "s1", "text": "", "final": true})
        );

        // The next message on the connection gets its own whole answer.
        let again = say(&mut ws, "s2", "again").await;
        assert_eq!(parts_of(&again), ["#### 1: again", "#### 2"]);
        ws.close(None).await.unwrap();
    });
    let answered = gw.wait_audits(2, |a| a["route"] == "/v1/ws" && a["decision"] == "answered");
    assert_eq!(answered.len(), 2, "{}", gw.log_text());
}

/// A message released by its confirmation code streams like any other.
#[test]
fn a_confirmed_message_streams_its_reply() {
    let ai = HeldAssistant::start();
    let gw = streaming_gateway(&ai);
    let token = gw.token("erin", &[]);
    common::rt().block_on(async {
        let mut ws = open(&gw, Some(&token)).await.expect("upgrade");
        let held = say(&mut ws, "h1", "/reboot").await;
        let held = error_of(&held);
        assert_eq!(held["error"], "confirmation_required", "{held}");
        let message = held["message"].as_str().unwrap();
        let code = message
            .rsplit_once("(code ")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("a code in {message}"));
        let released = say(&mut ws, "h2", code).await;
        assert_eq!(parts_of(&released), ["#### 1: /reboot", "#### 2"]);
    });
    let forwarded = gw.wait_audit(|a| a["route"] == "/v1/ws" && a["reason"] == "confirmed");
    assert_eq!(forwarded["decision"], "answered", "{forwarded}");
}
