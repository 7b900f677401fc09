//! One connection of moltgate's own WebSocket API, after the upgrade: every
//! text frame is a message that takes the whole message path (rate limit
//! per frame, ABAC/RBAC, DLP both ways, context, the AI cluster), as the
//! `POST /v1/messages` request it stands for; the answer goes back as
//! `reply` frames, or one `error` frame, and the connection stays open.
//!
//! Generic over the byte stream, so it is tested over an in-memory duplex
//! (`server::websocket` bridges it to the Pingora session). Frames and
//! their limits are tungstenite's: a message over `websocket.max_frame`
//! (one frame, or fragments reassembled) closes with 1009, a binary frame
//! with 1003; a connection silent for `websocket.idle` is pinged, and closed
//! (1001) if it stays silent as long again. Back-pressure: a message is
//! read only after the previous one was answered and its frames written,
//! and tungstenite's write buffer is bounded, so a client that does not
//! read stops being read.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::frames::{ClientFrame, ServerFrame};
use crate::path::{Gateway, IncomingRequest};

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
                for answer in answer(&gateway, &up, text.as_str()).await {
                    if ws.send(Message::text(answer.to_text())).await.is_err() {
                        return;
                    }
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

/// The frames that answer one text frame.
async fn answer(gateway: &Gateway, up: &Upgraded, text: &str) -> Vec<ServerFrame> {
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err((id, e)) => {
            return vec![ServerFrame::Error {
                id,
                error: e.code().into(),
                message: e.to_string(),
            }]
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
    let response = gateway.handle(ex, req).await;
    frames_of(id, response.status(), response.body())
}

/// The API's answer (`{"replies":[{"text"}],…}` or `{"error","message"}`)
/// as frames.
fn frames_of(id: String, status: StatusCode, body: &[u8]) -> Vec<ServerFrame> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if status == StatusCode::OK {
        let texts: Vec<String> = json["replies"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|p| p["text"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if texts.is_empty() {
            return vec![ServerFrame::Reply {
                id,
                text: String::new(),
                last: true,
            }];
        }
        let n = texts.len();
        return texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| ServerFrame::Reply {
                id: id.clone(),
                text,
                last: i + 1 == n,
            })
            .collect();
    }
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
    vec![ServerFrame::Error { id, error, message }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_become_frames() {
        let ok = br#"{"envelope_id":"e","replies":[{"text":"a"},{"text":"b"}],"complete":true}"#;
        assert_eq!(
            frames_of("c1".into(), StatusCode::OK, ok),
            vec![
                ServerFrame::Reply {
                    id: "c1".into(),
                    text: "a".into(),
                    last: false
                },
                ServerFrame::Reply {
                    id: "c1".into(),
                    text: "b".into(),
                    last: true
                },
            ]
        );
        let blocked = br#"{"error":"dlp_blocked","message":"blocked by policy"}"#;
        assert_eq!(
            frames_of("c2".into(), StatusCode::UNPROCESSABLE_ENTITY, blocked),
            vec![ServerFrame::Error {
                id: "c2".into(),
                error: "dlp_blocked".into(),
                message: "blocked by policy".into()
            }]
        );
        let held = br#"{"status":"confirmation_required","code":"123456","expires_in":60,"message":"reply with the code"}"#;
        let frames = frames_of("c3".into(), StatusCode::ACCEPTED, held);
        assert!(
            matches!(&frames[0], ServerFrame::Error { error, message, .. }
            if error == "confirmation_required" && message.contains("123456"))
        );
    }
}
