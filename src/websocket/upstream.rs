//! The upstream half of a passthrough connection: moltgate's own upgrade
//! request to the bot gateway (`kind: http` upstream, `ws://` to a node).
//!
//! What the upstream sees is decided here, not copied from the client:
//! - no `Authorization` (the client's JWT is moltgate's credential), no
//!   cookies, no `Sec-WebSocket-Extensions` (so no `permessage-deflate`:
//!   frames must be readable to be inspected);
//! - no `Forwarded`, `X-Forwarded-*` or `X-Real-IP` by default: OpenClaw
//!   reads any of them as a proxy and, in token mode, refuses the upgrade;
//! - with `websocket.identity_header`, that header carries the subject the
//!   JWT proved, and `X-Forwarded-For` the client address moltgate
//!   admitted, each set once, whatever the client sent (OpenClaw's
//!   trusted-proxy mode);
//! - `Origin`, `User-Agent` and the offered subprotocols pass, so browser
//!   clients and subprotocol negotiation keep working.

use std::net::IpAddr;
use std::time::Duration;

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

use super::translate::config;
use crate::config::WebSocketSettings;

/// The client's headers that pass to the upstream.
const PASSED: [HeaderName; 3] = [
    header::ORIGIN,
    header::USER_AGENT,
    header::SEC_WEBSOCKET_PROTOCOL,
];

/// What the upgrade to the upstream needs.
pub struct Dial<'a> {
    /// `host:port` of the node.
    pub node: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The client's upgrade headers.
    pub client_headers: &'a HeaderMap,
    /// The authenticated subject.
    pub subject: &'a str,
    /// The admitted client address.
    pub client_ip: IpAddr,
    /// The route's settings.
    pub settings: &'a WebSocketSettings,
    /// Connect and upgrade within this.
    pub timeout: Duration,
}

/// Why the upstream upgrade failed (logged; the client gets 502).
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// No TCP connection, or no answer in time.
    #[error("upstream {node} unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: String,
        /// What went wrong.
        reason: String,
    },
    /// The upstream answered the upgrade with something other than 101.
    #[error("upstream {node} refused the WebSocket upgrade with {status}")]
    Refused {
        /// The node.
        node: String,
        /// Its answer.
        status: StatusCode,
    },
}

impl DialError {
    /// The `result` label of `moltgate_websocket_connections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            DialError::Unreachable { .. } => "upstream_unreachable",
            DialError::Refused { .. } => "upstream_refused",
        }
    }
}

/// An open upstream connection and the subprotocol it chose, if any.
pub type Dialed = (WebSocketStream<TcpStream>, Option<HeaderValue>);

/// Opens the upstream WebSocket.
pub async fn dial(d: Dial<'_>) -> Result<Dialed, DialError> {
    let unreachable = |reason: String| DialError::Unreachable {
        node: d.node.to_string(),
        reason,
    };
    let mut req = format!("ws://{}{}", d.node, d.path)
        .into_client_request()
        .map_err(|e| unreachable(e.to_string()))?;
    set_headers(req.headers_mut(), &d);
    let connect = async {
        let tcp = TcpStream::connect(d.node).await?;
        tcp.set_nodelay(true)?;
        let cfg = config(d.settings.max_frame);
        tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg)).await
    };
    match tokio::time::timeout(d.timeout, connect).await {
        Err(_) => Err(unreachable(format!("no upgrade within {:?}", d.timeout))),
        Ok(Err(WsError::Http(resp))) => Err(DialError::Refused {
            node: d.node.to_string(),
            status: resp.status(),
        }),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Ok(Ok((ws, resp))) => {
            let protocol = resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
            Ok((ws, protocol))
        }
    }
}

/// The upstream request's headers beyond the handshake's own.
fn set_headers(headers: &mut HeaderMap, d: &Dial<'_>) {
    for name in PASSED {
        for value in d.client_headers.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let Some(identity) = &d.settings.identity_header else {
        return;
    };
    let name = HeaderName::from_bytes(identity.0.as_bytes());
    let value = HeaderValue::from_str(d.subject);
    if let (Ok(name), Ok(value)) = (name, value) {
        headers.insert(name, value);
    }
    if let Ok(ip) = HeaderValue::from_str(&d.client_ip.to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::EnvString;

    #[test]
    fn the_upstream_sees_only_what_moltgate_decides() {
        let mut client = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client-jwt"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-user", "mallory"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("origin", "https://chat.example"),
            ("sec-websocket-protocol", "v1"),
        ] {
            client.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        fn dial<'a>(client: &'a HeaderMap, settings: &'a WebSocketSettings) -> Dial<'a> {
            Dial {
                node: "127.0.0.1:1",
                path: "/",
                client_headers: client,
                subject: "alice",
                client_ip: "203.0.113.9".parse().unwrap(),
                settings,
                timeout: Duration::from_secs(1),
            }
        }
        let mut settings = WebSocketSettings::default();
        let mut out = HeaderMap::new();
        set_headers(&mut out, &dial(&client, &settings));
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["origin", "sec-websocket-protocol"]);
        settings.identity_header = Some(EnvString("X-Forwarded-User".into()));
        let mut out = HeaderMap::new();
        set_headers(&mut out, &dial(&client, &settings));
        assert_eq!(
            out.get_all("x-forwarded-user").iter().collect::<Vec<_>>(),
            ["alice"]
        );
        assert_eq!(
            out.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["203.0.113.9"]
        );
        assert!(
            out.get("authorization").is_none() && out.get("sec-websocket-extensions").is_none()
        );
        assert!(out.get("forwarded").is_none() && out.get("x-real-ip").is_none());
    }
}
