//! Test harness: starts the real `moltgate` binary on ephemeral loopback
//! ports with its own config, policies and dev certificates, and talks to it
//! over real TLS.
#![allow(dead_code)]

pub mod fake_api;
pub mod fake_openai;
pub mod fake_ws;
pub mod mosquitto;
pub mod openclaw;
pub mod platforms;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_moltgate");

/// A free loopback port (bound then released; the kernel does not hand it
/// out again immediately).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The HS256 secret of [`SECURITY_POLICY`]: at least 32 bytes and not a
/// published default, or the gateway refuses to start with it.
pub const JWT_SECRET: &str = "moltgate-tests-hs256-key-7Kq2xW9pLm4vZt8R";

/// The JWT policy used by tests (its secret is [`JWT_SECRET`]).
pub const SECURITY_POLICY: &str = "jwt_validation:\n  issuer: auth.example.com\n  audiences: [moltbot.api]\n  leeway: 5\n  algorithms: [HS256]\n  secret: moltgate-tests-hs256-key-7Kq2xW9pLm4vZt8R\n";

/// Allows every message on every route (tests of other stages).
pub const ALLOW_ALL_ABAC: &str = "policies:\n  - id: allow_all\n    effect: Allow\n    resources: [\"/**\"]\n    actions: [\"*\", \"command:*\"]\n";

/// A running gateway, killed on drop.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub public: u16,
    pub admin: u16,
    pub child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// Files and settings for one gateway.
pub struct Setup {
    pub upstreams: String,
    pub routes: String,
    pub extra: String,
    pub policies: Vec<(&'static str, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            upstreams: "  assistant: { kind: grpc, nodes: [embedded], balance: conversation, timeout: 5s }\n".into(),
            routes: "  - { path: /v1/messages, platform: generic, upstream: assistant }\n".into(),
            extra: String::new(),
            policies: vec![("security_policy.yaml", SECURITY_POLICY.into()), ("abac.yaml", ALLOW_ALL_ABAC.into())],
        }
    }
}

impl Setup {
    /// Writes config, policies and certs into a new temp dir; returns (dir, ports, config path).
    pub fn write(&self) -> (tempfile::TempDir, u16, u16, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (public, admin) = (free_port(), free_port());
        let status = Command::new(BIN)
            .args(["certs", "dev"])
            .arg(dir.path().join("certs"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        for (name, text) in &self.policies {
            let path = dir.path().join("policies").join(name);
            // `adapters/acme.yaml` and the like: the subdirectory too.
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let config = format!(
            "listen:\n  public: {{ address: 127.0.0.1:{public}, tls: {{ cert: certs/server.crt, key: certs/server.key }} }}\n  admin: {{ address: 127.0.0.1:{admin} }}\npolicies: policies/\nupstreams:\n{}routes:\n{}shutdown: {{ grace_period: 1s, timeout: 1s }}\nlog: {{ format: json, level: info }}\n{}",
            self.upstreams, self.routes, self.extra
        );
        let path = dir.path().join("moltgate.yaml");
        std::fs::write(&path, config).unwrap();
        (dir, public, admin, path)
    }

    /// Starts a gateway and waits until `/healthz` answers and the public
    /// port accepts connections. Ports are picked free then released, so
    /// another process can take one first: then start again on new ports.
    pub fn start(&self) -> Gateway {
        self.start_prepared(|_| {})
    }

    /// [`Setup::start`], with `prepare` run on the written directory (its
    /// files in place) before the gateway starts.
    pub fn start_prepared(&self, prepare: impl Fn(&Path)) -> Gateway {
        for attempt in 1..=3 {
            let (dir, public, admin, path) = self.write();
            prepare(dir.path());
            let mut child = Command::new(BIN)
                .arg("run")
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let logs = Arc::new(Mutex::new(Vec::new()));
            let stderr = child.stderr.take().unwrap();
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
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
            if gw.wait_started() {
                return gw;
            }
            eprintln!(
                "gateway start attempt {attempt} failed (port taken?); logs:\n{}",
                gw.log_text()
            );
        }
        panic!("the gateway did not start in 3 attempts");
    }
}

impl Gateway {
    /// Waits (bounded) until the process serves both listeners; false if it exited.
    fn wait_started(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            let admin_up = admin_get(self.admin, "/healthz").map(|(s, _)| s) == Some(200);
            // `None`: the public port does not listen yet.
            if let Some(own) = admin_up.then(|| self.serves_own_port()).flatten() {
                return own;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the public port completes a TLS handshake that trusts only
    /// this gateway's own dev CA: `None` while nothing listens. A port picked
    /// free can be taken by another process first; the gateway then retries
    /// its bind (Pingora does, for 30 s) while the other process accepts, and
    /// a plain connect would take that process for this gateway.
    fn serves_own_port(&self) -> Option<bool> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.public))
                .await
                .ok()?;
            let handshake = tls_over(self, tcp);
            Some(matches!(
                tokio::time::timeout(Duration::from_secs(5), handshake).await,
                Ok(Ok(_))
            ))
        })
    }

    /// Polls an admin path until it answers `status` (bounded: 15 s).
    pub fn wait_admin(&self, path: &str, status: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if admin_get(self.admin, path).map(|(s, _)| s) == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered {status}; logs:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.public)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("moltgate.yaml")
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// A reqwest client that trusts only the dev CA; h2 via ALPN unless `http1`.
    pub fn client(&self, http1: bool) -> reqwest::Client {
        client_for(&self.ca(), http1)
    }

    /// Mints a token with the CLI, as a user would.
    pub fn token(&self, sub: &str, claims: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["token", "-c"])
            .arg(self.config_path())
            .args(["--sub", sub]);
        for c in claims {
            cmd.args(["--claim", c]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the log has `needle`: the log is read from the
    /// gateway's stderr by another thread, so a line the gateway wrote may
    /// not be in yet when its effect is visible.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Audit lines (parsed JSON) written so far.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "moltgate::audit")
            .collect()
    }

    /// Waits (bounded) until an audit line satisfies `pred`.
    pub fn wait_audit(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.audit_lines().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit line; logs:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until at least `n` audit lines satisfy `pred` (they
    /// arrive asynchronously through stderr); returns every matching line.
    pub fn wait_audits(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self.audit_lines().into_iter().filter(|v| pred(v)).collect();
            if found.len() >= n || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics").unwrap().1
    }

    /// Sends a signal and waits for exit (bounded); returns the exit status.
    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not stop on {sig}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A reqwest client trusting `ca`.
pub fn client_for(ca: &Path, http1: bool) -> reqwest::Client {
    let mut tls = rustls::ClientConfig::builder_with_provider(moltgate::tls::client_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    tls.alpn_protocols = if http1 {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(20))
        .no_proxy();
    if http1 {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A root store with just the dev CA.
pub fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// A raw TLS 1.3 (HTTP/1.1) stream to the public listener, for tests that
/// write bytes no HTTP client would.
pub async fn raw_tls(gw: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tcp_from(gw, std::net::Ipv4Addr::LOCALHOST).await;
    tls_over(gw, tcp).await.unwrap()
}

/// A TCP connection to the public listener from the loopback address `src`
/// (any of 127.0.0.0/8), so one test can be several clients.
pub async fn tcp_from(gw: &Gateway, src: std::net::Ipv4Addr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((src, 0).into()).unwrap();
    socket
        .connect((std::net::Ipv4Addr::LOCALHOST, gw.public).into())
        .await
        .unwrap()
}

/// A TLS handshake over `tcp`, trusting the gateway's dev CA.
pub async fn tls_over(
    gw: &Gateway,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let cfg = rustls::ClientConfig::builder_with_provider(moltgate::tls::client_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&gw.ca()))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// A blocking GET on the admin listener: (status, body).
pub fn admin_get(port: u16, path: &str) -> Option<(u16, String)> {
    admin_request(port, "GET", path)
}

/// A blocking request on the admin listener, as an operator's tool sends it
/// (`Content-Type: application/json`, which `POST /reload` needs without an
/// admin token): (status, body). A reload refused by the reload interval
/// (429) is retried after its `Retry-After`.
pub fn admin_request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    for _ in 0..5 {
        let (status, head, body) =
            admin_raw(port, method, path, &[("content-type", "application/json")])?;
        if status != 429 || path != "/reload" {
            return Some((status, body));
        }
        let wait = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        std::thread::sleep(Duration::from_millis(wait * 1000 + 50));
    }
    None
}

/// One blocking HTTP/1.1 request on the admin listener with `Host:
/// localhost` and extra `headers` (a `host` among them replaces it):
/// (status, response head, body).
pub fn admin_raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
    Some((status, head.to_string(), body.to_string()))
}

/// A running `moltgate assistant` node, killed on drop.
pub struct AssistantNode {
    pub port: u16,
    pub child: Child,
}

impl AssistantNode {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new(BIN)
            .args(["assistant", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "assistant did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AssistantNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A multi-thread Tokio runtime for a test's async client code.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The sum of every series of metric `name` whose labels include `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Envelopes the embedded assistant accepted.
pub fn accepted(gw: &Gateway) -> f64 {
    metric(
        &gw.metrics(),
        "moltgate_upstream_attempts_total",
        &[("node", "embedded"), ("result", "accepted")],
    )
}

/// POSTs `body` to `path` over HTTP/1.1 with extra headers.
pub async fn post(
    gw: &Gateway,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = gw
        .client(true)
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    req.send().await.unwrap()
}

/// A body sent as a stream of chunks, without Content-Length.
pub fn streamed(body: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
        .chunks(1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

/// Asserts the answer's status and that it is the JSON error `reason`.
pub async fn expect_refusal(resp: reqwest::Response, status: u16, reason: &str) {
    assert_eq!(resp.status(), status, "expected {reason}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], reason, "{body}");
}

/// Seconds since the Unix epoch, for signed timestamps.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A gRPC `Assistant` node in the test process that answers like the demo
/// assistant (`echo: <text> (turn N)`) and records every `Envelope` it
/// receives, so a test can check everything the AI saw (attachments,
/// attributes and context included), not only the echoed text.
pub struct RecordingAssistant {
    pub port: u16,
    envelopes: Arc<Mutex<Vec<moltgate::proto::Envelope>>>,
    _rt: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Recorder(Arc<Mutex<Vec<moltgate::proto::Envelope>>>, Option<Script>);

/// A scripted answer: `reply` (where `{text}` is the message's text) sent
/// as reply parts of `piece` bytes each (split on character boundaries), as
/// an assistant that streams its answer token by token would.
#[derive(Clone)]
pub struct Script {
    pub reply: String,
    pub piece: usize,
}

impl Script {
    fn stream(&self, env: &moltgate::proto::Envelope) -> moltgate::assistant::ReplyStream {
        use moltgate::proto::v1::{reply, Accepted, Final, Reply, TextPart};
        let text = env.content.as_ref().map(|c| c.text.as_str()).unwrap_or("");
        let whole = self.reply.replace("{text}", text);
        let mut kinds = vec![reply::Kind::Accepted(Accepted {})];
        let mut rest = whole.as_str();
        while !rest.is_empty() {
            let mut cut = self.piece.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            kinds.push(reply::Kind::Text(TextPart {
                text: rest[..cut].to_string(),
            }));
            rest = &rest[cut..];
        }
        kinds.push(reply::Kind::Final(Final::default()));
        let id = env.id.clone();
        Box::pin(futures::stream::iter(kinds.into_iter().map(move |kind| {
            Ok(Reply {
                envelope_id: id.clone(),
                kind: Some(kind),
            })
        })))
    }
}

#[tonic::async_trait]
impl moltgate::proto::v1::assistant_server::Assistant for Recorder {
    type HandleStream = moltgate::assistant::ReplyStream;

    async fn handle(
        &self,
        request: tonic::Request<moltgate::proto::Envelope>,
    ) -> Result<tonic::Response<Self::HandleStream>, tonic::Status> {
        self.0.lock().unwrap().push(request.get_ref().clone());
        Ok(tonic::Response::new(match &self.1 {
            Some(script) => script.stream(request.get_ref()),
            None => moltgate::assistant::DemoAssistant::stream(request.get_ref()),
        }))
    }
}

/// A one-worker runtime that keeps serving a fake in the background for as
/// long as the fake lives.
pub fn background_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

impl RecordingAssistant {
    /// Serves on an ephemeral loopback port (bound before this returns),
    /// answering as the demo assistant does.
    pub fn start() -> Self {
        Self::start_with(None, 0)
    }

    /// Serves on `port` (chosen earlier: a gateway configured with it finds
    /// no assistant until this runs).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(None, port)
    }

    /// Serves, answering every message with `script`.
    pub fn scripted(script: Script) -> Self {
        Self::start_with(Some(script), 0)
    }

    fn start_with(script: Option<Script>, port: u16) -> Self {
        let rt = background_rt();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let envelopes = Arc::new(Mutex::new(Vec::new()));
        let service = moltgate::proto::v1::assistant_server::AssistantServer::new(Recorder(
            envelopes.clone(),
            script,
        ));
        rt.spawn(async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_serving::<moltgate::proto::v1::assistant_server::AssistantServer<Recorder>>()
                .await;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            port,
            envelopes,
            _rt: rt,
        }
    }

    /// Every envelope received so far, in arrival order.
    pub fn envelopes(&self) -> Vec<moltgate::proto::Envelope> {
        self.envelopes.lock().unwrap().clone()
    }
}
