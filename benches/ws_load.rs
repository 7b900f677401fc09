//! The two ends of `benches/load/ws.sh` (issue 14's load figure): WebSocket
//! message frames per second through `platform: websocket, mode:
//! passthrough`, against a direct connection to the same upstream.
//!
//! ```text
//! ws_load upstream --port P [--workers N] [--events delta,final|delta|final]
//! ws_load client --url ws://…|wss://… [--ca FILE] [--token JWT] [--events …]
//!                [--connections C] [--duration S] [--warmup W]
//!                [--max-frames N] [--timeout S] [--threads N] [--run N]
//! ```
//!
//! - `upstream`: a minimal OpenClaw-shaped bot gateway, plain `ws://` on
//!   127.0.0.1 (no extension: tungstenite negotiates no permessage-deflate).
//!   Every `req` frame is answered with a `res` (`ok: true`, the request's
//!   id, a payload echoing `params.message`) and `chat` events of the same
//!   run (`runId` = the request's id) carrying the text back, written
//!   together in one flush. `--events` (default `delta,final`, OpenClaw's
//!   shape of a one-piece answer): a `delta` (`deltaText` and
//!   `message.content[0].text`), then a `final` (`message` only), which
//!   ends the run. `delta` alone leaves the run open, so a streaming-safe
//!   masker in between may hold the text's tail back (moltgate does, for
//!   any tail a pattern could still extend): use it only without one.
//!   Other frames are ignored.
//! - `client`: opens C connections, then runs a closed loop on each for
//!   W s unmeasured and S s measured: a `chat.send` `req` with a unique id
//!   and a unique text (`… (m<run>c<connection>n<counter>)`, digit runs kept
//!   under 11 digits so no DLP number pattern matches), then waits for its
//!   `res` and its `chat` events (the same `--events` as the upstream)
//!   before the next. An answer counts only if the `res` is `ok: true` and
//!   echoes the exact text, and the events carry the exact text back: the
//!   `final` (or a lone `delta`) the whole text, a `delta` before a `final`
//!   a prefix of it (so it came from the upstream, through egress
//!   inspection, unmasked and complete). A refusal (`ok:
//!   false`, an `error` frame) is counted apart and the connection kept; a
//!   close, a read error, a timeout or a wrong answer is an error, and the
//!   connection is opened again. Bounded by the duration and by
//!   `--max-frames` (frames sent in all, warm-up included). One JSON line
//!   on stdout: frames/s (answered, measured window), p50/p99 round trip,
//!   the failure counts, and the client's own CPU time over the whole run
//!   (`cpu_s`, getrusage).
//!
//! Under `cargo bench` (argument `--bench`, no subcommand) it prints its
//! usage and exits 0: it is a tool for the script, not a criterion bench.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

const USAGE: &str = "\
ws_load: the WebSocket load tool of benches/load/ws.sh (not a criterion bench)
  ws_load upstream --port P [--workers N] [--events delta,final|delta|final]
  ws_load client --url ws://HOST:PORT/PATH|wss://HOST:PORT/PATH [--ca FILE] [--token JWT]
                 [--events delta,final|delta|final] [--connections C] [--duration S] [--warmup W] [--max-frames N]
                 [--timeout S] [--threads N] [--run N]";

/// The user's text; the unique tag goes at its end, in parentheses.
const TEXT: &str = "Hi! Can you summarise the incident report and list the follow-up actions for the on-call team?";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("upstream") => upstream(&args[1..]),
        Some("client") => client(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            // `cargo bench` runs every bench with `--bench`: nothing to do.
            eprintln!("{USAGE}\n(run by benches/load/ws.sh; nothing to do here)");
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("ws_load: {e}");
        std::process::exit(2);
    }
}

// ------------------------------------------------------------------ flags

/// `--name value` / `--name=value` pairs, each name from `known`, once.
struct Flags(BTreeMap<String, String>);

impl Flags {
    fn parse(args: &[String], known: &[&str]) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument '{arg}'\n{USAGE}"));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| format!("--{flag} needs a value"))?;
                    (flag.to_string(), v.clone())
                }
            };
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown flag --{name}\n{USAGE}"));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self(map))
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.0.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: '{v}' is not a valid number")),
        }
    }

    fn secs(&self, name: &str, default: f64) -> Result<Duration, String> {
        let s: f64 = self.num(name, default)?;
        if !(0.0..=3600.0).contains(&s) {
            return Err(format!("--{name}: {s} is not 0..3600 seconds"));
        }
        Ok(Duration::from_secs_f64(s))
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    if !(1..=64).contains(&threads) {
        return Err(format!("threads/workers must be 1..64, not {threads}"));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

// ------------------------------------------------------------------ frames

/// What either end reads of a frame.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// Which `chat` events answer a request: a `delta`, a `final`, or both.
#[derive(Clone, Copy)]
struct Events {
    delta: bool,
    last: bool,
}

impl Events {
    fn parse(flag: Option<&str>) -> Result<Self, String> {
        match flag.unwrap_or("delta,final") {
            "delta,final" => Ok(Self {
                delta: true,
                last: true,
            }),
            "delta" => Ok(Self {
                delta: true,
                last: false,
            }),
            "final" => Ok(Self {
                delta: false,
                last: true,
            }),
            other => Err(format!(
                "--events: '{other}' is not delta,final, delta or final"
            )),
        }
    }
}

// ------------------------------------------------------------------ upstream

fn upstream(args: &[String]) -> Result<(), String> {
    let f = Flags::parse(args, &["port", "workers", "events"])?;
    let port: u16 = f.num("port", 0)?;
    let workers: usize = f.num("workers", 1)?;
    let events = Events::parse(f.str("events"))?;
    runtime(workers)?.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("bind 127.0.0.1:{port}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("listening {local}");
        let _ = std::io::stdout().flush();
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("ws_load upstream: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve(tcp, events));
        }
    })
}

/// One connection: a `res` and the `chat` events for every `req`.
async fn serve(tcp: TcpStream, events: Events) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut seq = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            // Pings are answered by tungstenite itself.
            _ => continue,
        };
        let Ok(req) = serde_json::from_str::<Frame>(text.as_str()) else {
            continue;
        };
        if req.kind != "req" {
            continue;
        }
        let id = req.id.unwrap_or_default();
        let message = req
            .params
            .as_ref()
            .and_then(|p| p.get("message"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let res = json!({
            "type": "res", "id": id, "ok": true,
            "payload": {"runId": id, "status": "started", "message": message},
        });
        let content = json!({"role": "assistant", "content": [{"type": "text", "text": message}]});
        let mut frames = vec![res.to_string()];
        for (state, wanted) in [("delta", events.delta), ("final", events.last)] {
            if !wanted {
                continue;
            }
            seq += 1;
            let mut payload = json!({
                "runId": id, "sessionKey": "agent:main:bench", "seq": frames.len(),
                "state": state, "message": content,
            });
            if state == "delta" {
                payload["deltaText"] = Value::String(message.clone());
            }
            let event = json!({"type": "event", "event": "chat", "payload": payload, "seq": seq});
            frames.push(event.to_string());
        }
        let sent = async {
            for frame in frames {
                ws.feed(Message::text(frame)).await?;
            }
            ws.flush().await
        };
        if sent.await.is_err() {
            break;
        }
    }
}

// ------------------------------------------------------------------ client

struct Target {
    url: String,
    addr: String,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    events: Events,
}

fn client(args: &[String]) -> Result<(), String> {
    let f = Flags::parse(
        args,
        &[
            "url",
            "ca",
            "token",
            "connections",
            "duration",
            "warmup",
            "max-frames",
            "timeout",
            "threads",
            "run",
            "events",
        ],
    )?;
    let url = f.str("url").ok_or("--url is required")?.to_string();
    let uri: http::Uri = url.parse().map_err(|e| format!("--url: {e}"))?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err("--url must start with ws:// or wss://".into()),
    };
    let host = uri.host().ok_or("--url has no host")?;
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tls = match (secure, f.str("ca")) {
        (false, _) => None,
        (true, Some(ca)) => Some(tls_config(ca)?),
        (true, None) => return Err("wss:// needs --ca FILE (the server's CA, PEM)".into()),
    };
    let connections: usize = f.num("connections", 32)?;
    if !(1..=10_000).contains(&connections) {
        return Err("--connections must be 1..10000".into());
    }
    let max_frames: u64 = f.num("max-frames", 5_000_000)?;
    if !(1..=50_000_000).contains(&max_frames) {
        return Err("--max-frames must be 1..50000000".into());
    }
    let duration = f.secs("duration", 10.0)?;
    if duration.is_zero() {
        return Err("--duration must be above 0".into());
    }
    let warmup = f.secs("warmup", 2.0)?;
    let timeout = f.secs("timeout", 5.0)?;
    let threads: usize = f.num("threads", 1)?;
    let run: u32 = match f.str("run") {
        Some(_) => f.num("run", 0)?,
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 1_000_000
        }
    };
    if run >= 1_000_000 {
        return Err("--run must be below 1000000 (digit runs stay short for DLP)".into());
    }
    let target = Arc::new(Target {
        url: url.clone(),
        addr: format!("{host}:{port}"),
        token: f.str("token").map(str::to_string),
        tls,
        events: Events::parse(f.str("events"))?,
        timeout: if timeout.is_zero() {
            Duration::from_secs(5)
        } else {
            timeout
        },
    });
    let cpu_before = cpu_seconds();
    let report =
        runtime(threads)?.block_on(load(target, connections, warmup, duration, max_frames, run));
    let cpu = cpu_seconds() - cpu_before;
    let mut summary = report.summary();
    summary["cpu_s"] = json!((cpu * 1000.0).round() / 1000.0);
    summary["url"] = json!(url);
    summary["connections"] = json!(connections);
    summary["warmup_s"] = json!(warmup.as_secs_f64());
    summary["client_threads"] = json!(threads);
    summary["run"] = json!(run);
    println!("{summary}");
    Ok(())
}

/// User + system CPU time of this process so far, in seconds (every thread).
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above (and zeroed before).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn tls_config(ca: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("--ca {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("--ca {ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("--ca {ca}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {ca}: no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(t: &Target) -> Result<Ws, String> {
    let tcp = tokio::time::timeout(t.timeout, TcpStream::connect(&t.addr))
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let mut req = t
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    if let Some(token) = &t.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "--token is not a valid header value".to_string())?;
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let connector = match &t.tls {
        Some(config) => Connector::Rustls(config.clone()),
        None => Connector::Plain,
    };
    let handshake =
        tokio_tungstenite::client_async_tls_with_config(req, tcp, None, Some(connector));
    let (ws, resp) = tokio::time::timeout(t.timeout, handshake)
        .await
        .map_err(|_| "upgrade: timed out".to_string())?
        .map_err(|e| format!("upgrade: {e}"))?;
    if resp.headers().contains_key("sec-websocket-extensions") {
        return Err("upgrade: the server negotiated an extension".into());
    }
    Ok(ws)
}

/// Why a round trip did not count.
enum Failure {
    /// `ok: false` or an `error` frame: refused, nothing reached the
    /// upstream; the connection stays usable.
    Refused(String),
    /// An answer that is not the exact echo of what was sent: why, and
    /// the frame as it arrived.
    Mismatch(String, String),
    /// The connection cannot be trusted any more (closed, read error,
    /// timeout, unparseable frame).
    Broken(String),
}

/// Sends one `chat.send` and waits for its `res` and `chat` event.
async fn round_trip<S>(
    ws: &mut WebSocketStream<S>,
    id: &str,
    text: &str,
    timeout: Duration,
    events: Events,
) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = json!({
        "type": "req", "id": id, "method": "chat.send",
        "params": {"sessionKey": "agent:main:bench", "message": text, "idempotencyKey": id},
    });
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| Failure::Broken(format!("send: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut answered, mut delta, mut last) = (false, !events.delta, !events.last);
    while !(answered && delta && last) {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(Failure::Broken("timeout".into())),
            Ok(None) => return Err(Failure::Broken("closed".into())),
            Ok(Some(Err(e))) => return Err(Failure::Broken(format!("read: {e}"))),
            Ok(Some(Ok(m))) => m,
        };
        let raw = match msg {
            Message::Text(t) => t,
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code)).unwrap_or(0);
                return Err(Failure::Broken(format!("close {code}")));
            }
            Message::Binary(_) => return Err(Failure::Broken("binary frame".into())),
            _ => continue,
        };
        let got: Frame = serde_json::from_str(raw.as_str())
            .map_err(|_| Failure::Broken("unparseable frame".into()))?;
        match got.kind.as_str() {
            "res" => {
                if got.ok != Some(true) {
                    let code = got
                        .error
                        .as_ref()
                        .and_then(|e| e.get("code"))
                        .and_then(Value::as_str)
                        .unwrap_or("not ok");
                    return Err(Failure::Refused(format!("res: {code}")));
                }
                if got.id.as_deref() != Some(id) {
                    return Err(Failure::Mismatch(
                        "res for another id".into(),
                        raw.to_string(),
                    ));
                }
                let echoed = got
                    .payload
                    .as_ref()
                    .and_then(|p| p.get("message"))
                    .and_then(Value::as_str);
                if echoed != Some(text) {
                    return Err(Failure::Mismatch(
                        "res echo differs".into(),
                        raw.to_string(),
                    ));
                }
                answered = true;
            }
            "event" if got.event.as_deref() == Some("chat") => {
                let Some(p) = got.payload.as_ref() else {
                    return Err(Failure::Mismatch(
                        "chat event without payload".into(),
                        raw.to_string(),
                    ));
                };
                if p.get("runId").and_then(Value::as_str) != Some(id) {
                    return Err(Failure::Mismatch(
                        "chat event of another run".into(),
                        raw.to_string(),
                    ));
                }
                let whole = p.pointer("/message/content/0/text").and_then(Value::as_str);
                let increment = p.get("deltaText").and_then(Value::as_str);
                let ok = match p.get("state").and_then(Value::as_str) {
                    // Before a final, a streaming-safe masker may hold a
                    // tail back: the delta shows a prefix, the same in both
                    // fields. Alone, it must carry the whole text.
                    Some("delta") if !delta && events.last => {
                        delta = true;
                        whole.is_some_and(|w| text.starts_with(w)) && increment == whole
                    }
                    Some("delta") if !delta => {
                        delta = true;
                        whole == Some(text) && increment == Some(text)
                    }
                    Some("final") if !last && delta => {
                        last = true;
                        whole == Some(text)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(Failure::Mismatch(
                        "chat event differs from the text sent".into(),
                        raw.to_string(),
                    ));
                }
            }
            "error" => {
                let code = got
                    .error
                    .as_ref()
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                return Err(Failure::Refused(format!("error: {code}")));
            }
            // Anything else (a tick, a presence event) is not an answer.
            _ => {}
        }
    }
    Ok(())
}

/// One connection's counts.
#[derive(Default)]
struct Tally {
    measured: u64,
    warmup: u64,
    late: u64,
    latencies_us: Vec<u32>,
    refused: u64,
    mismatched: u64,
    errors: u64,
    reasons: BTreeMap<String, u64>,
    reconnects: u64,
    first_mismatch: Option<String>,
}

impl Tally {
    fn note(&mut self, reason: String) {
        *self.reasons.entry(reason).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.measured += other.measured;
        self.warmup += other.warmup;
        self.late += other.late;
        self.latencies_us.extend(other.latencies_us);
        self.refused += other.refused;
        self.mismatched += other.mismatched;
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        if self.first_mismatch.is_none() {
            self.first_mismatch = other.first_mismatch;
        }
        for (k, v) in other.reasons {
            *self.reasons.entry(k).or_default() += v;
        }
    }
}

struct Clock {
    warm_end: Instant,
    end: Instant,
    sent: AtomicU64,
    max_frames: u64,
    capped: AtomicBool,
}

struct Report {
    tally: Tally,
    window: Duration,
    sent: u64,
    capped: bool,
    connected: usize,
}

impl Report {
    fn summary(mut self) -> Value {
        let lat = &mut self.tally.latencies_us;
        lat.sort_unstable();
        let pct = |q: usize| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = (lat.len() * q / 100).min(lat.len() - 1);
            f64::from(lat[i]) / 1000.0
        };
        let secs = self.window.as_secs_f64();
        let fps = if secs > 0.0 {
            self.tally.measured as f64 / secs
        } else {
            0.0
        };
        json!({
            "frames": self.tally.measured,
            "frames_per_s": (fps * 10.0).round() / 10.0,
            "window_s": (secs * 1000.0).round() / 1000.0,
            "p50_ms": (pct(50) * 1000.0).round() / 1000.0,
            "p99_ms": (pct(99) * 1000.0).round() / 1000.0,
            "max_ms": lat.last().map(|v| f64::from(*v) / 1000.0).unwrap_or(0.0),
            "warmup_frames": self.tally.warmup,
            "late_frames": self.tally.late,
            "sent": self.sent,
            "capped": self.capped,
            "connected": self.connected,
            "reconnects": self.tally.reconnects,
            "refused": self.tally.refused,
            "mismatched": self.tally.mismatched,
            "errors": self.tally.errors,
            "checked": self.tally.measured + self.tally.warmup + self.tally.late,
            "reasons": self.tally.reasons,
            "first_mismatch": self.tally.first_mismatch,
        })
    }
}

async fn load(
    target: Arc<Target>,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    max_frames: u64,
    run: u32,
) -> Report {
    // Every connection is open before the clock starts.
    let opened = futures::future::join_all((0..connections).map(|_| connect(&target))).await;
    let mut first = Tally::default();
    let mut sockets = Vec::with_capacity(connections);
    for ws in opened {
        match ws {
            Ok(ws) => sockets.push(Some(ws)),
            Err(e) => {
                first.errors += 1;
                first.note(e);
                sockets.push(None);
            }
        }
    }
    let connected = sockets.iter().filter(|s| s.is_some()).count();
    let start = Instant::now();
    let clock = Arc::new(Clock {
        warm_end: start + warmup,
        end: start + warmup + duration,
        sent: AtomicU64::new(0),
        max_frames,
        capped: AtomicBool::new(false),
    });
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(n, ws)| tokio::spawn(drive(target.clone(), clock.clone(), n, ws, run)))
        .collect();
    let mut tally = first;
    let mut last = clock.warm_end;
    for task in tasks {
        match task.await {
            Ok((t, finished)) => {
                tally.merge(t);
                last = last.max(finished);
            }
            Err(e) => {
                tally.errors += 1;
                tally.note(format!("task: {e}"));
            }
        }
    }
    let capped = clock.capped.load(Ordering::Relaxed);
    // Capped: the measured window ends when the last connection stopped.
    let window_end = if capped {
        last.min(clock.end)
    } else {
        clock.end
    };
    Report {
        tally,
        window: window_end.saturating_duration_since(clock.warm_end),
        sent: clock.sent.load(Ordering::Relaxed).min(max_frames),
        capped,
        connected,
    }
}

/// One connection's closed loop; reopens the connection after a failure.
async fn drive(
    target: Arc<Target>,
    clock: Arc<Clock>,
    n: usize,
    mut ws: Option<Ws>,
    run: u32,
) -> (Tally, Instant) {
    let mut t = Tally::default();
    let mut counter = 0u64;
    loop {
        if Instant::now() >= clock.end || clock.capped.load(Ordering::Relaxed) {
            break;
        }
        let socket = match ws.as_mut() {
            Some(s) => s,
            None => {
                match connect(&target).await {
                    Ok(s) => {
                        t.reconnects += 1;
                        ws = Some(s);
                    }
                    Err(e) => {
                        t.errors += 1;
                        t.note(e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            }
        };
        if clock.sent.fetch_add(1, Ordering::Relaxed) >= clock.max_frames {
            clock.capped.store(true, Ordering::Relaxed);
            break;
        }
        counter += 1;
        let id = format!("b{run}-{n}-{counter}");
        let text = format!("{TEXT} (m{run}c{n}n{counter})");
        let sent_at = Instant::now();
        match round_trip(socket, &id, &text, target.timeout, target.events).await {
            Ok(()) => {
                let done = Instant::now();
                if sent_at < clock.warm_end {
                    t.warmup += 1;
                } else if done <= clock.end {
                    t.measured += 1;
                    let us = done.duration_since(sent_at).as_micros();
                    t.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                } else {
                    t.late += 1;
                }
            }
            Err(Failure::Refused(why)) => {
                t.refused += 1;
                t.note(why);
            }
            Err(Failure::Mismatch(why, frame)) => {
                t.mismatched += 1;
                t.note(why);
                if t.first_mismatch.is_none() {
                    let frame: String = frame.chars().take(600).collect();
                    t.first_mismatch = Some(format!("sent text {text:?}; got {frame}"));
                }
                ws = None;
            }
            Err(Failure::Broken(why)) => {
                t.errors += 1;
                t.note(why);
                ws = None;
            }
        }
    }
    let finished = Instant::now();
    if let Some(mut s) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(1), s.close(None)).await;
    }
    (t, finished)
}
