//! A WebSocket bot gateway for passthrough tests, where the real OpenClaw
//! cannot be driven: plain `ws://` on loopback, OpenClaw-shaped frames
//! (`connect.challenge`, `res`, `chat`/`agent` events), and a record of
//! every upgrade request and text frame that reached it.
//!
//! On each connection it sends the challenge event, then answers every
//! `req`:
//! - `chat.send`: a `res` echoing `params.message`; if the message says
//!   "phone", the answer streams "call me at 138" + "0013" + "8000" as
//!   `agent` and `chat` events, as OpenClaw does, then `chat` `final`;
//! - `big`: a text frame of `params.size` bytes;
//! - `binary`: a binary frame;
//! - anything else: a `res` with the frame it got.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// What reached the fake.
#[derive(Default, Clone)]
pub struct Seen {
    /// Each upgrade request: path and headers.
    pub upgrades: Vec<(String, http::HeaderMap)>,
    /// Each text frame, as its bytes arrived.
    pub frames: Vec<String>,
}

/// The running fake.
pub struct FakeWsBot {
    /// Its loopback port.
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeWsBot {
    /// Serves on an ephemeral loopback port (bound before this returns).
    pub fn start() -> Self {
        let rt = super::background_rt();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let record = seen.clone();
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(tcp, record.clone()));
            }
        });
        Self {
            port,
            seen,
            _rt: rt,
        }
    }

    /// `host:port`, as a `kind: http` upstream's node.
    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What reached it so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

async fn connection(tcp: tokio::net::TcpStream, seen: Arc<Mutex<Seen>>) {
    let record = seen.clone();
    // tungstenite's callback type returns its large `ErrorResponse`.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, resp: Response| {
        let path = req.uri().path().to_string();
        record
            .lock()
            .unwrap()
            .upgrades
            .push((path, req.headers().clone()));
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    let challenge =
        json!({"type":"event","event":"connect.challenge","payload":{"nonce":"n-1","ts":1}});
    if ws.send(Message::text(challenge.to_string())).await.is_err() {
        return;
    }
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        seen.lock().unwrap().frames.push(text.to_string());
        let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        for answer in answers(&frame) {
            if ws.send(answer).await.is_err() {
                return;
            }
        }
    }
}

fn answers(frame: &Value) -> Vec<Message> {
    let id = frame["id"].clone();
    let message = frame["params"]["message"].as_str().unwrap_or_default();
    match frame["method"].as_str().unwrap_or_default() {
        "chat.send" => {
            let run = format!("run-{}", id.as_str().unwrap_or("x"));
            let mut out = vec![
                json!({"type":"res","id":id,"ok":true,"payload":{"runId":run,"echo":message}}),
            ];
            if message.contains("phone") {
                out.extend(phone_turn(&run));
            }
            out.into_iter()
                .map(|v| Message::text(v.to_string()))
                .collect()
        }
        "big" => {
            let size = frame["params"]["size"].as_u64().unwrap_or(0) as usize;
            vec![Message::text("x".repeat(size))]
        }
        "binary" => vec![Message::binary(vec![1u8, 2, 3])],
        _ => vec![Message::text(
            json!({"type":"res","id":id,"ok":true,"payload":{"got":frame}}).to_string(),
        )],
    }
}

/// The frames OpenClaw sends for a model answer streamed in three pieces.
fn phone_turn(run: &str) -> Vec<Value> {
    let pieces = ["call me at 138", "0013", "8000"];
    let mut text = String::new();
    let mut out = Vec::new();
    for piece in pieces {
        text.push_str(piece);
        out.push(json!({"type":"event","event":"agent","payload":{"runId":run,"stream":"assistant","data":{"text":text,"delta":piece}}}));
        out.push(json!({"type":"event","event":"chat","payload":{"runId":run,"state":"delta","deltaText":piece,"message":{"role":"assistant","content":[{"type":"text","text":text}]}}}));
    }
    out.push(json!({"type":"event","event":"agent","payload":{"runId":run,"stream":"lifecycle","data":{"phase":"end","terminalReply":{"text":text}}}}));
    out.push(json!({"type":"event","event":"chat","payload":{"runId":run,"state":"final","message":{"role":"assistant","content":[{"type":"text","text":text}]}}}));
    out
}
