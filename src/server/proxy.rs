//! The public listener's Pingora glue: route, check the method and body
//! limits, read the body with a deadline, hand the request to
//! [`Gateway::handle`], write the answer.
//!
//! Pingora sends upstream request headers before `request_body_filter` runs,
//! so every decision needs the body read here, in `request_filter`, which
//! then answers from the gateway itself and returns `Ok(true)`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::config::RouteMode;
use crate::pipeline::{Gateway, IncomingRequest, Outcome, ProxyPlan};

/// The public listener's proxy logic.
pub struct PublicProxy {
    /// The gateway the requests go to.
    pub gateway: Arc<Gateway>,
}

/// A passthrough request on its way to the bot.
pub struct Passthrough {
    plan: ProxyPlan,
    body_replaced: bool,
}

/// Why reading a body stopped early.
enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// Reads the whole body, refusing past `limit` bytes or after `deadline`.
async fn read_body(
    session: &mut Session,
    limit: usize,
    deadline: Instant,
) -> Result<Bytes, BodyError> {
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), session.read_request_body())
            .await
            .map_err(|_| BodyError::Timeout)?
            .map_err(|_| BodyError::Broken)?;
        match chunk {
            None => return Ok(buf.freeze()),
            Some(c) => {
                if buf.len() + c.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                buf.extend_from_slice(&c);
            }
        }
    }
}

/// Writes `resp` to the client.
pub async fn write_response(session: &mut Session, resp: Response<Bytes>) -> Result<()> {
    let (parts, body) = resp.into_parts();
    let mut header = ResponseHeader::build(parts.status, Some(parts.headers.len() + 2))?;
    for (name, value) in &parts.headers {
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    session
        .write_response_header(Box::new(header), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for PublicProxy {
    /// Set when a passthrough request is to be proxied.
    type CTX = Option<Passthrough>;

    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let gw = &self.gateway;
        let path = session.req_header().uri.path().to_string();
        let Some(route) = gw.route(&path).cloned() else {
            let resp = gw.refuse(
                "unmatched",
                "none",
                StatusCode::NOT_FOUND,
                "unknown_path",
                "no route for this path",
            );
            write_response(session, resp).await?;
            return Ok(true);
        };
        let platform = route.platform.as_str();
        // The IP policy runs before a byte of the body is read.
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        // One policy snapshot decides the whole request, IP check included.
        let policies = gw.snapshot();
        let client_ip = match gw.admit(
            &policies,
            &route.path,
            platform,
            peer,
            &session.req_header().headers,
        ) {
            Ok(ip) => ip,
            Err(resp) => {
                session.set_keepalive(None);
                write_response(session, resp).await?;
                return Ok(true);
            }
        };
        let method = session.req_header().method.clone();
        if !route.methods().contains(&method) {
            let allowed = route
                .methods()
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let mut resp = gw.refuse(
                &route.path,
                platform,
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            );
            if let Ok(v) = HeaderValue::from_str(&allowed) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            write_response(session, resp).await?;
            return Ok(true);
        }
        // Refuse a declared oversize body before reading a byte of it.
        let declared = session
            .req_header()
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.body_limit as u64) {
            let resp = gw.refuse(
                &route.path,
                platform,
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!(
                    "body exceeds the route's limit of {} bytes",
                    route.body_limit
                ),
            );
            write_response(session, resp).await?;
            return Ok(true);
        }
        if route.mode == RouteMode::Passthrough {
            // Keep the body so Pingora can send it on to the bot (at most 64 KiB,
            // which the route's limit already enforces).
            session.enable_retry_buffering();
        }
        let deadline = Instant::now() + gw.limits.body_timeout.0;
        let body = match read_body(session, route.body_limit, deadline).await {
            Ok(b) => b,
            Err(e) => {
                let (status, reason, msg) = match e {
                    BodyError::TooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "body exceeds the route's limit of {} bytes",
                            route.body_limit
                        ),
                    ),
                    BodyError::Timeout => (
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        "the body did not arrive in time".to_string(),
                    ),
                    BodyError::Broken => (
                        StatusCode::BAD_REQUEST,
                        "body_unreadable",
                        "the body could not be read".to_string(),
                    ),
                };
                let resp = gw.refuse(&route.path, platform, status, reason, &msg);
                // The rest of the body is unread: do not reuse the connection.
                session.set_keepalive(None);
                write_response(session, resp).await?;
                return Ok(true);
            }
        };
        let header = session.req_header();
        let req = IncomingRequest {
            method,
            query: header.uri.query().map(str::to_string),
            headers: header.headers.clone(),
            body,
            client_ip,
        };
        match gw.handle(&route, req, policies).await {
            Outcome::Respond(resp) => {
                write_response(session, resp).await?;
                Ok(true)
            }
            Outcome::Proxy(plan) => {
                *ctx = Some(Passthrough {
                    plan,
                    body_replaced: false,
                });
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        match ctx {
            Some(p) => Ok(Box::new(HttpPeer::new(
                p.plan.peer.as_str(),
                false,
                String::new(),
            ))),
            // Translate-mode requests are answered in request_filter.
            None => Err(Error::explain(
                ErrorType::InternalError,
                "no upstream peer for a request answered by the gateway",
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(p) = ctx else { return Ok(()) };
        for (name, value) in &p.plan.headers {
            upstream.insert_header(name.clone(), value.as_str())?;
        }
        if let Some(body) = &p.plan.body {
            upstream.remove_header(&header::TRANSFER_ENCODING);
            upstream.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
        }
        if let Some(query) = &p.plan.query {
            let uri = format!("{}?{query}", upstream.uri.path())
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "resealed query", e))?;
            upstream.set_uri(uri);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A resealed body replaces the original: sent once, in place of the
        // first chunk; later chunks of the original are dropped.
        if let Some(p) = ctx {
            if let Some(new) = p.plan.body.take() {
                *body = Some(new);
                p.body_replaced = true;
            } else if p.body_replaced {
                *body = None;
            }
        }
        Ok(())
    }
}
