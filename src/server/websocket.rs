//! The WebSocket upgrade on a `platform: websocket` route, and the bridge
//! between the upgraded Pingora session and `websocket::translate`.
//!
//! The upgrade is a request like the others until the 101: IP policy,
//! method (GET), the RFC 6455 headers, then the JWT (a missing or bad token
//! gets 401 and no upgrade, and spends the address's `per_ip` budget like
//! any failed verification). Refusals take the path's finish step (answer,
//! audit line, metrics). An accepted upgrade is audited as `upgraded`; each
//! message frame then gets its own audit line from the path.
//!
//! No extension is negotiated (so no `permessage-deflate`) and no
//! subprotocol. The bridge copies bytes both ways through a bounded
//! in-memory pipe: what the client sends is read only while the pipe has
//! room, and the pipe drains only as fast as the client reads, so a slow
//! reader never makes the gateway buffer without bound.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::observe::Audit;
use crate::path::routes::HttpUpstream;
use crate::path::{Exchange, Gateway, Route, Stop, Target};
use crate::platform::Rejection;
use crate::websocket::passthrough::{self, Proxied};
use crate::websocket::translate::{self, Upgraded};
use crate::websocket::upstream;

/// Bytes in flight between the session and the WebSocket, each way.
const PIPE: usize = 64 * 1024;

/// Serves an upgrade request on a WebSocket route: the 101 and then the
/// whole connection (`Ok(None)`), or the refusal for the caller to write.
pub async fn serve(
    gateway: &Arc<Gateway>,
    session: &mut Session,
    mut ex: Exchange,
    peer: IpAddr,
) -> Result<Option<Response<Bytes>>> {
    let started = Instant::now();
    let (up, key) = match admit(gateway, session, &mut ex, peer).await {
        Ok(upgrade) => upgrade,
        Err(stop) => {
            session.set_keepalive(None);
            return Ok(Some(gateway.refuse(ex, stop).await));
        }
    };
    let route = ex.route.clone();
    let bot = route.as_ref().and_then(|r| match &r.target {
        Target::Bot(bot) => Some((r.clone(), bot.clone())),
        Target::Assistant(_) => None,
    });
    let Some((route, bot)) = bot else {
        write_101(session, &key, None).await?;
        count(gateway, &up.route, "translate", "upgraded");
        audit_upgrade(ex, &up, started);
        let run = |pipe| translate::serve(gateway.clone(), up, pipe);
        return bridged(session, run).await;
    };
    let subject = ex.sender_id.clone();
    let (upstream, protocol) = match dial(&route, &bot, &up, &subject).await {
        Ok(dialed) => dialed,
        Err(e) => {
            tracing::warn!(error = %e, route = %up.route, "WebSocket passthrough: no upstream connection");
            count(gateway, &up.route, "passthrough", e.label());
            session.set_keepalive(None);
            let stop = Stop::Unavailable {
                retry_after: 1,
                code: -1,
                status: StatusCode::BAD_GATEWAY,
            };
            return Ok(Some(gateway.refuse(ex, stop).await));
        }
    };
    write_101(session, &key, protocol).await?;
    count(gateway, &up.route, "passthrough", "upgraded");
    audit_upgrade(ex, &up, started);
    let conn = Proxied {
        route: up.route.clone(),
        authorization: up
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        client_ip: up.client_ip,
        subject,
        settings: route.websocket.clone(),
    };
    let run = |pipe| passthrough::serve(gateway.clone(), conn, pipe, upstream);
    bridged(session, run).await
}

/// Opens the upstream WebSocket of a passthrough route.
async fn dial(
    route: &Route,
    bot: &HttpUpstream,
    up: &Upgraded,
    subject: &str,
) -> std::result::Result<upstream::Dialed, upstream::DialError> {
    let node = bot.pick().ok_or_else(|| upstream::DialError::Unreachable {
        node: bot.name.clone(),
        reason: "the upstream has no nodes".into(),
    })?;
    let path = route
        .websocket
        .upstream_path
        .as_deref()
        .unwrap_or(&route.path);
    upstream::dial(upstream::Dial {
        node,
        path,
        client_headers: &up.headers,
        subject,
        client_ip: up.client_ip,
        settings: &route.websocket,
        timeout: bot.timeout,
    })
    .await
}

/// Answers the upgrade: 101, no extension, the upstream's subprotocol if any.
async fn write_101(
    session: &mut Session,
    key: &str,
    protocol: Option<http::HeaderValue>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(StatusCode::SWITCHING_PROTOCOLS, Some(4))?;
    resp.insert_header(header::UPGRADE, "websocket")?;
    resp.insert_header(header::CONNECTION, "Upgrade")?;
    resp.insert_header(
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes()),
    )?;
    if let Some(protocol) = protocol {
        resp.insert_header(header::SEC_WEBSOCKET_PROTOCOL, protocol)?;
    }
    session.write_response_header(Box::new(resp), false).await
}

/// Runs `connection` on one end of a pipe bridged to the upgraded session,
/// until either ends.
async fn bridged<F, Fut>(session: &mut Session, connection: F) -> Result<Option<Response<Bytes>>>
where
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let mut connection = tokio::spawn(connection(theirs));
    let bridged = bridge(session, ours).await;
    // The connection ends once its pipe closes (it says goodbye to the
    // upstream first); wait for that, bounded, so its audit line is written.
    let wait = std::time::Duration::from_secs(3);
    if tokio::time::timeout(wait, &mut connection).await.is_err() {
        connection.abort();
    }
    bridged.map(|()| None)
}

fn count(gateway: &Gateway, route: &str, mode: &str, result: &str) {
    gateway
        .metrics
        .websocket_connections
        .with_label_values(&[route, mode, result])
        .inc();
}

/// The checks before the 101: IP, method, headers, token.
async fn admit(
    gateway: &Gateway,
    session: &Session,
    ex: &mut Exchange,
    peer: IpAddr,
) -> std::result::Result<(Upgraded, String), Stop> {
    let route = ex.route.clone().ok_or(Stop::UnknownPath)?;
    let headers = &session.req_header().headers;
    let client_ip = gateway.admit(ex, peer, headers)?;
    if session.req_header().method != Method::GET {
        return Err(Stop::MethodNotAllowed {
            allow: "GET".into(),
        });
    }
    let key = upgrade_key(headers).ok_or_else(|| {
        Stop::Rejected(Rejection::Malformed(
            "a WebSocket route needs an upgrade: GET with Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Version: 13 and Sec-WebSocket-Key".into(),
        ))
    })?;
    let policies = ex.policies.clone();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let subject = match policies.jwt.verify(authorization) {
        Ok(subject) => subject,
        Err(e) => {
            let stop = Stop::Rejected(Rejection::Unauthorized {
                kind: e.kind(),
                message: e.to_string(),
                challenge: e.www_authenticate(),
            });
            let stop =
                crate::path::rate::unverified(&policies, gateway.shared.as_ref(), client_ip, stop)
                    .await;
            ex.record_stop(&stop);
            return Err(stop);
        }
    };
    ex.sender_id = subject.id;
    let up = Upgraded {
        route: route.path.clone(),
        headers: headers.clone(),
        client_ip,
        max_frame: route.websocket.max_frame,
        idle: route.websocket.idle.0,
    };
    Ok((up, key))
}

/// The `Sec-WebSocket-Key` of a well-formed RFC 6455 upgrade request.
fn upgrade_key(headers: &HeaderMap) -> Option<String> {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return None;
    }
    let version = headers.get(header::SEC_WEBSOCKET_VERSION)?;
    if version.as_bytes() != b"13" {
        return None;
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)?
        .to_str()
        .ok()?
        .trim();
    // 16 random bytes in base64.
    (key.len() == 24).then(|| key.to_string())
}

/// The upgrade's audit line (each message frame gets its own from the path).
fn audit_upgrade(ex: Exchange, up: &Upgraded, started: Instant) {
    let mut audit = Audit::at(&up.route, "websocket", started);
    audit.decision = "upgraded";
    audit.status = 101;
    audit.client_ip = Some(up.client_ip);
    audit.sender_id = ex.sender_id;
    audit.emit();
}

/// Copies bytes between the upgraded session and the WebSocket's end of
/// the pipe until either side ends.
async fn bridge(session: &mut Session, pipe: tokio::io::DuplexStream) -> Result<()> {
    let (mut from_ws, mut to_ws) = tokio::io::split(pipe);
    let mut inbound: Option<Bytes> = None;
    let mut client_done = false;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = from_ws.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let out = Bytes::copy_from_slice(&buf[..n]);
                    session.write_response_body(Some(out), false).await?;
                }
            },
            written = async {
                match &inbound {
                    Some(b) => to_ws.write(b).await,
                    None => std::future::pending().await,
                }
            } => match written {
                Ok(n) if n > 0 => {
                    inbound = inbound.take().map(|mut b| b.split_off(n)).filter(|b| !b.is_empty());
                }
                _ => break,
            },
            body = session.read_request_body(), if inbound.is_none() && !client_done => match body {
                Ok(Some(b)) if !b.is_empty() => inbound = Some(b),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    client_done = true;
                    let _ = to_ws.shutdown().await;
                }
            },
        }
    }
    Ok(())
}
