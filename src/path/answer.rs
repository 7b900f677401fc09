//! The one place where an end of the path becomes an HTTP answer, per
//! channel: a JSON API gets an error status and `{"error","message"}`; a
//! platform webhook gets its acknowledgement (so it does not redeliver into
//! a storm) with a notice to the user, inline when the platform allows it,
//! else through its API. WebSocket frames will render here too.

use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::stop::{Stop, StopKind};
use crate::platform::{Channel, PlatformAdapter, PlatformMessage, WebhookResponse};
use crate::writeback::Writeback;

/// What a user is told when policy denies their message.
pub const DENIED: &str = "Sorry, this request is not allowed by policy.";
/// What a rate-limited platform user is told (once per window).
pub const SLOW_DOWN: &str =
    "You are sending messages faster than allowed. Please wait a moment and try again.";

/// A message that was delivered and answered.
#[derive(Debug)]
pub struct Done {
    /// The answer.
    pub response: Response<Bytes>,
    /// `answered` (AI cluster) or `proxied` (bot).
    pub decision: &'static str,
    /// A detail for the audit line (`inline_reply`, `api_reply`, …).
    pub note: &'static str,
    /// Whether the message is settled (the dedupe claim is committed).
    pub settles: bool,
}

/// Renders `stop` for the route's channel. `msg` is the verified message,
/// when the stop came after authentication (needed for a notice).
pub fn render(
    stop: &Stop,
    adapter: Option<&dyn PlatformAdapter>,
    msg: Option<&PlatformMessage>,
    writeback: &Writeback,
) -> Response<Bytes> {
    match stop {
        Stop::Handshake { response, .. } | Stop::Ignored { response, .. } => {
            return webhook_response(response.clone())
        }
        Stop::Duplicate => {
            if let (Some(a), Some(m)) = (adapter, msg) {
                return webhook_response(a.ack(m));
            }
        }
        _ => {}
    }
    let webhook = adapter.filter(|a| a.channel() == Channel::Webhook);
    match (stop.kind(), webhook, msg) {
        (StopKind::Policy, Some(a), Some(m)) if !matches!(stop, Stop::CannotReseal) => {
            notify(a, m, notice(stop).as_deref(), writeback)
        }
        _ => api_error(stop),
    }
}

/// The platform's answer to a message that stops here: 200, and `text`
/// to the user inline when the platform allows it, else by API.
fn notify(
    adapter: &dyn PlatformAdapter,
    msg: &PlatformMessage,
    text: Option<&str>,
    writeback: &Writeback,
) -> Response<Bytes> {
    if let Some(text) = text {
        if let Some(resp) = adapter.inline_reply(msg, text, SystemTime::now()) {
            return webhook_response(resp);
        }
        send_reply(adapter, msg, text, writeback);
    }
    webhook_response(adapter.ack(msg))
}

/// Sends `text` to the user through the platform API, in the background.
pub fn send_reply(
    adapter: &dyn PlatformAdapter,
    msg: &PlatformMessage,
    text: &str,
    writeback: &Writeback,
) {
    let platform = adapter.platform();
    match adapter.reply_calls(msg, text) {
        Ok(calls) if calls.is_empty() => {}
        Ok(calls) => {
            let writeback = writeback.clone();
            tokio::spawn(async move {
                // Counted and logged inside `send`.
                let _ = writeback.send(platform, calls).await;
            });
        }
        Err(e) => {
            writeback.count_failure(platform);
            tracing::error!(platform, error = %e, "cannot build the reply call; the reply is dropped");
        }
    }
}

/// What the user is told on a chat platform.
fn notice(stop: &Stop) -> Option<String> {
    Some(match stop {
        Stop::RateLimited { notify: false, .. } => return None,
        Stop::RateLimited { .. } => SLOW_DOWN.into(),
        Stop::Denied { .. } => DENIED.into(),
        Stop::Blocked { rule } => {
            format!("Your message was not sent: it contains data that must not be shared ({rule}).")
        }
        Stop::ConfirmRequired { code, expires_in } => format!(
            "This request needs confirmation. Reply with the code {code} within {expires_in} seconds to go ahead."
        ),
        Stop::ConfirmWrong { remaining } => {
            format!("That code is wrong; {remaining} tries left.")
        }
        Stop::ConfirmRejected => "That code is wrong; the request was cancelled.".into(),
        Stop::ConfirmExpired => "That code has expired; the request was not sent.".into(),
        _ => return None,
    })
}

/// The JSON API's answer to a stop.
fn api_error(stop: &Stop) -> Response<Bytes> {
    let (status, code, message): (StatusCode, &str, String) = match stop {
        Stop::UnknownPath => (StatusCode::NOT_FOUND, "unknown_path", "no route for this path".into()),
        Stop::MethodNotAllowed { allow } => {
            let mut resp = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            );
            if let Ok(v) = HeaderValue::from_str(allow) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        Stop::TooLarge { limit } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("body exceeds the route's limit of {limit} bytes"),
        ),
        Stop::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout", "the body did not arrive in time".into()),
        Stop::BodyUnreadable => (StatusCode::BAD_REQUEST, "body_unreadable", "the body could not be read".into()),
        Stop::IpDenied { reason } => (StatusCode::FORBIDDEN, reason, "your address is not allowed".into()),
        Stop::Rejected(r) => return rejection(r),
        Stop::RateLimited { retry_after, .. } => {
            let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests; slow down");
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            return resp;
        }
        Stop::Denied { .. } => (StatusCode::FORBIDDEN, "forbidden", "denied by policy".into()),
        Stop::Blocked { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "dlp_blocked", notice(stop).unwrap_or_default()),
        Stop::ConfirmRequired { code, expires_in } => {
            return json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({"status": "confirmation_required", "code": code, "expires_in": expires_in, "message": notice(stop)}),
            )
        }
        Stop::ConfirmWrong { .. } => (StatusCode::FORBIDDEN, "confirmation_wrong_code", notice(stop).unwrap_or_default()),
        Stop::ConfirmRejected => (StatusCode::FORBIDDEN, "confirmation_rejected", notice(stop).unwrap_or_default()),
        Stop::ConfirmExpired => (StatusCode::GONE, "confirmation_expired", notice(stop).unwrap_or_default()),
        Stop::CannotReseal => (
            StatusCode::FORBIDDEN,
            "cannot_reseal",
            "this platform's signature cannot be renewed, so masked content is refused rather than passed on unmasked".into(),
        ),
        Stop::NoUpstream => (StatusCode::SERVICE_UNAVAILABLE, "no_upstream", "route has no upstream".into()),
        Stop::DuplicateInFlight => {
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "in_flight",
                "an earlier delivery of this message is still being processed",
                1,
            )
        }
        Stop::Unavailable { retry_after, status, .. } => {
            return retry_later(
                *status,
                "upstream_unavailable",
                "no upstream accepted the message; retry later",
                *retry_after,
            )
        }
        Stop::SharedUnavailable => {
            return retry_later(
                StatusCode::SERVICE_UNAVAILABLE,
                "shared_state_unavailable",
                "the gateway's shared state is unavailable; retry later",
                1,
            )
        }
        Stop::Duplicate | Stop::Handshake { .. } | Stop::Ignored { .. } => {
            (StatusCode::OK, "duplicate", "already handled".into())
        }
    };
    json_error(status, code, &message)
}

/// A refused request: every failure to authenticate answers alike (the
/// precise reason, `r.kind()`, goes to the audit line and the metric only).
fn rejection(r: &crate::platform::Rejection) -> Response<Bytes> {
    let mut resp = json_error(r.status(), r.public_kind(), &r.public_message());
    if let crate::platform::Rejection::Unauthorized { challenge, .. } = r {
        if let Ok(v) = HeaderValue::from_str(challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    resp
}

fn retry_later(status: StatusCode, code: &str, message: &str, secs: u32) -> Response<Bytes> {
    let mut resp = json_error(status, code, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// An adapter's answer as an HTTP response.
pub fn webhook_response(r: WebhookResponse) -> Response<Bytes> {
    let mut resp = Response::new(r.body);
    *resp.status_mut() = r.status;
    if !r.content_type.is_empty() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(r.content_type),
        );
    }
    resp
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error: `{"error": "<code>", "message": "<explanation>"}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    json_response(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
