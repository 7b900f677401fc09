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
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::pipeline::{Gateway, IncomingRequest};

/// The public listener's proxy logic.
pub struct PublicProxy {
    /// The gateway the requests go to.
    pub gateway: Arc<Gateway>,
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
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut Self::CTX) -> Result<bool> {
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
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        let resp = gw.handle(&route, req).await;
        write_response(session, resp).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // Every translate-mode request is answered in request_filter.
        Err(Error::explain(
            ErrorType::InternalError,
            "no upstream peer for a request answered by the gateway",
        ))
    }
}
