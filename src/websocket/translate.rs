//! One connection of moltgate's own WebSocket API, after the upgrade: every
//! text frame is a message that takes the whole message path (rate limit
//! per frame, ABAC/RBAC, DLP both ways, context, the AI cluster), as the
//! `POST /v1/messages` request it stands for, and the connection stays open.
//!
//! The answer streams: each part of the assistant's reply is sent as a
//! `reply` frame (`final: false`) as soon as it arrives from the cluster's
//! gRPC stream and has passed egress DLP (the path hands it over through the
//! request's `Exchange::reply_parts`), and an empty `final: true` frame ends
//! the answer once the path has finished (context recorded, audit written).
//! A message that is not answered gets one `error` frame instead. Clients
//! see the first words without waiting for the whole reply; the path stays
//! the one every message takes.
//!
//! Generic over the byte stream, so it is tested over an in-memory duplex
//! (`server::websocket` bridges it to the Pingora session). Frames and
//! their limits are tungstenite's: a message over `websocket.max_frame`
//! (one frame, or fragments reassembled) closes with 1009, a binary frame
//! with 1003; a connection silent for `websocket.idle` is pinged, and closed
//! (1001) if it stays silent as long again. Back-pressure: a message is
//! read only after the previous one was answered and its frames written;
//! at most [`PARTS_IN_FLIGHT`] parts wait between the path and the socket,
//! and tungstenite's write buffer is bounded, so a client that does not
//! read stops being read, and its reply stops being read from the cluster.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::frames::{ClientFrame, ServerFrame};
use crate::path::{Exchange, Gateway, IncomingRequest};

/// Reply parts that may wait between the message path and the socket: a
/// few, so writing one frame overlaps reading the next part, but a client
/// that reads slowly holds back the cluster's stream instead of a buffer.
pub const PARTS_IN_FLIGHT: usize = 4;

/// What the connection needs from its upgrade request.
pub struct Upgraded {
    /// The route's path.
    pub route: String,
    /// The upgrade request's headers (its `Authorization` authenticates
    /// every message frame again: a token that expires ends the session's
    /// messages, not only new connections).
    pub headers: HeaderMap,
    /// The client address the IP policy admitted.
    pub client_ip: std::net::IpAddr,
    /// Largest message, in bytes.
    pub max_frame: usize,
    /// Silence before a ping, and again before the close.
    pub idle: Duration,
}

/// tungstenite's limits for a route: one message (however fragmented) and
/// one frame at most `max_frame` bytes; a bounded write buffer.
pub fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .max_write_buffer_size(4 * max_frame.max(64 * 1024))
}

/// Serves one upgraded connection until it closes.
pub async fn serve<S>(gateway: Arc<Gateway>, up: Upgraded, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws =
        WebSocketStream::from_raw_socket(stream, Role::Server, Some(config(up.max_frame))).await;
    let mut pinged = false;
    loop {
        let next = match tokio::time::timeout(up.idle, ws.next()).await {
            Err(_) if pinged => {
                let _ = close(&mut ws, CloseCode::Away, "idle").await;
                return;
            }
            Err(_) => {
                pinged = true;
                if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(next) => next,
        };
        pinged = false;
        let frame = match next {
            None => return,
            Some(Ok(frame)) => frame,
            Some(Err(WsError::Capacity(_))) => {
                let _ = close(&mut ws, CloseCode::Size, "message too big").await;
                return;
            }
            Some(Err(_)) => return,
        };
        match frame {
            Message::Text(text) => {
                if answer(&gateway, &up, text.as_str(), &mut ws).await.is_err() {
                    return;
                }
            }
            Message::Binary(_) => {
                let _ = close(&mut ws, CloseCode::Unsupported, "text frames only").await;
                return;
            }
            // tungstenite answers pings and close frames itself.
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

async fn close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, reason: &str) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.close(Some(CloseFrame {
        code,
        reason: reason.to_string().into(),
    }))
    .await
}

/// Answers one text frame on `ws`: its reply parts as they arrive, then the
/// frame that ends the answer. An error is the socket's: the connection is
/// done.
async fn answer<S>(
    gateway: &Gateway,
    up: &Upgraded,
    text: &str,
    ws: &mut WebSocketStream<S>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err((id, e)) => {
            let error = ServerFrame::Error {
                id,
                error: e.code().into(),
                message: e.to_string(),
            };
            return send(ws, &error).await;
        }
    };
    let id = frame.id.clone();
    let req = IncomingRequest {
        method: Method::POST,
        query: None,
        headers: up.headers.clone(),
        body: frame.into_api_body().into(),
        client_ip: up.client_ip,
    };
    let mut ex = gateway.begin(&up.route);
    ex.client_ip = Some(up.client_ip);
    let response = run_streaming(gateway, ex, req, &id, ws).await?;
    send(ws, &closing_frame(id, response.status(), response.body())).await
}

/// Runs the message path for `req`, writing each reply part to `ws` as the
/// path hands it over, and returns the path's answer.
async fn run_streaming<S>(
    gateway: &Gateway,
    mut ex: Exchange,
    req: IncomingRequest,
    id: &str,
    ws: &mut WebSocketStream<S>,
) -> Result<Response<Bytes>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut arriving) = mpsc::channel(PARTS_IN_FLIGHT);
    ex.reply_parts = Some(parts);
    let handle = gateway.handle(ex, req);
    tokio::pin!(handle);
    let mut streamed = Ok(());
    let response = loop {
        tokio::select! {
            response = &mut handle => break response,
            Some(text) = arriving.recv(), if streamed.is_ok() => {
                streamed = send(ws, &part(id, text)).await;
                if streamed.is_err() {
                    // The client is gone: the path finishes the message
                    // without it (a closed channel is not waited on).
                    arriving.close();
                }
            }
        }
    };
    // Parts handed over just before the path finished.
    while streamed.is_ok() {
        let Ok(text) = arriving.try_recv() else { break };
        streamed = send(ws, &part(id, text)).await;
    }
    streamed.map(|()| response)
}

async fn send<S>(ws: &mut WebSocketStream<S>, frame: &ServerFrame) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(Message::text(frame.to_text())).await
}

/// A reply part, as it arrived (through egress DLP).
fn part(id: &str, text: String) -> ServerFrame {
    ServerFrame::Reply {
        id: id.to_string(),
        text,
        last: false,
    }
}

/// The frame that ends the answer, from the API's answer to the message:
/// an empty final `reply` when it was answered (its replies, repeated in
/// the body, were streamed already), else the `error` frame.
fn closing_frame(id: String, status: StatusCode, body: &[u8]) -> ServerFrame {
    if status == StatusCode::OK {
        return ServerFrame::Reply {
            id,
            text: String::new(),
            last: true,
        };
    }
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = json["error"]
        .as_str()
        .or_else(|| json["status"].as_str())
        .unwrap_or("error")
        .to_string();
    let mut message = json["message"].as_str().unwrap_or_default().to_string();
    if let Some(code) = json["code"].as_str() {
        // A held message: the code that releases it, as the API answers it.
        message = format!("{message} (code {code})");
    }
    ServerFrame::Error { id, error, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_become_closing_frames() {
        // The replies in the body were streamed as parts: not repeated.
        let ok = br#"{"envelope_id":"e","replies":[{"text":"a"},{"text":"b"}],"complete":true}"#;
        assert_eq!(
            closing_frame("c1".into(), StatusCode::OK, ok),
            ServerFrame::Reply {
                id: "c1".into(),
                text: String::new(),
                last: true
            }
        );
        let blocked = br#"{"error":"dlp_blocked","message":"blocked by policy"}"#;
        assert_eq!(
            closing_frame("c2".into(), StatusCode::UNPROCESSABLE_ENTITY, blocked),
            ServerFrame::Error {
                id: "c2".into(),
                error: "dlp_blocked".into(),
                message: "blocked by policy".into()
            }
        );
        let held = br#"{"status":"confirmation_required","code":"123456","expires_in":60,"message":"reply with the code"}"#;
        let frame = closing_frame("c3".into(), StatusCode::ACCEPTED, held);
        assert!(matches!(&frame, ServerFrame::Error { error, message, .. }
            if error == "confirmation_required" && message.contains("123456")));
    }
}
