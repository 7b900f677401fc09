//! The passthrough bots' HTTP client, on Pingora's own HTTP/1.1 connector
//! and connection pool.
//!
//! Why Pingora's and not a general-purpose client: under load (issue 11),
//! reqwest's connection task and request future were a quarter of the
//! gateway's cycles on the passthrough path (most of it the kernel's send,
//! which any client pays, but also a dispatcher task per connection and a
//! hop between it and the caller for every request). Pingora's connector
//! writes and reads on the caller's own task, with a pool of its own; in an
//! A/B run the path went from 90 to 80 µs of CPU per request. Bots are plain
//! HTTP on a private network (`kind: http` upstreams); the answer is read
//! whole, so egress DLP scans every byte before the client sees one.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::{header, HeaderValue, StatusCode};
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession};
use pingora::upstreams::peer::{HttpPeer, Peer};
use tokio::io::AsyncWriteExt;

use bytes::Bytes;

use crate::upstream::bot::{
    end_to_end, is_hop_by_hop, BotAnswer, BotClient, BotError, BotRequest, BotStream, ANSWER_LIMIT,
    STREAM_LIMIT,
};

/// How long an idle pooled connection to a bot is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a resolved bot host name is trusted.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Calls bots over pooled HTTP/1.1 connections.
pub struct PingoraBotClient {
    connector: TransportConnector,
    /// `host:port` → address, for bots named by host name.
    resolved: moka::sync::Cache<String, SocketAddr>,
}

impl Default for PingoraBotClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PingoraBotClient {
    /// A client with an empty pool.
    pub fn new() -> Self {
        Self {
            connector: TransportConnector::new(None),
            resolved: moka::sync::Cache::builder()
                .max_capacity(1024)
                .time_to_live(DNS_TTL)
                .build(),
        }
    }

    /// The peer for `host:port`: an IP literal as is, a host name resolved
    /// (asynchronously) and remembered for [`DNS_TTL`].
    async fn peer(&self, peer: &str) -> Result<HttpPeer, BotError> {
        let addr = match peer.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => match self.resolved.get(peer) {
                Some(addr) => addr,
                None => {
                    let addr = tokio::net::lookup_host(peer)
                        .await
                        .ok()
                        .and_then(|mut addrs| addrs.next())
                        .ok_or_else(|| unreachable(peer, "the host name does not resolve"))?;
                    self.resolved.insert(peer.to_string(), addr);
                    addr
                }
            },
        };
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        Ok(peer)
    }

    /// One attempt on one connection. `Err((error, retry))`: `retry` when the
    /// connection was a pooled one that failed before the answer's header
    /// was read, the case of a bot that closed an idle connection as it was
    /// reused.
    async fn attempt(
        &self,
        peer: &HttpPeer,
        name: &str,
        wire: &[u8],
    ) -> Result<BotAnswer, (BotError, bool)> {
        let (mut stream, reused) = self
            .connector
            .get_stream(peer)
            .await
            .map_err(|e| (unreachable(name, e.etype().as_str()), false))?;
        // Header and body in one write: Pingora's client flushes the header
        // on its own, which cost a second send (and a second wake-up of the
        // bot) per request.
        if let Err(e) = async {
            stream.write_all(wire).await?;
            stream.flush().await
        }
        .await
        {
            return Err((unreachable(name, &e.kind().to_string()), reused));
        }
        let mut session = HttpSession::new_with_options(stream, peer);
        if let Err(e) = read_answer_header(&mut session).await {
            return Err((unreachable(name, e.etype().as_str()), reused));
        }
        let answer = read_answer(&mut session, name)
            .await
            .map_err(|e| (e, false))?;
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            self.connector
                .release_stream(stream, peer.reuse_hash(), Some(IDLE_TIMEOUT));
        }
        Ok(answer)
    }
}

fn unreachable(peer: &str, detail: &str) -> BotError {
    BotError::Unreachable {
        peer: peer.to_string(),
        detail: detail.to_string(),
    }
}

/// Reads the answer's header, past any informational (1xx) one.
async fn read_answer_header(session: &mut HttpSession) -> pingora::Result<()> {
    loop {
        session.read_response().await?;
        match session.get_status() {
            Some(s) if s.is_informational() => continue,
            _ => return Ok(()),
        }
    }
}

/// Reads the answer's body whole, up to [`ANSWER_LIMIT`].
async fn read_answer(session: &mut HttpSession, peer: &str) -> Result<BotAnswer, BotError> {
    let (status, headers) = match session.resp_header() {
        Some(h) => (h.status, end_to_end(&h.headers)),
        None => (StatusCode::BAD_GATEWAY, http::HeaderMap::new()),
    };
    let mut body = BytesMut::new();
    loop {
        match session.read_body_ref().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > ANSWER_LIMIT {
                    return Err(BotError::TooLarge {
                        peer: peer.to_string(),
                    });
                }
                body.extend_from_slice(chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(unreachable(peer, e.etype().as_str())),
        }
    }
    Ok(BotAnswer {
        status,
        headers,
        body: body.freeze(),
    })
}

/// The request as written to the bot: the request line, the client's
/// end-to-end headers, an uncompressed answer (it is scanned), the body's
/// length, the bot's own `Host` when the client sent none; then the body.
fn request_wire(req: &BotRequest, peer: &str) -> Result<bytes::BytesMut, BotError> {
    if req.method == http::Method::HEAD {
        // An answer to HEAD has no body whatever its length says; never
        // sent on a passthrough route (POST and GET only), refused here so
        // the answer reader cannot wait for a body that never comes.
        return Err(unreachable(peer, "HEAD is not forwarded to bots"));
    }
    let mut wire = http_req_header_to_wire(&request_header(req, peer)?)
        .ok_or_else(|| unreachable(peer, "the request cannot be written as HTTP/1.1"))?;
    wire.extend_from_slice(&req.body);
    Ok(wire)
}

fn request_header(req: &BotRequest, peer: &str) -> Result<RequestHeader, BotError> {
    let invalid = |_| unreachable(peer, "the request cannot be written as HTTP/1.1");
    let mut header = RequestHeader::build(
        req.method.clone(),
        req.path_and_query.as_bytes(),
        Some(req.headers.len() + 3),
    )
    .map_err(invalid)?;
    for (name, value) in req.headers.iter().filter(|(n, _)| !is_hop_by_hop(n)) {
        header
            .append_header(name.clone(), value.clone())
            .map_err(invalid)?;
    }
    if !req.headers.contains_key(header::HOST) {
        let host = HeaderValue::from_str(peer)
            .map_err(|_| unreachable(peer, "the bot's address is not a valid Host"))?;
        header.insert_header(header::HOST, host).map_err(invalid)?;
    }
    header
        .insert_header(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        )
        .map_err(invalid)?;
    header
        .insert_header(header::CONTENT_LENGTH, req.body.len())
        .map_err(invalid)?;
    Ok(header)
}

#[async_trait]
impl BotClient for PingoraBotClient {
    async fn call(
        &self,
        peer: &str,
        req: BotRequest,
        timeout: Duration,
    ) -> Result<BotAnswer, BotError> {
        let call = async {
            let wire = request_wire(&req, peer)?;
            let target = self.peer(peer).await?;
            match self.attempt(&target, peer, &wire).await {
                Ok(answer) => Ok(answer),
                // A stale pooled connection: once more, on another one.
                Err((_, true)) => self.attempt(&target, peer, &wire).await.map_err(|(e, _)| e),
                Err((e, false)) => Err(e),
            }
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

    /// One fresh connection (a stream is long; it is not returned to the
    /// pool), the header within `timeout`, then the body piece by piece.
    async fn stream(
        &self,
        peer: &str,
        req: BotRequest,
        timeout: Duration,
    ) -> Result<BotStream, BotError> {
        let timed_out = || BotError::Timeout {
            peer: peer.to_string(),
            timeout,
        };
        let open = async {
            let wire = request_wire(&req, peer)?;
            let target = self.peer(peer).await?;
            let stream = self
                .connector
                .new_stream(&target)
                .await
                .map_err(|e| unreachable(peer, e.etype().as_str()))?;
            let mut stream = stream;
            stream
                .write_all(&wire)
                .await
                .map_err(|e| unreachable(peer, &e.kind().to_string()))?;
            stream
                .flush()
                .await
                .map_err(|e| unreachable(peer, &e.kind().to_string()))?;
            let mut session = HttpSession::new_with_options(stream, &target);
            read_answer_header(&mut session)
                .await
                .map_err(|e| unreachable(peer, e.etype().as_str()))?;
            Ok::<_, BotError>(session)
        };
        let session = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| timed_out())??;
        let (status, headers) = match session.resp_header() {
            Some(h) => (h.status, end_to_end(&h.headers)),
            None => (StatusCode::BAD_GATEWAY, http::HeaderMap::new()),
        };
        Ok(BotStream {
            status,
            headers,
            body: body_stream(session, peer.to_string(), timeout),
        })
    }
}

/// A streamed answer's body: each piece within `idle` of the last, at most
/// [`STREAM_LIMIT`] bytes; an error ends it.
fn body_stream(
    session: HttpSession,
    peer: String,
    idle: Duration,
) -> futures::stream::BoxStream<'static, Result<Bytes, BotError>> {
    let state = Some((session, 0usize));
    Box::pin(futures::stream::unfold(state, move |state| {
        let peer = peer.clone();
        async move {
            let (mut session, read) = state?;
            let piece = match tokio::time::timeout(idle, session.read_body_bytes()).await {
                Err(_) => Err(BotError::Timeout {
                    peer,
                    timeout: idle,
                }),
                Ok(Err(e)) => Err(unreachable(&peer, e.etype().as_str())),
                Ok(Ok(None)) => return None,
                Ok(Ok(Some(piece))) if read + piece.len() > STREAM_LIMIT => {
                    Err(BotError::TooLarge { peer })
                }
                Ok(Ok(Some(piece))) => {
                    let read = read + piece.len();
                    return Some((Ok(piece), Some((session, read))));
                }
            };
            Some((piece, None))
        }
    }))
}
