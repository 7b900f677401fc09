//! The HTTP client for bots behind passthrough routes.
//!
//! The gateway calls the bot itself (rather than letting Pingora proxy the
//! request) so that the bot's answer passes through egress DLP and the
//! dedupe claim is settled from the bot's real status, in the same message
//! path as every other message. Bodies are small (passthrough requests are
//! capped at 64 KiB) and both directions are held whole, so nothing is
//! forwarded before it was scanned.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, StatusCode};

/// The largest bot answer read; a bigger one is refused (502), since it
/// could not be scanned.
pub const ANSWER_LIMIT: usize = 1024 * 1024;

/// Headers that describe one hop, never forwarded in either direction.
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
];

/// A request for the bot.
#[derive(Debug, Clone)]
pub struct BotRequest {
    /// The method.
    pub method: Method,
    /// Path and query, e.g. `/hooks/telegram?x=1`.
    pub path_and_query: String,
    /// Headers as received, with any re-signed ones already replaced.
    pub headers: HeaderMap,
    /// The body (original or rebuilt).
    pub body: Bytes,
}

/// The bot's answer, read whole.
#[derive(Debug, Clone)]
pub struct BotAnswer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, without hop-by-hop ones.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Why a bot call failed.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// Connecting or sending failed.
    #[error("bot at {peer} is unreachable: {detail}")]
    Unreachable {
        /// `host:port`.
        peer: String,
        /// The client's error (no content).
        detail: String,
    },
    /// The bot took longer than the upstream's timeout.
    #[error("bot at {peer} did not answer within {timeout:?}")]
    Timeout {
        /// `host:port`.
        peer: String,
        /// The limit.
        timeout: Duration,
    },
    /// The answer was over [`ANSWER_LIMIT`].
    #[error("bot at {peer} answered more than {ANSWER_LIMIT} bytes")]
    TooLarge {
        /// `host:port`.
        peer: String,
    },
}

/// The HTTP client for bots could not be built (a TLS or system resource problem).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for passthrough bots: {0}")]
pub struct ClientSetupError(String);

/// Calls a bot. A trait so that the passthrough stage is testable without sockets.
#[async_trait]
pub trait BotClient: Send + Sync {
    /// Sends `req` to `peer` (`host:port`) and reads the whole answer.
    async fn call(
        &self,
        peer: &str,
        req: BotRequest,
        timeout: Duration,
    ) -> Result<BotAnswer, BotError>;
}

/// The real client: plain HTTP/1.1 to the bot, pooled connections.
pub struct HttpBotClient {
    client: reqwest::Client,
}

impl HttpBotClient {
    /// A client with no proxy and no redirects.
    pub fn new() -> Result<Self, ClientSetupError> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::client_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientSetupError(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientSetupError(e.to_string()))?;
        Ok(Self { client })
    }
}

/// Copies `from` without hop-by-hop headers.
pub fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let mut out = from.clone();
    for h in HOP_BY_HOP {
        out.remove(h);
    }
    out
}

#[async_trait]
impl BotClient for HttpBotClient {
    async fn call(
        &self,
        peer: &str,
        req: BotRequest,
        timeout: Duration,
    ) -> Result<BotAnswer, BotError> {
        let unreachable = |e: reqwest::Error| BotError::Unreachable {
            peer: peer.to_string(),
            detail: e.without_url().to_string(),
        };
        let mut headers = end_to_end(&req.headers);
        // The answer is scanned, so it must not be compressed.
        headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        let call = async {
            let mut resp = self
                .client
                .request(req.method, format!("http://{peer}{}", req.path_and_query))
                .headers(headers)
                .body(req.body)
                .send()
                .await
                .map_err(unreachable)?;
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
                if body.len() + chunk.len() > ANSWER_LIMIT {
                    return Err(BotError::TooLarge {
                        peer: peer.to_string(),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(BotAnswer {
                status: resp.status(),
                headers: end_to_end(resp.headers()),
                body: Bytes::from(body),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(BotError::Timeout {
                    peer: peer.to_string(),
                    timeout,
                })
            })
    }
}
