//! A fake chat-platform API for writeback tests: a real HTTP/1.1 server on a
//! loopback port that records every request and answers with one body that
//! satisfies every platform's success check (`ok`, `code`, `errcode`, and the
//! token fields of Feishu and WeCom). Point a route's `api_base` at it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body as JSON (panics in tests if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON: {e}", self.path))
    }
}

/// The universal success answer.
pub const OK_BODY: &str = r#"{"ok":true,"code":0,"errcode":0,"errmsg":"ok","msg":"ok","tenant_access_token":"t-fake-token","expire":7200,"access_token":"at-fake-token","expires_in":7200,"result":{}}"#;

/// Scripted failures: path prefix -> statuses to answer before succeeding.
type Failures = Arc<Mutex<Vec<(String, Vec<u16>)>>>;

/// The running fake; stops with its runtime thread when dropped.
pub struct FakeApi {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// Scripted failures: path prefix -> remaining statuses to answer first.
    failures: Failures,
    _rt: tokio::runtime::Runtime,
}

impl FakeApi {
    /// Starts the fake on an ephemeral loopback port.
    pub fn start() -> Self {
        Self::start_on(0).unwrap()
    }

    /// Starts the fake on loopback port `port` (0: an ephemeral one); fails
    /// when the port is taken. A test uses it to bring a "down" bot up on
    /// the port a route already points at.
    pub fn start_on(port: u16) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", port)))?;
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failures: Failures = Arc::new(Mutex::new(Vec::new()));
        let (reqs, fails) = (requests.clone(), failures.clone());
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reqs, fails) = (reqs.clone(), fails.clone());
                tokio::spawn(serve(stream, reqs, fails));
            }
        });
        Ok(Self {
            port,
            requests,
            failures,
            _rt: rt,
        })
    }

    /// `http://127.0.0.1:PORT`, for a route's `api_base`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers the next requests under `path_prefix` with `statuses` first.
    pub fn fail_next(&self, path_prefix: &str, statuses: &[u16]) {
        self.failures
            .lock()
            .unwrap()
            .push((path_prefix.to_string(), statuses.to_vec()));
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }

    /// Waits (bounded, 10 s) until `n` requests under `prefix` have arrived.
    pub fn wait_for(&self, prefix: &str, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.requests_to(prefix);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} request(s) to {prefix}, got {}: {:?}",
                got.len(),
                self.requests().iter().map(|r| &r.path).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Answers one connection's requests (keep-alive) until it closes.
async fn serve(stream: tokio::net::TcpStream, reqs: Arc<Mutex<Vec<Recorded>>>, fails: Failures) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).await.is_err() {
            return;
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target.clone(), String::new()),
        };
        let status = {
            let mut f = fails.lock().unwrap();
            f.iter_mut()
                .find(|(prefix, left)| path.starts_with(prefix.as_str()) && !left.is_empty())
                .map(|(_, left)| left.remove(0))
                .unwrap_or(200)
        };
        reqs.lock().unwrap().push(Recorded {
            method,
            path,
            query,
            headers,
            body,
        });
        let body = if status == 200 {
            OK_BODY
        } else {
            r#"{"ok":false,"code":1,"errcode":1}"#
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
