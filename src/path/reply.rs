//! Stage: the AI cluster's replies back to the user, through egress DLP,
//! recorded in the conversation's context. A JSON API waits for every
//! reply; a platform webhook is answered inline when the whole reply came
//! within the platform's deadline, else acknowledged now, with the reply
//! following through the platform's API.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use http::StatusCode;

use super::answer::{self, Done};
use super::context::Conversations;
use super::egress;
use super::exchange::Found;
use crate::observe::Metrics;
use crate::platform::{Channel, PlatformAdapter, PlatformMessage};
use crate::policy::PolicySet;
use crate::proto::v1::{reply, Envelope};
use crate::upstream::{Accepted, Collected};
use crate::writeback::Writeback;

/// Everything answering needs, borrowed from the gateway and the request.
pub struct Replier<'a> {
    /// The request's policy snapshot (egress DLP of deferred replies too).
    pub policies: &'a Arc<PolicySet>,
    /// The route's adapter.
    pub adapter: &'a Arc<dyn PlatformAdapter>,
    /// Where exchanges are recorded.
    pub context: &'a Conversations,
    /// Sends replies through platform APIs.
    pub writeback: &'a Writeback,
    /// For findings of deferred replies.
    pub metrics: &'a Metrics,
    /// When the platform gives up on the webhook (80 % of its deadline).
    pub inline_by: Instant,
}

impl Replier<'_> {
    /// Answers `msg` with what the cluster sends for `env`. Returns the
    /// answer and the cluster's final gRPC code (-1 if still running).
    pub async fn answer(
        &self,
        msg: PlatformMessage,
        env: Envelope,
        accepted: Accepted,
        found: &mut Vec<Found>,
    ) -> (Done, i32) {
        match self.adapter.channel() {
            Channel::Api => self.collect_all(msg, env, accepted, found).await,
            Channel::Webhook => self.within_deadline(msg, env, accepted, found).await,
        }
    }

    async fn collect_all(
        &self,
        msg: PlatformMessage,
        env: Envelope,
        accepted: Accepted,
        found: &mut Vec<Found>,
    ) -> (Done, i32) {
        let collected = accepted.collect().await;
        let replies: Vec<String> = collected
            .texts
            .iter()
            .map(|t| egress::scan_reply(self.policies, t, found))
            .collect();
        self.context
            .record(&env, &msg.text, &replies, &collected.state)
            .await;
        let body = serde_json::json!({
            "envelope_id": env.id,
            "replies": replies.iter().map(|t| serde_json::json!({"text": t})).collect::<Vec<_>>(),
            "complete": collected.code == 0,
        });
        let done = Done {
            response: answer::json_response(StatusCode::OK, &body),
            decision: "answered",
            note: "",
            settles: true,
        };
        (done, collected.code)
    }

    async fn within_deadline(
        &self,
        msg: PlatformMessage,
        env: Envelope,
        mut accepted: Accepted,
        found: &mut Vec<Found>,
    ) -> (Done, i32) {
        let inline_by = self.inline_by.min(accepted.deadline);
        let Some(early) = read_until(&mut accepted, inline_by).await else {
            return (self.defer(msg, env, accepted), -1);
        };
        let text = egress::scan_reply(self.policies, &early.texts.join("\n"), found);
        self.context
            .record(&env, &msg.text, std::slice::from_ref(&text), &early.state)
            .await;
        let adapter = self.adapter.as_ref();
        if !text.is_empty() {
            if let Some(resp) = adapter.inline_reply(&msg, &text, SystemTime::now()) {
                return (
                    answered(answer::webhook_response(resp), "inline_reply"),
                    early.code,
                );
            }
            answer::send_reply(adapter, &msg, &text, self.writeback);
        }
        let ack = answer::webhook_response(adapter.ack(&msg));
        (answered(ack, "api_reply"), early.code)
    }

    /// Past the deadline: acknowledge now, reply when the assistant is done.
    fn defer(&self, msg: PlatformMessage, env: Envelope, accepted: Accepted) -> Done {
        let ack = answer::webhook_response(self.adapter.ack(&msg));
        let policies = self.policies.clone();
        let adapter = self.adapter.clone();
        let context = self.context.clone();
        let writeback = self.writeback.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let rest = accepted.collect().await;
            let mut found = Vec::new();
            let text = egress::scan_reply(&policies, &rest.texts.join("\n"), &mut found);
            egress::count(&metrics, &found);
            context
                .record(&env, &msg.text, std::slice::from_ref(&text), &rest.state)
                .await;
            if !text.is_empty() {
                answer::send_reply(adapter.as_ref(), &msg, &text, &writeback);
            }
        });
        answered(ack, "deferred_reply")
    }
}

fn answered(response: http::Response<bytes::Bytes>, note: &'static str) -> Done {
    Done {
        response,
        decision: "answered",
        note,
        settles: true,
    }
}

/// Reads replies until the stream completes (`Some`) or `by` passes
/// (`None`, with what was read put back at the front of the stream).
async fn read_until(accepted: &mut Accepted, by: Instant) -> Option<Collected> {
    let mut early = Collected::default();
    loop {
        // Replies that are already waiting must not sneak in after the deadline.
        if Instant::now() >= by {
            break;
        }
        match tokio::time::timeout_at(by.into(), accepted.replies.next()).await {
            Err(_) => break,
            Ok(None) => return Some(early),
            Ok(Some(Err(status))) => {
                early.code = status.code() as i32;
                return Some(early);
            }
            Ok(Some(Ok(r))) => match r.kind {
                Some(reply::Kind::Text(t)) => early.texts.push(t.text),
                Some(reply::Kind::Final(f)) => {
                    early.state = f.state;
                    return Some(early);
                }
                _ => {}
            },
        }
    }
    accepted.unread(early);
    None
}
