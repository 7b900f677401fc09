//! The public listener's Pingora glue: the first stages of the message
//! path, which need the session (route, admit, read body), then
//! [`Gateway::handle`] for the rest, then the answer is written.
//!
//! Pingora sends upstream request headers before `request_body_filter` runs,
//! and every decision needs the whole body, so the body is read here, in
//! `request_filter`, which always answers from the gateway itself and
//! returns `Ok(true)`: passthrough bots are called by the path's dispatch
//! stage, so their answers pass through egress DLP too.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::prelude::*;

use super::respond::{write_response, write_streamed};
use crate::config::PlatformKind;
use crate::path::streamed::StreamedBody;
use crate::path::{Exchange, Gateway, IncomingRequest, Stop};

/// The public listener's proxy logic.
pub struct PublicProxy {
    /// The gateway the requests go to.
    pub gateway: Arc<Gateway>,
    /// Whether the process drains (answers then close their connection).
    pub life: Arc<super::lifecycle::Lifecycle>,
}

/// Reads the whole body, refusing past `limit` bytes or after `deadline`.
async fn read_body(session: &mut Session, limit: usize, deadline: Instant) -> Result<Bytes, Stop> {
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body())
            .await
            .map_err(|_| Stop::BodyTimeout)?
            .map_err(|_| Stop::BodyUnreadable)?;
        match chunk {
            None => return Ok(buf.freeze()),
            Some(c) => {
                if buf.len() + c.len() > limit {
                    return Err(Stop::TooLarge { limit });
                }
                buf.extend_from_slice(&c);
            }
        }
    }
}

/// How much of a refused body is read and discarded after the answer.
const LINGER_BYTES: usize = 1 << 20;
/// How long a refused body is read and discarded after the answer.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Reads and discards what is left of a refused request body, bounded in
/// bytes and time, before the connection closes.
///
/// Why: closing a socket with unread bytes in its receive buffer sends a
/// TCP reset, and a client still writing its body then sees "broken pipe"
/// instead of the 413 already sent (nginx's "lingering close" does the same).
async fn linger(session: &mut Session) {
    let deadline = tokio::time::Instant::now() + LINGER_TIME;
    let mut discarded = 0usize;
    while discarded < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => discarded += chunk.len(),
            _ => return,
        }
    }
}

/// An OpenAI-compatible route in front of the AI cluster: its answers are
/// shaped (and streamed) by `server::openai`.
fn is_openai_translate(ex: &Exchange) -> bool {
    ex.route
        .as_ref()
        .is_some_and(|r| r.platform == PlatformKind::Openai && !r.is_passthrough())
}

/// The TCP peer's address (the IP policy may then trust a proxy's header).
fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

impl PublicProxy {
    /// Stages route, admit and read body: the request as the path takes it.
    async fn prepare(
        &self,
        session: &mut Session,
        ex: &mut Exchange,
    ) -> Result<IncomingRequest, Stop> {
        let route = ex.route.clone().ok_or(Stop::UnknownPath)?;
        let peer = peer_ip(session);
        // The IP policy runs before a byte of the body is read.
        let client_ip = self
            .gateway
            .admit(ex, peer, &session.req_header().headers)?;
        let method = session.req_header().method.clone();
        if !route.methods().contains(&method) {
            let allow = route
                .methods()
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Stop::MethodNotAllowed { allow });
        }
        // Refuse a declared oversize body before reading a byte of it.
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.body_limit as u64) {
            return Err(Stop::TooLarge {
                limit: route.body_limit,
            });
        }
        let deadline = Instant::now() + self.gateway.limits.body_timeout.0;
        let body = read_body(session, route.body_limit, deadline).await?;
        let header = session.req_header();
        Ok(IncomingRequest {
            method,
            query: header.uri.query().map(str::to_string),
            headers: header.headers.clone(),
            body,
            client_ip,
        })
    }
}

#[async_trait]
impl ProxyHttp for PublicProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
        // The header is complete: the connection's header deadline stops
        // until this request has been answered.
        let _in_flight = super::guard::connection_of(session).map(|c| c.request_started());
        let gw = &self.gateway;
        let mut ex = gw.begin(session.req_header().uri.path());
        if ex
            .route
            .as_ref()
            .is_some_and(|r| r.platform == PlatformKind::Websocket)
        {
            // An upgrade, then a whole connection (`server::websocket`).
            let peer = peer_ip(session);
            if let Some(refused) = super::websocket::serve(gw, session, ex, peer).await? {
                write_response(session, refused).await?;
            }
            return Ok(true);
        }
        let mut unread_body = false;
        let resp = match self.prepare(session, &mut ex).await {
            Ok(req) if is_openai_translate(&ex) => {
                if self.life.draining() {
                    session.set_keepalive(None);
                }
                super::openai::serve(gw, session, ex, req).await?;
                return Ok(true);
            }
            Ok(req) => gw.handle(ex, req).await,
            Err(stop) => {
                if stop.closes_connection() {
                    // The rest of the body is unread: do not reuse the connection.
                    session.set_keepalive(None);
                    unread_body = true;
                }
                gw.refuse(ex, stop).await
            }
        };
        if self.life.draining() {
            // Stopping or handing over: this answer is the connection's last
            // (HTTP/1.1 `Connection: close`; HTTP/2 gets a GOAWAY: `lifecycle`).
            session.set_keepalive(None);
        }
        let streamed = resp
            .extensions()
            .get::<StreamedBody>()
            .and_then(|s| s.take());
        match streamed {
            Some(answer) => write_streamed(session, resp, answer, &gw.metrics).await?,
            None => write_response(session, resp).await?,
        }
        if unread_body {
            linger(session).await;
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Every request is answered in request_filter.
        Err(Error::explain(
            ErrorType::InternalError,
            "no upstream peer for a request answered by the gateway",
        ))
    }
}
