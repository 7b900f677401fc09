//! One proxied WebSocket connection (`platform: websocket`,
//! `mode: passthrough`), after both upgrades: the client's (answered by
//! moltgate) and the upstream's (made by moltgate, with no extension
//! offered, so never `permessage-deflate`).
//!
//! Every text frame is inspected ([`FrameInspector`]) in both directions;
//! one that carries a message (or that inspection refused) also takes the
//! message path ([`Gateway::frame`]: token, rate limit, authorisation, one
//! audit line). Refused client frames never reach the upstream; the client
//! gets an error frame in its protocol (an OpenClaw `res` with `ok: false`,
//! or the `{"type":"error"}` frame of moltgate's API) and the connection
//! stays open. A frame nothing changed is sent with the payload bytes that
//! arrived. Frames are whole messages: tungstenite reassembles fragments,
//! under `websocket.max_frame` (1009 past it). Binary frames cannot be
//! inspected and close both sides (1003). Pings are answered per hop.
//!
//! Back-pressure: one frame is in flight at a time; a frame is read from
//! either side only after the previous one was written (and flushed), and
//! the write buffers are bounded, so a slow reader slows its peer down
//! instead of growing memory.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::inspect::{FrameInspector, Verdict};
use super::translate::config;
use crate::config::{WebSocketProfile, WebSocketSettings};
use crate::observe::Audit;
use crate::path::{egress, Frame, Gateway};

/// What the connection needs from its upgrade.
pub struct Proxied {
    /// The route's path.
    pub route: String,
    /// The upgrade's `Authorization` header (checked again per message).
    pub authorization: Option<String>,
    /// The client address the upgrade was admitted from.
    pub client_ip: IpAddr,
    /// The authenticated subject (for the closing audit line).
    pub subject: String,
    /// The route's WebSocket settings.
    pub settings: WebSocketSettings,
}

/// Why the connection ended, for its audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Client,
    Upstream,
    Idle,
    TooBig,
    Binary,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::Client => "client_closed",
            Ended::Upstream => "upstream_closed",
            Ended::Idle => "idle",
            Ended::TooBig => "frame_too_big",
            Ended::Binary => "binary_frame",
        }
    }
}

/// Both ends of one proxied connection.
struct Relay<'g, C, U> {
    gateway: &'g Gateway,
    conn: Proxied,
    inspector: FrameInspector,
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
}

/// Serves one proxied connection until either side closes.
pub async fn serve<C, U>(
    gateway: Arc<Gateway>,
    conn: Proxied,
    client: C,
    upstream: WebSocketStream<U>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let max_frame = conn.settings.max_frame;
    let client =
        WebSocketStream::from_raw_socket(client, Role::Server, Some(config(max_frame))).await;
    let metrics = gateway.metrics.clone();
    metrics.websocket_open.inc();
    let mut relay = Relay {
        gateway: &gateway,
        inspector: FrameInspector::new(&conn.settings),
        conn,
        client,
        upstream,
    };
    let ended = relay.run().await;
    metrics.websocket_open.dec();
    let mut audit = Audit::at(&relay.conn.route, "websocket", started);
    audit.decision = "closed";
    audit.reason = ended.label().into();
    audit.client_ip = Some(relay.conn.client_ip);
    audit.sender_id = std::mem::take(&mut relay.conn.subject);
    audit.emit();
}

impl<C, U> Relay<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Ended {
        let idle = self.conn.settings.idle.0;
        let mut pinged = false;
        loop {
            let step = tokio::select! {
                m = self.client.next() => self.on_client(m).await,
                m = self.upstream.next() => self.on_upstream(m).await,
                () = tokio::time::sleep(idle) => {
                    if pinged {
                        self.close_both(CloseCode::Away, "idle").await;
                        return Ended::Idle;
                    }
                    pinged = true;
                    match self.client.send(Message::Ping(Vec::new().into())).await {
                        Ok(()) => continue,
                        Err(_) => Some(Ended::Client),
                    }
                }
            };
            match step {
                Some(ended) => return ended,
                None => pinged = false,
            }
        }
    }

    /// Handles what the client sent; `Some` when the connection is over.
    async fn on_client(&mut self, m: Option<Result<Message, WsError>>) -> Option<Ended> {
        match m {
            Some(Ok(Message::Text(text))) => self.client_text(text).await,
            Some(Ok(Message::Binary(_))) => {
                self.close_both(CloseCode::Unsupported, "text frames only")
                    .await;
                Some(Ended::Binary)
            }
            Some(Ok(Message::Close(frame))) => {
                let _ = self.upstream.close(frame).await;
                Some(Ended::Client)
            }
            Some(Ok(_)) => None,
            Some(Err(WsError::Capacity(_))) => {
                let _ = close(&mut self.client, CloseCode::Size, "message too big").await;
                let _ = close(&mut self.upstream, CloseCode::Away, "client went away").await;
                Some(Ended::TooBig)
            }
            None | Some(Err(_)) => {
                let _ = close(&mut self.upstream, CloseCode::Away, "client went away").await;
                Some(Ended::Client)
            }
        }
    }

    async fn client_text(
        &mut self,
        text: tokio_tungstenite::tungstenite::Utf8Bytes,
    ) -> Option<Ended> {
        let policies = self.gateway.snapshot();
        let inspected = self.inspector.client_frame(&policies, text.as_str());
        let counts = inspected.message.is_some() || matches!(inspected.verdict, Verdict::Refuse(_));
        let passed = if counts {
            let frame = Frame {
                route: &self.conn.route,
                authorization: self.conn.authorization.as_deref(),
                client_ip: self.conn.client_ip,
                id: inspected.id.as_deref(),
                message: inspected.message.as_deref(),
                found: &inspected.found,
                refusal: match &inspected.verdict {
                    Verdict::Refuse(r) => Some(r),
                    _ => None,
                },
                masked: matches!(inspected.verdict, Verdict::Rewrite(_)),
            };
            self.gateway.frame(frame).await
        } else {
            Ok(())
        };
        let (forward, verdict) = match (passed, inspected.verdict) {
            (Err(answer), _) => {
                self.count("ingress", "refused");
                let error = self.error_frame(inspected.id, answer.status(), answer.body());
                let sent = self.client.send(Message::text(error)).await;
                return sent.err().map(|_| Ended::Client);
            }
            (Ok(()), Verdict::Forward) => (Message::Text(text), "forwarded"),
            (Ok(()), Verdict::Rewrite(masked)) => (Message::text(masked), "masked"),
            // Refusals always take the path, which refuses them.
            (Ok(()), Verdict::Refuse(_)) => return None,
        };
        self.count("ingress", verdict);
        match self.upstream.send(forward).await {
            Ok(()) => None,
            Err(_) => {
                let _ = close(&mut self.client, CloseCode::Error, "upstream went away").await;
                Some(Ended::Upstream)
            }
        }
    }

    /// Handles what the upstream sent; `Some` when the connection is over.
    async fn on_upstream(&mut self, m: Option<Result<Message, WsError>>) -> Option<Ended> {
        let text = match m {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                self.close_both(CloseCode::Unsupported, "text frames only")
                    .await;
                return Some(Ended::Binary);
            }
            Some(Ok(Message::Close(frame))) => {
                let _ = self.client.close(frame).await;
                return Some(Ended::Upstream);
            }
            Some(Ok(_)) => return None,
            Some(Err(WsError::Capacity(_))) => {
                let _ = close(&mut self.upstream, CloseCode::Size, "message too big").await;
                let _ = close(&mut self.client, CloseCode::Error, "upstream frame too big").await;
                return Some(Ended::TooBig);
            }
            None | Some(Err(_)) => {
                let _ = close(&mut self.client, CloseCode::Error, "upstream went away").await;
                return Some(Ended::Upstream);
            }
        };
        let policies = self.gateway.snapshot();
        let inspected = self.inspector.upstream_frame(&policies, text.as_str());
        egress::count(&self.gateway.metrics, &inspected.found);
        let out = match inspected.verdict {
            Verdict::Rewrite(masked) => {
                // Rewritten without a finding: a streamed text's tail held
                // back until it is settled (not DLP acting on a value).
                let why = if inspected.found.is_empty() {
                    "held"
                } else {
                    "masked"
                };
                self.count("egress", why);
                Message::text(masked)
            }
            Verdict::Forward | Verdict::Refuse(_) => {
                self.count("egress", "forwarded");
                Message::Text(text)
            }
        };
        self.client.send(out).await.err().map(|_| Ended::Client)
    }

    /// A refusal in the client's protocol: an OpenClaw `res` with
    /// `ok: false` for `profile: openclaw`, else moltgate's error frame.
    fn error_frame(&self, id: Option<String>, status: http::StatusCode, body: &[u8]) -> String {
        let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let code = answer["error"].as_str().unwrap_or("refused");
        let message = answer["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("refused by moltgate ({status})"));
        let id = id.unwrap_or_default();
        match self.conn.settings.profile {
            Some(WebSocketProfile::Openclaw) => json!({
                "type": "res", "id": id, "ok": false,
                "error": {"code": code, "message": message, "details": {"source": "moltgate"}},
            }),
            _ => json!({"type": "error", "id": id, "error": code, "message": message}),
        }
        .to_string()
    }

    fn count(&self, direction: &str, verdict: &str) {
        self.gateway
            .metrics
            .websocket_frames
            .with_label_values(&[self.conn.route.as_str(), direction, verdict])
            .inc();
    }

    async fn close_both(&mut self, code: CloseCode, reason: &str) {
        let _ = close(&mut self.client, code, reason).await;
        let _ = close(&mut self.upstream, code, reason).await;
    }
}

/// Sends a close frame, bounded in time (a peer that does not read must
/// not hold the connection open).
async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.to_string().into(),
    };
    match tokio::time::timeout(CLOSE_WAIT, ws.close(Some(frame))).await {
        Ok(done) => done,
        Err(_) => Ok(()),
    }
}

/// How long a close frame may take to send.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
