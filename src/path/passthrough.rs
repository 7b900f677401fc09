//! Stage: dispatch to the bot behind a passthrough route, and egress DLP on
//! its answer. The request is the one ingress DLP scanned (rebuilt and
//! re-signed if anything was masked); the bot's inline answer is opened,
//! scanned and sealed again before the platform sees it, and withheld
//! (replaced by the platform's plain acknowledgement) when it cannot be
//! scanned or a `block` rule matches.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use super::answer::Done;
use super::egress::{self, AnswerScan};
use super::exchange::{Found, IncomingRequest};
use super::routes::HttpUpstream;
use super::stop::Stop;
use super::streamed::{StreamedBody, StreamingAnswer};
use crate::openai::{self, chunks::ChunkMasker};
use crate::platform::adapter::Resealed;
use crate::platform::{Payload, PlatformAdapter, PlatformMessage};
use crate::policy::PolicySet;
use crate::tokenize::Known;
use crate::upstream::bot::{BotAnswer, BotClient, BotError, BotRequest, BotStream, ANSWER_LIMIT};

/// What the passthrough call needs from the earlier stages.
pub struct Forward<'a> {
    /// The route's path (the bot sees the same path).
    pub path: &'a str,
    /// The request as received.
    pub req: &'a IncomingRequest,
    /// The rebuilt request, if ingress DLP masked anything.
    pub resealed: Option<Resealed>,
    /// The route's adapter, which opens and seals the bot's answer.
    pub adapter: &'a dyn PlatformAdapter,
    /// The verified message (for the platform's plain acknowledgement).
    pub msg: &'a PlatformMessage,
    /// The tokens the request was given, restored in the answer.
    pub known: Option<Arc<Known>>,
}

/// Sends the inspected request to the bot and scans its answer.
pub async fn forward(
    client: &dyn BotClient,
    bot: &HttpUpstream,
    policies: &Arc<PolicySet>,
    f: Forward<'_>,
    found: &mut Vec<Found>,
) -> Result<(String, Done), Stop> {
    let peer = bot.pick().ok_or(Stop::NoUpstream)?.to_string();
    let request = bot_request(&f);
    if f.adapter.platform() == "openai" && openai::request::is_streamed_body(&request.body) {
        return forward_stream(client, bot, policies, f, request, peer, found).await;
    }
    let answer = client
        .call(&peer, request, bot.timeout)
        .await
        .map_err(|e| unavailable(bot, e))?;
    let status = answer.status;
    let (response, note) = inspect_answer(policies, &f, answer, found);
    Ok((
        peer,
        Done {
            response,
            decision: "proxied",
            note,
            settles: status.is_success(),
        },
    ))
}

/// The bot could not be reached: the sender may retry.
fn unavailable(bot: &HttpUpstream, e: BotError) -> Stop {
    tracing::warn!(error = %e, upstream = %bot.name, "passthrough bot call failed");
    Stop::Unavailable {
        retry_after: 1,
        code: -1,
        status: StatusCode::BAD_GATEWAY,
    }
}

/// A streamed (`stream: true`) OpenAI-compatible call: an SSE answer goes
/// back as it arrives, through streaming-safe DLP; any other answer (an
/// error) is read whole and scanned like every answer.
async fn forward_stream(
    client: &dyn BotClient,
    bot: &HttpUpstream,
    policies: &Arc<PolicySet>,
    f: Forward<'_>,
    request: BotRequest,
    peer: String,
    found: &mut Vec<Found>,
) -> Result<(String, Done), Stop> {
    let answer = client
        .stream(&peer, request, bot.timeout)
        .await
        .map_err(|e| unavailable(bot, e))?;
    let is_sse = answer
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    let status = answer.status;
    if !is_sse {
        let whole = read_whole(answer).await.map_err(|e| unavailable(bot, e))?;
        let (response, note) = inspect_answer(policies, &f, whole, found);
        let done = Done {
            response,
            decision: "proxied",
            note,
            settles: status.is_success(),
        };
        return Ok((peer, done));
    }
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = status;
    let mut headers = answer.headers;
    headers.remove(header::CONTENT_LENGTH);
    *response.headers_mut() = headers;
    let masker = ChunkMasker::new(policies.clone()).restoring(f.known.clone());
    let streamed = StreamingAnswer::new(answer.body, masker);
    response
        .extensions_mut()
        .insert(StreamedBody::new(streamed));
    let done = Done {
        response,
        decision: "proxied",
        note: "streamed",
        settles: status.is_success(),
    };
    Ok((peer, done))
}

/// A streamed answer read whole (bounded by [`ANSWER_LIMIT`]).
async fn read_whole(mut answer: BotStream) -> Result<BotAnswer, BotError> {
    use futures::StreamExt;
    let mut body = bytes::BytesMut::new();
    while let Some(piece) = answer.body.next().await {
        let piece = piece?;
        if body.len() + piece.len() > ANSWER_LIMIT {
            return Err(BotError::TooLarge {
                peer: String::new(),
            });
        }
        body.extend_from_slice(&piece);
    }
    Ok(BotAnswer {
        status: answer.status,
        headers: answer.headers,
        body: body.freeze(),
    })
}

fn bot_request(f: &Forward<'_>) -> BotRequest {
    let mut headers = f.req.headers.clone();
    match f.adapter.upstream_authorization() {
        None => {}
        Some(None) => {
            headers.remove(header::AUTHORIZATION);
        }
        Some(Some(value)) => match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(header::AUTHORIZATION, v);
            }
            Err(_) => {
                headers.remove(header::AUTHORIZATION);
            }
        },
    }
    let (body, query) = match &f.resealed {
        Some(sealed) => {
            for (name, value) in &sealed.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    headers.insert(n, v);
                }
            }
            let query = sealed.query.clone().or_else(|| f.req.query.clone());
            (sealed.body.clone(), query)
        }
        None => (f.req.body.clone(), f.req.query.clone()),
    };
    let path_and_query = match query {
        Some(q) => format!("{}?{q}", f.path),
        None => f.path.to_string(),
    };
    BotRequest {
        method: f.req.method.clone(),
        path_and_query,
        headers,
        body,
    }
}

/// The bot's answer as the platform may see it, and a note for the audit line.
fn inspect_answer(
    policies: &PolicySet,
    f: &Forward<'_>,
    answer: BotAnswer,
    found: &mut Vec<Found>,
) -> (Response<Bytes>, &'static str) {
    let (adapter, msg) = (f.adapter, f.msg);
    let BotAnswer {
        status,
        headers,
        body,
    } = answer;
    let withheld = |status: StatusCode| {
        let ack = adapter.ack(msg);
        let mut resp = super::answer::webhook_response(ack);
        *resp.status_mut() = status;
        (resp, "answer_withheld")
    };
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if encoded {
        return withheld(status);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Ok(mut payload) = adapter.open_answer(content_type, &body) else {
        return withheld(status);
    };
    let mut scan = egress::scan_answer(policies, &mut payload, adapter.opaque_keys(), found);
    if scan == AnswerScan::Clean && restore_answer(&mut payload, adapter, f.known.as_deref()) {
        scan = AnswerScan::Masked;
    } else if scan == AnswerScan::Masked {
        restore_answer(&mut payload, adapter, f.known.as_deref());
    }
    let body = match scan {
        AnswerScan::Withheld => return withheld(status),
        AnswerScan::Clean => body,
        AnswerScan::Masked => match adapter.seal_answer(&payload, SystemTime::now()) {
            Some(sealed) => sealed,
            None => return withheld(status),
        },
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    (resp, "")
}

/// Restores the request's tokens in every text of an answer (after egress
/// DLP); whether anything changed.
fn restore_answer(
    payload: &mut Payload,
    adapter: &dyn PlatformAdapter,
    known: Option<&Known>,
) -> bool {
    let Some(known) = known else {
        return false;
    };
    let mut changed = false;
    let _ = payload.texts_mut(adapter.opaque_keys(), &mut |text: &mut String| {
        let restored = known.restore(text);
        if restored != *text {
            *text = restored;
            changed = true;
        }
    });
    changed
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{json_request, policies, JsonAdapter, ScriptedBot, CARD, DLP};
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn bot() -> HttpUpstream {
        HttpUpstream::new("bot", vec!["127.0.0.1:9".into()], Duration::from_secs(1))
    }

    async fn send(client: &ScriptedBot) -> (Result<(String, Done), Stop>, Vec<Found>) {
        let p = policies(&[("dlp.yaml", DLP)]);
        let req = json_request(&json!({"message": {"text": "hi"}}));
        let msg = PlatformMessage::default();
        let adapter = JsonAdapter { reseal: true };
        let f = Forward {
            path: "/hooks/x",
            req: &req,
            resealed: None,
            adapter: &adapter,
            msg: &msg,
            known: None,
        };
        let mut found = Vec::new();
        let out = forward(client, &bot(), &p, f, &mut found).await;
        (out, found)
    }

    #[tokio::test]
    async fn the_bots_answer_is_masked_before_the_platform_sees_it() {
        let client = ScriptedBot::answering(
            200,
            json!({"method": "sendMessage", "text": format!("card {CARD}")}),
        );
        let (out, found) = send(&client).await;
        let (peer, done) = out.unwrap();
        assert_eq!(peer, "127.0.0.1:9");
        let body = String::from_utf8(done.response.body().to_vec()).unwrap();
        assert!(!body.contains(CARD) && body.contains("1111"), "{body}");
        assert!(done.settles);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].direction, "egress");
    }

    #[tokio::test]
    async fn a_blocked_answer_is_withheld() {
        let client = ScriptedBot::answering(200, json!({"text": "TOPSECRET"}));
        let (out, _) = send(&client).await;
        let (_, done) = out.unwrap();
        assert_eq!(done.response.body().as_ref(), b"ack");
        assert_eq!(done.note, "answer_withheld");
    }

    #[tokio::test]
    async fn only_a_2xx_from_the_bot_settles_the_message() {
        let client = ScriptedBot::answering(500, json!({"error": "down"}));
        let (out, _) = send(&client).await;
        let (_, done) = out.unwrap();
        assert_eq!(done.response.status(), 500);
        assert!(!done.settles);
        let unreachable = ScriptedBot {
            answer: None,
            received: Default::default(),
        };
        let (out, _) = send(&unreachable).await;
        match out {
            Err(stop @ Stop::Unavailable { .. }) => assert!(!stop.settles()),
            other => panic!("expected unavailable, got {:?}", other.map(|(p, _)| p)),
        }
    }
}
