//! `platform: openai` with `mode: translate`: the OpenAI chat-completions
//! front for the AI cluster. The request takes the one message path
//! (`Gateway::handle`: JWT, policies on the last user message, ingress DLP,
//! context, the cluster, egress DLP per reply part); this module only
//! shapes the answer (`openai::shape`) and, for `stream: true`, writes the
//! reply parts as `chat.completion.chunk` events as the path hands them
//! over (`Exchange::reply_parts`, bounded: a slow client slows the
//! cluster's stream).
//!
//! A streamed answer's status is decided by its first event: the header is
//! written when the first part arrives (200, `text/event-stream`) or when
//! the path ends without one (its own status; a refusal is an OpenAI error
//! object, not a stream). An end after parts were sent is a last chunk with
//! `finish_reason` (`stop`, or `length` when the cluster's deadline cut the
//! answer), or an error event, then `data: [DONE]`.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::respond::write_response;
use crate::openai::shape::{self, Completion};
use crate::openai::sse::data_event;
use crate::path::{Exchange, Gateway, IncomingRequest};

/// Reply parts waiting for a slow client, per request.
const PARTS_IN_FLIGHT: usize = 4;

/// Answers one chat-completions request through the AI cluster.
pub async fn serve(
    gateway: &Arc<Gateway>,
    session: &mut Session,
    mut ex: Exchange,
    req: IncomingRequest,
) -> Result<()> {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
    let completion = Completion::new(body["model"].as_str().unwrap_or_default());
    if !crate::openai::request::is_streamed(&body) {
        let resp = gateway.handle(ex, req).await;
        return write_response(session, reshape(resp, &completion)).await;
    }
    let (tx, mut parts) = mpsc::channel(PARTS_IN_FLIGHT);
    ex.reply_parts = Some(tx);
    let handled = gateway.handle(ex, req);
    tokio::pin!(handled);
    let first = tokio::select! {
        resp = &mut handled => Err(resp),
        part = parts.recv() => Ok(part),
    };
    let first = match first {
        Ok(Some(part)) => part,
        // The path ended before any part: its own status and answer.
        Ok(None) => return write_response(session, reshape(handled.await, &completion)).await,
        Err(resp) if resp.status() != StatusCode::OK => {
            return write_response(session, reshape(resp, &completion)).await;
        }
        Err(resp) => {
            let rest = drain(&mut parts);
            return write_stream(session, &completion, rest, resp).await;
        }
    };
    write_sse_header(session).await?;
    let role = json!({"role": "assistant", "content": first});
    write_event(session, &completion.chunk(role, None)).await?;
    let resp = loop {
        tokio::select! {
            resp = &mut handled => break resp,
            part = parts.recv() => match part {
                Some(text) => write_part(session, &completion, &text).await?,
                None => break handled.await,
            },
        }
    };
    for text in drain(&mut parts) {
        write_part(session, &completion, &text).await?;
    }
    end_stream(session, &completion, &resp).await
}

/// The path ended before writing anything: a 200 becomes a whole stream.
async fn write_stream(
    session: &mut Session,
    completion: &Completion,
    parts: Vec<String>,
    resp: Response<Bytes>,
) -> Result<()> {
    write_sse_header(session).await?;
    let role = json!({"role": "assistant", "content": ""});
    write_event(session, &completion.chunk(role, None)).await?;
    for text in &parts {
        write_event(session, &completion.chunk(json!({"content": text}), None)).await?;
    }
    end_stream(session, completion, &resp).await
}

fn drain(parts: &mut mpsc::Receiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(text) = parts.try_recv() {
        out.push(text);
    }
    out
}

/// A part after the first: the next delta of the content (the path's
/// `DeltaEgress` hands on parts as pieces of one text).
async fn write_part(session: &mut Session, completion: &Completion, text: &str) -> Result<()> {
    let delta = json!({"content": text});
    write_event(session, &completion.chunk(delta, None)).await
}

/// The last chunk (or an error event), then `[DONE]`.
async fn end_stream(
    session: &mut Session,
    completion: &Completion,
    resp: &Response<Bytes>,
) -> Result<()> {
    let answer: Value = serde_json::from_slice(resp.body()).unwrap_or_default();
    let last = if resp.status() == StatusCode::OK {
        completion.chunk(json!({}), Some(shape::finish_reason(&answer)))
    } else {
        shape::error(&answer)
    };
    write_event(session, &last).await?;
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    session.write_response_body(Some(done), true).await
}

async fn write_sse_header(session: &mut Session) -> Result<()> {
    let mut header = ResponseHeader::build(StatusCode::OK, Some(2))?;
    header.insert_header(header::CONTENT_TYPE, "text/event-stream")?;
    header.insert_header(header::CACHE_CONTROL, "no-cache")?;
    session.write_response_header(Box::new(header), false).await
}

async fn write_event(session: &mut Session, event: &Value) -> Result<()> {
    let bytes = Bytes::from(data_event(&event.to_string()));
    session.write_response_body(Some(bytes), false).await
}

/// The path's JSON API answer in OpenAI's shape, same status.
fn reshape(resp: Response<Bytes>, completion: &Completion) -> Response<Bytes> {
    let (mut parts, body) = resp.into_parts();
    let Ok(answer) = serde_json::from_slice::<Value>(&body) else {
        return Response::from_parts(parts, body);
    };
    let shaped = if parts.status == StatusCode::OK {
        completion.whole(&answer)
    } else {
        shape::error(&answer)
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Bytes::from(shaped.to_string()))
}
