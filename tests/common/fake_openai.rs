//! A fake OpenAI-compatible model server for the real OpenClaw gateway
//! (tests/common/openclaw.rs): a real HTTP/1.1 server on a loopback port that
//! answers Chat Completions with a scripted answer and records every request.
//!
//! What OpenClaw 2026.9.6 sends to a custom provider with
//! `api: "openai-completions"` (the default for a custom `baseUrl`), as seen
//! on the wire: one `POST {baseUrl}/chat/completions` per model turn, by the
//! `openai` JS SDK 7.15 (`user-agent: OpenAI/JS 7.15.0`,
//! `authorization: Bearer <apiKey>`, `content-length`, keep-alive), with
//! `{"model","messages","stream":true,"stream_options":{"include_usage":true},
//! "tools":[…11 tools…],"tool_choice":"auto","max_completion_tokens"}`. The
//! messages are a ~50 KB `system` prompt, the user's turn as a `user` string
//! `"[Sun 2026-12-06 13:05 UTC] <the chat.send message>\n\nRuntime: …"`, and a
//! `user` message with content parts (OpenClaw's internal context). It does
//! not call the Responses API (`/v1/responses`) unless the provider says
//! `api: "openai-responses"`, and it does not list `/v1/models`.
//!
//! The answer streams as Server-Sent Events: a role chunk, one
//! `chat.completion.chunk` per scripted piece (with a pause between them, so
//! they arrive as separate increments), a `finish_reason: "stop"` chunk, a
//! usage chunk, and `data: [DONE]`; then the connection closes. A request
//! with `stream: false` gets one `chat.completion` object.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

pub use super::fake_api::Recorded;

/// The model id the fake serves (OpenClaw's `fake/fake-model`).
pub const MODEL: &str = "fake-model";

/// The default answer, in pieces that split a phone number (mainland mobile
/// 13800138000) across three stream chunks.
pub const PHONE_CHUNKS: [&str; 3] = ["call me at 138", "0013", "8000"];

/// [`PHONE_CHUNKS`] joined: the text the client sees when nothing masks it.
pub const PHONE_TEXT: &str = "call me at 13800138000";

/// The pause between two streamed pieces.
pub const CHUNK_PAUSE: Duration = Duration::from_millis(80);

struct Script {
    /// Answers for the next model calls, in order.
    queue: VecDeque<Vec<String>>,
    /// The answer once the queue is empty.
    default: Vec<String>,
    /// When set, a streamed answer waits for it before its last piece.
    gate: Option<Arc<tokio::sync::Notify>>,
}

/// The running fake; stops with its runtime when dropped.
pub struct FakeOpenAi {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Script>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeOpenAi {
    /// Starts the fake on an ephemeral loopback port, answering
    /// [`PHONE_CHUNKS`] until told otherwise.
    pub fn start() -> Self {
        let rt = super::background_rt();
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", 0))).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script {
            queue: VecDeque::new(),
            default: PHONE_CHUNKS.iter().map(|s| s.to_string()).collect(),
            gate: None,
        }));
        let (reqs, scr) = (requests.clone(), script.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, reqs.clone(), scr.clone()));
            }
        });
        Self {
            port,
            requests,
            script,
            _rt: rt,
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the provider's `baseUrl`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The next model call answers `pieces` (queued after earlier ones).
    pub fn push_reply(&self, pieces: &[&str]) {
        self.script
            .lock()
            .unwrap()
            .queue
            .push_back(pieces.iter().map(|s| s.to_string()).collect());
    }

    /// From now on a streamed answer sends its last piece only after the
    /// returned gate is notified (`notify_one`), so a test knows the upstream
    /// has not finished while it reads the first chunks.
    pub fn hold_last_piece(&self) -> Arc<tokio::sync::Notify> {
        let gate = Arc::new(tokio::sync::Notify::new());
        self.script.lock().unwrap().gate = Some(gate.clone());
        gate
    }

    /// Every model call without a queued answer answers `pieces`.
    pub fn set_default_reply(&self, pieces: &[&str]) {
        self.script.lock().unwrap().default = pieces.iter().map(|s| s.to_string()).collect();
    }

    /// Everything received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The bodies of the Chat Completions calls so far.
    pub fn chat_requests(&self) -> Vec<serde_json::Value> {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .map(|r| r.json())
            .collect()
    }

    /// Whether any request body contains `needle`, raw or as the text of any
    /// JSON string in it (so an escaped value counts too).
    pub fn saw(&self, needle: &str) -> bool {
        self.requests().iter().any(|r| {
            String::from_utf8_lossy(&r.body).contains(needle)
                || serde_json::from_slice::<serde_json::Value>(&r.body)
                    .map(|v| json_strings(&v).iter().any(|s| s.contains(needle)))
                    .unwrap_or(false)
        })
    }

    /// Every JSON string value in every request body (message texts, tool
    /// descriptions, …), for assertions of what never reached the model.
    pub fn all_text(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .flat_map(|v| json_strings(&v))
            .collect()
    }

    /// Waits (bounded) until `n` Chat Completions calls have arrived.
    pub fn wait_chat_requests(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.chat_requests();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Every string in a JSON value, depth first.
pub fn json_strings(v: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(v, &mut out);
    out
}

fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

/// One request off the wire: (method, target, headers, body). `None` when
/// the connection closed or sent something unreadable.
async fn read_request<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> Option<(String, String, HashMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await.ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body
    } else {
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await.ok()?;
        body
    };
    Some((method, target, headers, body))
}

/// Answers one connection's requests until it closes (after a stream, the
/// fake closes it: the end of the event stream is the end of the body).
async fn serve(
    stream: tokio::net::TcpStream,
    reqs: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Script>>,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    while let Some((method, target, headers, body)) = read_request(&mut r).await {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        reqs.lock().unwrap().push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query,
            headers,
            body: body.clone(),
        });
        let keep_open = match (method.as_str(), path.as_str()) {
            ("POST", p) if p.ends_with("/chat/completions") => {
                let req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let (pieces, gate) = {
                    let mut s = script.lock().unwrap();
                    let pieces = s.queue.pop_front().unwrap_or_else(|| s.default.clone());
                    (pieces, s.gate.clone())
                };
                if req["stream"].as_bool() == Some(true) {
                    stream_answer(&mut w, &req, &pieces, gate).await;
                    false
                } else {
                    whole_answer(&mut w, &req, &pieces).await
                }
            }
            ("GET", p) if p.ends_with("/models") => {
                let list = serde_json::json!({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "moltgate-tests"}]});
                respond_json(&mut w, "200 OK", &list).await
            }
            _ => {
                let err = serde_json::json!({"error": {"message": format!("no route {method} {path}"), "type": "invalid_request_error", "code": "not_found"}});
                respond_json(&mut w, "404 Not Found", &err).await
            }
        };
        if !keep_open {
            return;
        }
    }
}

/// Writes a JSON response (keep-alive); false when the write failed.
async fn respond_json(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    status: &str,
    body: &serde_json::Value,
) -> bool {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    w.write_all(head.as_bytes()).await.is_ok() && w.write_all(body.as_bytes()).await.is_ok()
}

/// A `stream: false` answer: one `chat.completion`.
async fn whole_answer(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    req: &serde_json::Value,
    pieces: &[String],
) -> bool {
    let answer = serde_json::json!({
        "id": "chatcmpl-moltgate-fake",
        "object": "chat.completion",
        "created": 1,
        "model": req["model"].as_str().unwrap_or(MODEL),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": pieces.concat()}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": pieces.len(), "total_tokens": 10 + pieces.len()},
    });
    respond_json(w, "200 OK", &answer).await
}

/// A `stream: true` answer as Server-Sent Events, then the end of the body.
async fn stream_answer(
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    req: &serde_json::Value,
    pieces: &[String],
    gate: Option<Arc<tokio::sync::Notify>>,
) {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    if w.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let model = req["model"].as_str().unwrap_or(MODEL).to_string();
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({
            "id": "chatcmpl-moltgate-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        None,
    )];
    events.extend(
        pieces
            .iter()
            .map(|p| chunk(serde_json::json!({"content": p}), None)),
    );
    events.push(chunk(serde_json::json!({}), Some("stop")));
    if req["stream_options"]["include_usage"].as_bool() == Some(true) {
        events.push(serde_json::json!({
            "id": "chatcmpl-moltgate-fake",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": pieces.len(), "total_tokens": 10 + pieces.len()},
        }));
    }
    for (i, event) in events.iter().enumerate() {
        // A pause before every content piece after the first, so each
        // arrives in its own read on OpenClaw's side.
        if i > 1 && i <= pieces.len() {
            tokio::time::sleep(CHUNK_PAUSE).await;
        }
        if i == pieces.len() {
            if let Some(gate) = &gate {
                gate.notified().await;
            }
        }
        let frame = format!("data: {event}\n\n");
        if w.write_all(frame.as_bytes()).await.is_err() {
            return;
        }
        let _ = w.flush().await;
    }
    let _ = w.write_all(b"data: [DONE]\n\n").await;
    let _ = w.shutdown().await;
}
