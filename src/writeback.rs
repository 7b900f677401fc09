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
use crate::percent::encode as percent_encode;
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
mod tests;
