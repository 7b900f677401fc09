//! Writeback: delivers replies through platform send-message APIs.
//!
//! Adapters only *describe* replies as [`ApiCall`]s so that they stay pure
//! and testable without a network. This module is the one place with the
//! side effects: it performs the calls with bounded, jittered retries,
//! honours `Retry-After`, checks body-level success flags (many platform APIs
//! answer 200 with an error code), and fetches, caches and refreshes access
//! tokens. Whatever happens, it never logs a full URL, query string, header
//! or body, because those carry bot tokens, app secrets and message content.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, StatusCode};
use serde_json::Value;

use crate::observe::metrics::Metrics;
use crate::platform::adapter::{ApiCall, TokenPlacement, TokenSource};

/// Platform error codes that mean "the access token expired or is invalid":
/// Feishu 99991663/99991661 (in `/code`), WeCom 40014/42001 (in `/errcode`).
const TOKEN_EXPIRED_CODES: &[(&str, i64)] = &[
    ("/code", 99_991_663),
    ("/code", 99_991_661),
    ("/errcode", 40_014),
    ("/errcode", 42_001),
];

/// Platform replies are small JSON documents; anything larger is not worth
/// buffering, and a hostile or broken endpoint must not exhaust memory.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Refresh tokens this long before they expire, so a token never dies mid-call.
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Tunables for reply delivery.
#[derive(Debug, Clone)]
pub struct WritebackSettings {
    /// Timeout of one HTTP attempt, from connecting to the end of the body.
    pub attempt_timeout: Duration,
    /// Attempts per call, the first one included (at least 1).
    pub max_attempts: u32,
    /// First backoff delay; it doubles per attempt, with jitter.
    pub base_backoff: Duration,
    /// Upper bound of one backoff delay.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one ends the retries.
    pub max_retry_after: Duration,
    /// Use `HTTP(S)_PROXY`/`NO_PROXY` from the environment (egress proxies).
    pub use_env_proxy: bool,
}

impl Default for WritebackSettings {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            use_env_proxy: true,
        }
    }
}

/// The kind of the last failure, a bounded label for logs and callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection could not be made or broke.
    Connect,
    /// An attempt took longer than the per-attempt timeout.
    Timeout,
    /// The API answered with an error status.
    Status,
    /// The API answered 2xx but its body reported failure.
    Rejected,
    /// The access token could not be obtained.
    Token,
    /// The call could not be built (bad header, URL, or HTTP client).
    Request,
}

impl FailureKind {
    /// The label used in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Status => "status",
            FailureKind::Rejected => "rejected",
            FailureKind::Token => "token",
            FailureKind::Request => "request",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reply could not be delivered. Carries only redacted, bounded data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "writeback to {url} failed after {attempts} attempt(s): {kind}, last status {}",
    status_label(*.last_status)
)]
pub struct WritebackError {
    /// The failing call's URL, passed through [`redact_url`].
    pub url: String,
    /// Index of the failing call in the list given to [`Writeback::send`].
    pub call: usize,
    /// Attempts made for the failing call (or its token fetch).
    pub attempts: u32,
    /// The last HTTP status seen, if any answer came back.
    pub last_status: Option<u16>,
    /// What went wrong last.
    pub kind: FailureKind,
}

fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "none".to_string(), |s| s.to_string())
}

/// Sends replies through platform APIs. Cheap to clone.
#[derive(Clone)]
pub struct Writeback {
    inner: Arc<Inner>,
}

struct Inner {
    // A client that failed to build is kept as an error so that construction
    // cannot panic; every send then fails loudly instead.
    client: Result<Client, String>,
    metrics: Metrics,
    settings: WritebackSettings,
    // One slot per token source. The async mutex in each slot is what makes
    // concurrent sends share one fetch. Keys come from route config, so the
    // map stays small.
    tokens: Mutex<HashMap<String, Arc<TokenSlot>>>,
}

#[derive(Default)]
struct TokenSlot {
    cached: tokio::sync::Mutex<Option<CachedToken>>,
}

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

/// A failed call before it is tied to its index, plus whether the platform
/// said the token expired (which earns one refetch, not a plain retry).
struct Failure {
    attempts: u32,
    last_status: Option<u16>,
    kind: FailureKind,
    token_expired: bool,
    url: String,
}

/// The outcome of one attempt.
enum Attempt {
    Done(Bytes),
    Retry {
        kind: FailureKind,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    Fail {
        kind: FailureKind,
        status: Option<u16>,
        token_expired: bool,
    },
}

impl Writeback {
    /// Creates a writeback stage with its own HTTP client and token cache.
    pub fn new(metrics: Metrics, settings: WritebackSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                client: build_client(&settings),
                metrics,
                settings,
                tokens: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Executes `calls` in order, stopping at the first that cannot be
    /// delivered. Counts and logs the outcome.
    pub async fn send(
        &self,
        platform: &'static str,
        calls: Vec<ApiCall>,
    ) -> Result<(), WritebackError> {
        for (index, call) in calls.iter().enumerate() {
            if let Err(f) = self.deliver(call).await {
                let err = WritebackError {
                    url: f.url,
                    call: index,
                    attempts: f.attempts,
                    last_status: f.last_status,
                    kind: f.kind,
                };
                self.count(platform, "failed");
                tracing::error!(
                    platform,
                    url = %err.url,
                    call = index,
                    attempts = err.attempts,
                    last_status = %status_label(err.last_status),
                    reason = err.kind.as_str(),
                    "reply could not be delivered"
                );
                return Err(err);
            }
        }
        if !calls.is_empty() {
            self.count(platform, "sent");
        }
        Ok(())
    }

    /// Runs [`Writeback::send`] in the background on `handle`; failures are
    /// logged and counted there.
    pub fn spawn_send(
        &self,
        handle: &tokio::runtime::Handle,
        platform: &'static str,
        calls: Vec<ApiCall>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        handle.spawn(async move {
            // Already logged and counted inside `send`.
            let _ = this.send(platform, calls).await;
        })
    }

    /// Counts a reply that could not even be described (no call was made).
    pub fn count_failure(&self, platform: &str) {
        self.count(platform, "failed");
    }

    fn count(&self, platform: &str, result: &str) {
        self.inner
            .metrics
            .writebacks
            .with_label_values(&[platform, result])
            .inc();
    }

    /// One call, with its token if it needs one; an expired token is dropped
    /// and refetched once.
    async fn deliver(&self, call: &ApiCall) -> Result<Bytes, Failure> {
        let Some(auth) = call.auth.as_deref() else {
            return self.with_retries(call, None).await;
        };
        let mut refetched = false;
        loop {
            let token = self.token(auth).await?;
            match self
                .with_retries(call, Some((token.as_str(), auth.placement)))
                .await
            {
                Err(f) if f.token_expired && !refetched => {
                    refetched = true;
                    self.invalidate(&auth.cache_key, &token).await;
                }
                other => return other,
            }
        }
    }

    /// A cached token, or a fresh one. Holding the slot's lock across the
    /// fetch means concurrent callers wait for one fetch instead of each
    /// hitting the platform's (rate-limited) token endpoint.
    async fn token(&self, auth: &TokenSource) -> Result<String, Failure> {
        let slot = self.slot(&auth.cache_key);
        let mut cached = slot.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        if auth.fetch.auth.is_some() {
            // A token that needs a token would recurse without bound.
            return Err(Failure {
                attempts: 0,
                last_status: None,
                kind: FailureKind::Request,
                token_expired: false,
                url: redact_url(&auth.fetch.url),
            });
        }
        let body = self
            .with_retries(&auth.fetch, None)
            .await
            .map_err(|f| Failure {
                kind: FailureKind::Token,
                ..f
            })?;
        let parsed: Option<(String, Option<u64>)> =
            serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
                let token = v.pointer(auth.token_pointer)?.as_str()?;
                (!token.is_empty()).then(|| {
                    let lifetime = v.pointer(auth.expires_in_pointer).and_then(|l| {
                        l.as_u64()
                            .or_else(|| l.as_str().and_then(|s| s.parse().ok()))
                    });
                    (token.to_string(), lifetime)
                })
            });
        let Some((token, lifetime)) = parsed else {
            return Err(Failure {
                attempts: 1,
                last_status: Some(200),
                kind: FailureKind::Token,
                token_expired: false,
                url: redact_url(&auth.fetch.url),
            });
        };
        let lifetime = Duration::from_secs(lifetime.unwrap_or(0));
        let keep = lifetime
            .saturating_sub(TOKEN_REFRESH_MARGIN)
            .max(lifetime / 2);
        *cached = Some(CachedToken {
            token: token.clone(),
            refresh_at: Instant::now() + keep,
        });
        Ok(token)
    }

    /// Drops `token` from the cache, unless another task already replaced it.
    async fn invalidate(&self, key: &str, token: &str) {
        let slot = self.slot(key);
        let mut cached = slot.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.token == token) {
            *cached = None;
        }
    }

    fn slot(&self, key: &str) -> Arc<TokenSlot> {
        let mut tokens = self
            .inner
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        tokens.entry(key.to_string()).or_default().clone()
    }

    /// Runs one call up to `max_attempts` times, backing off between tries.
    async fn with_retries(
        &self,
        call: &ApiCall,
        token: Option<(&str, TokenPlacement)>,
    ) -> Result<Bytes, Failure> {
        let settings = &self.inner.settings;
        let max_attempts = settings.max_attempts.max(1);
        let url = match token {
            Some((t, TokenPlacement::QueryParam(name))) => with_query_param(&call.url, name, t),
            _ => call.url.clone(),
        };
        let bearer = match token {
            Some((t, TokenPlacement::BearerHeader)) => Some(t),
            _ => None,
        };
        let fail = |attempts, kind, status, token_expired| Failure {
            attempts,
            last_status: status,
            kind,
            token_expired,
            url: redact_url(&call.url),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(call, &url, bearer).await {
                Attempt::Done(body) => return Ok(body),
                Attempt::Fail {
                    kind,
                    status,
                    token_expired,
                } => return Err(fail(attempt, kind, status, token_expired)),
                Attempt::Retry {
                    kind,
                    status,
                    retry_after,
                } => {
                    if attempt >= max_attempts {
                        return Err(fail(attempt, kind, status, false));
                    }
                    let delay = match retry_after {
                        // Retrying sooner than asked only earns another 429
                        // (and may lengthen the ban); waiting longer than
                        // this delays the reply past usefulness.
                        Some(d) if d > settings.max_retry_after => {
                            return Err(fail(attempt, kind, status, false));
                        }
                        Some(d) => d,
                        None => backoff(settings, attempt),
                    };
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, call: &ApiCall, url: &str, bearer: Option<&str>) -> Attempt {
        let client = match &self.inner.client {
            Ok(c) => c,
            Err(_) => {
                return Attempt::Fail {
                    kind: FailureKind::Request,
                    status: None,
                    token_expired: false,
                }
            }
        };
        let mut req = client
            .request(call.method.clone(), url)
            .body(call.body.clone());
        for (name, value) in &call.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(token) = bearer {
            // reqwest marks this header sensitive, so it stays out of Debug output.
            req = req.bearer_auth(token);
        }
        let exchange = async {
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = read_capped(resp).await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let (status, headers, body) =
            match tokio::time::timeout(self.inner.settings.attempt_timeout, exchange).await {
                Err(_) => {
                    return Attempt::Retry {
                        kind: FailureKind::Timeout,
                        status: None,
                        retry_after: None,
                    }
                }
                Ok(Err(e)) if e.is_builder() => {
                    return Attempt::Fail {
                        kind: FailureKind::Request,
                        status: None,
                        token_expired: false,
                    }
                }
                Ok(Err(e)) => {
                    return Attempt::Retry {
                        kind: if e.is_timeout() {
                            FailureKind::Timeout
                        } else {
                            FailureKind::Connect
                        },
                        status: None,
                        retry_after: None,
                    }
                }
                Ok(Ok(answer)) => answer,
            };
        classify(call, status, &headers, &body)
    }
}

/// Decides what an HTTP answer means for a call.
fn classify(call: &ApiCall, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Attempt {
    let code = Some(status.as_u16());
    let json: Option<Value> = serde_json::from_slice(body).ok();
    // Feishu reports an expired token with HTTP 400 as well as 200, so the
    // code is checked before the status decides anything.
    if call.auth.is_some() && json.as_ref().is_some_and(is_token_expired) {
        return Attempt::Fail {
            kind: FailureKind::Rejected,
            status: code,
            token_expired: true,
        };
    }
    if status.is_success() {
        let ok = match &call.success {
            None => true,
            Some((pointer, expected)) => json
                .as_ref()
                .and_then(|v| v.pointer(pointer))
                .is_some_and(|v| v == expected),
        };
        return if ok {
            Attempt::Done(Bytes::copy_from_slice(body))
        } else {
            Attempt::Fail {
                kind: FailureKind::Rejected,
                status: code,
                token_expired: false,
            }
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Attempt::Retry {
            kind: FailureKind::Status,
            status: code,
            retry_after: retry_after(headers, json.as_ref()),
        };
    }
    Attempt::Fail {
        kind: FailureKind::Status,
        status: code,
        token_expired: false,
    }
}

fn is_token_expired(v: &Value) -> bool {
    TOKEN_EXPIRED_CODES
        .iter()
        .any(|(pointer, code)| v.pointer(pointer).and_then(Value::as_i64) == Some(*code))
}

/// `Retry-After` in seconds; Telegram puts it in the body instead
/// (`/parameters/retry_after`). HTTP dates are rare on these APIs and fall
/// back to the normal backoff.
fn retry_after(headers: &HeaderMap, json: Option<&Value>) -> Option<Duration> {
    let from_header = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok());
    let from_body = || {
        json.and_then(|v| v.pointer("/parameters/retry_after"))
            .and_then(Value::as_u64)
    };
    from_header.or_else(from_body).map(Duration::from_secs)
}

/// Exponential backoff with jitter, so that many replies failing together
/// do not retry in lockstep.
fn backoff(settings: &WritebackSettings, attempt: u32) -> Duration {
    let exp = settings
        .base_backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(settings.max_backoff);
    capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok(body)
}

fn build_client(settings: &WritebackSettings) -> Result<Client, String> {
    // The process-wide provider is TLS 1.3-only for the listener (see
    // `crate::tls`); platform APIs may still need TLS 1.2, so the client
    // brings its own full provider.
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::client_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut builder = Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(settings.attempt_timeout)
        .timeout(settings.attempt_timeout)
        // A redirect would carry a query-string token to wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("moltgate/", env!("CARGO_PKG_VERSION")));
    if !settings.use_env_proxy {
        builder = builder.no_proxy();
    }
    let client = builder.build().map_err(|e| e.to_string());
    if let Err(e) = &client {
        tracing::error!(error = %e, "building the writeback HTTP client; replies will fail");
    }
    client
}

/// Appends `name=value` to the query of `url`, before any fragment.
fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    let mut out = format!("{base}{sep}{name}={}", percent_encode(value));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL safe to log: scheme, host, port and the leading path segments that
/// look like fixed API names, cut at the first one that could be a secret
/// (Telegram's `/bot<token>/`, Discord's interaction token); never userinfo,
/// query or fragment.
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "<invalid url>".to_string();
    };
    let mut out = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or(""));
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    let Some(segments) = parsed.path_segments() else {
        return out;
    };
    for segment in segments {
        if segment.is_empty() {
            continue;
        }
        if !is_public_segment(segment) {
            out.push_str("/…");
            return out;
        }
        out.push('/');
        out.push_str(segment);
    }
    out
}

/// A fixed API name: letters and `.`, `-`, `_` (`chat.postMessage`,
/// `cgi-bin`), or a version like `v10`. Anything with other digits or
/// symbols (ids, tokens, `bot123:ABC`) might be secret and is cut.
fn is_public_segment(segment: &str) -> bool {
    let is_version = segment.len() <= 4
        && segment.starts_with('v')
        && segment.len() > 1
        && segment[1..].bytes().all(|b| b.is_ascii_digit());
    let is_name = segment.len() <= 40
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || matches!(b, b'.' | b'-' | b'_'));
    is_version || is_name
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A request as the fake server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A scripted answer.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        delay: Duration,
    }

    fn reply(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

    /// A tiny HTTP/1.1 server: one request per connection, answered by a
    /// handler, every request recorded.
    struct Fake {
        base: String,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        async fn start(handler: Handler) -> Fake {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let record = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let handler = handler.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        let Some(req) = read_request(&mut stream).await else {
                            return;
                        };
                        record.lock().unwrap().push(req.clone());
                        let r = handler(&req);
                        tokio::time::sleep(r.delay).await;
                        let mut head = format!(
                            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                            r.status,
                            r.body.len()
                        );
                        for (k, v) in &r.headers {
                            head.push_str(&format!("{k}: {v}\r\n"));
                        }
                        head.push_str("\r\n");
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(r.body.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Fake { base, seen }
        }

        /// Answers with `replies` in order, repeating the last one.
        async fn scripted(replies: Vec<Reply>) -> Fake {
            let queue = Mutex::new(VecDeque::from(replies));
            Fake::start(Arc::new(move |_| {
                let mut q = queue.lock().unwrap();
                if q.len() > 1 {
                    q.pop_front().unwrap()
                } else {
                    q.front().cloned().unwrap()
                }
            }))
            .await
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        fn hits(&self, prefix: &str) -> usize {
            self.seen()
                .iter()
                .filter(|s| s.target.starts_with(prefix))
                .count()
        }
    }

    async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Seen> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let method = first.next()?.to_string();
        let target = first.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some(Seen {
            method,
            target,
            headers,
            body,
        })
    }

    fn fast() -> WritebackSettings {
        WritebackSettings {
            attempt_timeout: Duration::from_secs(2),
            max_attempts: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_retry_after: Duration::from_secs(2),
            use_env_proxy: false,
        }
    }

    fn stage(settings: WritebackSettings) -> (Writeback, Metrics) {
        let metrics = Metrics::new();
        (Writeback::new(metrics.clone(), settings), metrics)
    }

    fn counted(metrics: &Metrics, platform: &str, result: &str) -> u64 {
        metrics
            .writebacks
            .with_label_values(&[platform, result])
            .get()
    }

    fn slack_call(base: &str) -> ApiCall {
        let mut call = ApiCall::post_json(
            format!("{base}/api/chat.postMessage"),
            &json!({"channel": "C1", "text": "hi"}),
        );
        call.headers
            .push(("authorization".into(), "Bearer xoxb-test".into()));
        call.success = Some(("/ok", Value::Bool(true)));
        call
    }

    fn token_source(base: &str, key: &str, placement: TokenPlacement) -> TokenSource {
        let mut fetch = ApiCall::post_json(
            format!("{base}/auth/token"),
            &json!({"app_id": "a", "app_secret": "s"}),
        );
        fetch.success = Some(("/code", json!(0)));
        TokenSource {
            cache_key: key.into(),
            fetch,
            token_pointer: "/tenant_access_token",
            expires_in_pointer: "/expire",
            placement,
        }
    }

    fn authed_call(base: &str, key: &str, placement: TokenPlacement) -> ApiCall {
        let mut call = ApiCall::post_json(format!("{base}/im/reply?x=1"), &json!({"text": "hi"}));
        call.auth = Some(Box::new(token_source(base, key, placement)));
        call.success = Some(("/code", json!(0)));
        call
    }

    /// Serves tokens `t1`, `t2`, … from `/auth/token` (after `delay`) and
    /// answers the API with `api`.
    async fn token_server(delay: Duration, api: Handler) -> Fake {
        let n = Arc::new(AtomicUsize::new(0));
        Fake::start(Arc::new(move |req: &Seen| {
            if req.target.starts_with("/auth/token") {
                let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                Reply {
                    delay,
                    ..reply(
                        200,
                        json!({"code": 0, "tenant_access_token": format!("t{i}"), "expire": 7200}),
                    )
                }
            } else {
                api(req)
            }
        }))
        .await
    }

    #[tokio::test]
    async fn success_sends_once_and_counts() {
        let fake = Fake::scripted(vec![reply(200, json!({"ok": true}))]).await;
        let (wb, metrics) = stage(fast());
        wb.send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap();
        let seen = fake.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, "POST");
        assert_eq!(seen[0].target, "/api/chat.postMessage");
        assert_eq!(seen[0].header("authorization"), Some("Bearer xoxb-test"));
        let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(body["text"], "hi");
        assert_eq!(counted(&metrics, "slack", "sent"), 1);
        assert_eq!(counted(&metrics, "slack", "failed"), 0);
    }

    #[tokio::test]
    async fn calls_run_in_order() {
        let fake = Fake::scripted(vec![reply(200, json!({"ok": true}))]).await;
        let (wb, metrics) = stage(fast());
        let calls = (1..=3)
            .map(|i| ApiCall::post_json(format!("{}/part/{i}", fake.base), &json!({})))
            .collect();
        wb.send("telegram", calls).await.unwrap();
        let targets: Vec<String> = fake.seen().into_iter().map(|s| s.target).collect();
        assert_eq!(targets, ["/part/1", "/part/2", "/part/3"]);
        assert_eq!(counted(&metrics, "telegram", "sent"), 1);
    }

    #[tokio::test]
    async fn server_error_is_retried() {
        let fake =
            Fake::scripted(vec![reply(500, json!({})), reply(200, json!({"ok": true}))]).await;
        let (wb, metrics) = stage(fast());
        wb.send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap();
        assert_eq!(fake.seen().len(), 2);
        assert_eq!(counted(&metrics, "slack", "sent"), 1);
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let mut limited = reply(429, json!({"ok": false}));
        limited.headers.push(("retry-after", "1".into()));
        let fake = Fake::scripted(vec![limited, reply(200, json!({"ok": true}))]).await;
        let (wb, _) = stage(fast());
        let start = Instant::now();
        wb.send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert_eq!(fake.seen().len(), 2);
    }

    #[tokio::test]
    async fn retry_after_in_telegram_body_is_honoured() {
        let fake = Fake::scripted(vec![
            reply(429, json!({"ok": false, "parameters": {"retry_after": 1}})),
            reply(200, json!({"ok": true})),
        ])
        .await;
        let (wb, _) = stage(fast());
        let start = Instant::now();
        wb.send("telegram", vec![slack_call(&fake.base)])
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn retry_after_beyond_the_limit_gives_up() {
        let mut limited = reply(429, json!({}));
        limited.headers.push(("retry-after", "3600".into()));
        let fake = Fake::scripted(vec![limited]).await;
        let (wb, _) = stage(fast());
        let err = wb
            .send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap_err();
        assert_eq!((err.attempts, err.last_status), (1, Some(429)));
        assert_eq!(fake.seen().len(), 1);
    }

    #[tokio::test]
    async fn client_error_is_not_retried() {
        let fake = Fake::scripted(vec![reply(400, json!({"ok": false}))]).await;
        let (wb, metrics) = stage(fast());
        let err = wb
            .send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap_err();
        assert_eq!(fake.seen().len(), 1);
        assert_eq!(err.kind, FailureKind::Status);
        assert_eq!((err.attempts, err.last_status), (1, Some(400)));
        assert_eq!(counted(&metrics, "slack", "failed"), 1);
    }

    #[tokio::test]
    async fn attempts_are_bounded_then_fail() {
        let fake = Fake::scripted(vec![reply(503, json!({}))]).await;
        let (wb, metrics) = stage(fast());
        let calls = vec![
            ApiCall::post_json(format!("{}/first", fake.base), &json!({})),
            slack_call(&fake.base),
            slack_call(&fake.base),
        ];
        let err = wb.send("slack", calls).await.unwrap_err();
        // The first call already fails, so the rest are never sent.
        assert_eq!(fake.seen().len(), 3);
        assert_eq!(err.call, 0);
        assert_eq!(err.attempts, 3);
        assert_eq!(err.last_status, Some(503));
        assert_eq!(counted(&metrics, "slack", "failed"), 1);
        assert_eq!(counted(&metrics, "slack", "sent"), 0);
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let (wb, metrics) = stage(fast());
        let err = wb
            .send("slack", vec![slack_call(&format!("http://{addr}"))])
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Connect);
        assert_eq!((err.attempts, err.last_status), (3, None));
        assert_eq!(counted(&metrics, "slack", "failed"), 1);
    }

    #[tokio::test]
    async fn slow_answer_times_out() {
        let fake = Fake::scripted(vec![Reply {
            delay: Duration::from_secs(3),
            ..reply(200, json!({"ok": true}))
        }])
        .await;
        let (wb, _) = stage(WritebackSettings {
            attempt_timeout: Duration::from_millis(200),
            max_attempts: 2,
            ..fast()
        });
        let start = Instant::now();
        let err = wb
            .send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Timeout);
        assert_eq!(err.attempts, 2);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn body_level_failure_is_a_failure() {
        let fake = Fake::scripted(vec![reply(
            200,
            json!({"ok": false, "error": "channel_not_found"}),
        )])
        .await;
        let (wb, metrics) = stage(fast());
        let err = wb
            .send("slack", vec![slack_call(&fake.base)])
            .await
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Rejected);
        assert_eq!((err.attempts, err.last_status), (1, Some(200)));
        assert_eq!(fake.seen().len(), 1);
        assert_eq!(counted(&metrics, "slack", "failed"), 1);
    }

    #[tokio::test]
    async fn bearer_token_is_fetched_once_and_cached() {
        let fake = token_server(Duration::ZERO, Arc::new(|_| reply(200, json!({"code": 0})))).await;
        let (wb, metrics) = stage(fast());
        for _ in 0..2 {
            let call = authed_call(&fake.base, "feishu:a", TokenPlacement::BearerHeader);
            wb.send("feishu", vec![call]).await.unwrap();
        }
        assert_eq!(fake.hits("/auth/token"), 1);
        let api: Vec<Seen> = fake
            .seen()
            .into_iter()
            .filter(|s| s.target.starts_with("/im/reply"))
            .collect();
        assert_eq!(api.len(), 2);
        for s in &api {
            assert_eq!(s.header("authorization"), Some("Bearer t1"));
            assert_eq!(s.target, "/im/reply?x=1");
        }
        assert_eq!(counted(&metrics, "feishu", "sent"), 2);
    }

    #[tokio::test]
    async fn query_token_is_appended_and_cached() {
        let fake = token_server(Duration::ZERO, Arc::new(|_| reply(200, json!({"code": 0})))).await;
        let (wb, _) = stage(fast());
        let mut first = authed_call(
            &fake.base,
            "wecom:a",
            TokenPlacement::QueryParam("access_token"),
        );
        wb.send("wecom", vec![first.clone()]).await.unwrap();
        first.url = format!("{}/cgi-bin/message/send", fake.base);
        wb.send("wecom", vec![first]).await.unwrap();
        assert_eq!(fake.hits("/auth/token"), 1);
        let targets: Vec<String> = fake
            .seen()
            .into_iter()
            .filter(|s| !s.target.starts_with("/auth/token"))
            .map(|s| s.target)
            .collect();
        assert_eq!(
            targets,
            [
                "/im/reply?x=1&access_token=t1",
                "/cgi-bin/message/send?access_token=t1"
            ]
        );
        assert!(fake
            .seen()
            .iter()
            .all(|s| s.header("authorization").is_none()));
    }

    #[tokio::test]
    async fn expired_token_is_refetched_once() {
        // The first token is "expired"; the second works.
        let fake = token_server(
            Duration::ZERO,
            Arc::new(|req: &Seen| {
                if req.header("authorization") == Some("Bearer t1") {
                    reply(400, json!({"code": 99_991_663, "msg": "token expired"}))
                } else {
                    reply(200, json!({"code": 0}))
                }
            }),
        )
        .await;
        let (wb, metrics) = stage(fast());
        let call = authed_call(&fake.base, "feishu:b", TokenPlacement::BearerHeader);
        wb.send("feishu", vec![call.clone()]).await.unwrap();
        assert_eq!(fake.hits("/auth/token"), 2);
        // The fresh token is cached for the next send.
        wb.send("feishu", vec![call]).await.unwrap();
        assert_eq!(fake.hits("/auth/token"), 2);
        assert_eq!(counted(&metrics, "feishu", "sent"), 2);
    }

    #[tokio::test]
    async fn token_that_stays_expired_fails_after_one_refetch() {
        let fake = token_server(
            Duration::ZERO,
            Arc::new(|_| reply(200, json!({"errcode": 42_001, "errmsg": "expired"}))),
        )
        .await;
        let (wb, metrics) = stage(fast());
        let mut call = authed_call(
            &fake.base,
            "wecom:b",
            TokenPlacement::QueryParam("access_token"),
        );
        call.success = Some(("/errcode", json!(0)));
        let err = wb.send("wecom", vec![call]).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Rejected);
        assert_eq!(fake.hits("/auth/token"), 2);
        assert_eq!(fake.hits("/im/reply"), 2);
        assert_eq!(counted(&metrics, "wecom", "failed"), 1);
    }

    #[tokio::test]
    async fn concurrent_sends_fetch_the_token_once() {
        let fake = token_server(
            Duration::from_millis(300),
            Arc::new(|_| reply(200, json!({"code": 0}))),
        )
        .await;
        let (wb, metrics) = stage(fast());
        let sends = (0..8).map(|_| {
            let call = authed_call(&fake.base, "feishu:c", TokenPlacement::BearerHeader);
            let wb = wb.clone();
            async move { wb.send("feishu", vec![call]).await }
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        assert_eq!(fake.hits("/auth/token"), 1);
        assert_eq!(fake.hits("/im/reply"), 8);
        assert_eq!(counted(&metrics, "feishu", "sent"), 8);
    }

    #[tokio::test]
    async fn failed_token_fetch_fails_the_send() {
        let fake = Fake::scripted(vec![reply(200, json!({"code": 10003, "msg": "bad app"}))]).await;
        let (wb, metrics) = stage(fast());
        let call = authed_call(&fake.base, "feishu:d", TokenPlacement::BearerHeader);
        let err = wb.send("feishu", vec![call]).await.unwrap_err();
        assert_eq!(err.kind, FailureKind::Token);
        assert_eq!(err.url, format!("{}/auth/token", fake.base));
        assert_eq!(fake.seen().len(), 1);
        assert_eq!(counted(&metrics, "feishu", "failed"), 1);
    }

    #[tokio::test]
    async fn spawn_send_runs_in_the_background() {
        let fake = Fake::scripted(vec![reply(200, json!({"ok": true}))]).await;
        let (wb, metrics) = stage(fast());
        let handle = tokio::runtime::Handle::current();
        wb.spawn_send(&handle, "slack", vec![slack_call(&fake.base)])
            .await
            .unwrap();
        assert_eq!(counted(&metrics, "slack", "sent"), 1);
    }

    #[test]
    fn redact_url_keeps_only_public_parts() {
        let cases = [
            (
                "https://api.telegram.org/bot123456:ABC-def_ghi/sendMessage",
                "https://api.telegram.org/…",
            ),
            (
                "https://discord.com/api/v10/webhooks/112233445566/aW50ZXJhY3Rpb24tdG9rZW4",
                "https://discord.com/api/v10/webhooks/…",
            ),
            (
                "https://qyapi.weixin.qq.com/cgi-bin/gettoken?corpid=ww1&corpsecret=s3cr3t",
                "https://qyapi.weixin.qq.com/cgi-bin/gettoken",
            ),
            (
                "https://open.feishu.cn/open-apis/im/v1/messages/om_5f1e2d/reply",
                "https://open.feishu.cn/open-apis/im/v1/messages/…",
            ),
            (
                "https://slack.com/api/chat.postMessage",
                "https://slack.com/api/chat.postMessage",
            ),
            (
                "http://user:pw@127.0.0.1:8080/robot/send?access_token=abc#frag",
                "http://127.0.0.1:8080/robot/send",
            ),
            ("not a url", "<invalid url>"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn query_params_are_appended_correctly() {
        assert_eq!(
            with_query_param("http://h/p", "t", "a b"),
            "http://h/p?t=a%20b"
        );
        assert_eq!(
            with_query_param("http://h/p?x=1", "t", "v"),
            "http://h/p?x=1&t=v"
        );
        assert_eq!(with_query_param("http://h/p?", "t", "v"), "http://h/p?t=v");
        assert_eq!(
            with_query_param("http://h/p#f", "t", "v"),
            "http://h/p?t=v#f"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = WritebackSettings::default();
        let first = backoff(&s, 1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        assert!(backoff(&s, 30) <= s.max_backoff);
    }

    #[tokio::test]
    async fn get_calls_keep_their_method() {
        // WeCom fetches its token with a bodiless GET.
        let fake = Fake::scripted(vec![reply(200, json!({"errcode": 0}))]).await;
        let (wb, _) = stage(fast());
        let call = ApiCall {
            method: Method::GET,
            url: format!("{}/cgi-bin/gettoken?corpid=c", fake.base),
            headers: Vec::new(),
            body: Bytes::new(),
            auth: None,
            success: Some(("/errcode", json!(0))),
        };
        wb.send("wecom", vec![call]).await.unwrap();
        let seen = fake.seen();
        assert_eq!(seen[0].method, "GET");
        assert_eq!(seen[0].target, "/cgi-bin/gettoken?corpid=c");
        assert!(seen[0].body.is_empty());
    }
}
