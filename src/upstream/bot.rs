//! What the passthrough stage needs from an HTTP client for bots: the
//! request, the answer, the errors, and the [`BotClient`] trait. The real
//! client is Pingora's (`server::bot_client`), since Pingora stays in
//! `server/`; tests use fakes.
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

/// The most bytes of a streamed answer (an SSE stream) read from a bot.
pub const STREAM_LIMIT: usize = 16 * ANSWER_LIMIT;

/// The bot's answer, its body read as it arrives.
pub struct BotStream {
    /// Its status.
    pub status: StatusCode,
    /// Its headers, without hop-by-hop ones.
    pub headers: HeaderMap,
    /// Its body, piece by piece; ends after [`STREAM_LIMIT`] bytes with an error.
    pub body: futures::stream::BoxStream<'static, Result<Bytes, BotError>>,
}

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

    /// Sends `req` and returns the answer with its body still arriving
    /// (`timeout` bounds the header, then each wait for a piece). By
    /// default the whole answer, as one piece.
    async fn stream(
        &self,
        peer: &str,
        req: BotRequest,
        timeout: Duration,
    ) -> Result<BotStream, BotError> {
        let answer = self.call(peer, req, timeout).await?;
        let body = answer.body;
        Ok(BotStream {
            status: answer.status,
            headers: answer.headers,
            body: Box::pin(futures::stream::once(async move { Ok(body) })),
        })
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

/// Whether `name` describes one hop only (never forwarded).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}
