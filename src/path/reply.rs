//! Stage: the AI cluster's replies back to the user, through egress DLP,
//! recorded in the conversation's context. A JSON API waits for every
//! reply; a platform webhook is answered inline when the whole reply came
//! within the platform's deadline, else acknowledged now, with the reply
//! following through the platform's API. A caller that streams (the
//! WebSocket API) also gets each part as it arrives, already through
//! egress DLP, over the request's bounded `reply_parts` channel.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::StatusCode;
use tokio::sync::mpsc;

use super::answer::{self, Done};
use super::context::Conversations;
use super::egress;
use super::exchange::Found;
use crate::observe::Metrics;
use crate::platform::{Channel, PlatformAdapter, PlatformMessage};
use crate::policy::PolicySet;
use crate::proto::v1::Envelope;
use crate::upstream::{Accepted, Collected, Part};
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
    /// Where a streaming caller takes each reply part as it arrives (the
    /// request's [`super::Exchange::reply_parts`]).
    pub parts: Option<&'a mpsc::Sender<String>>,
    /// Restores the conversation's tokens in what the user gets.
    pub restore: Option<&'a super::tokens::Restore>,
    /// The cluster's reply parts are pieces of one text (an OpenAI
    /// completion's deltas), masked and restored as one stream
    /// ([`egress::DeltaEgress`]); otherwise each part is a reply of its own,
    /// masked whole.
    pub deltas: bool,
}

impl Replier<'_> {
    /// `text` with the conversation's tokens restored, if tokenising.
    async fn restored(&self, text: &str) -> String {
        match self.restore {
            Some(r) => r.text(text).await,
            None => text.to_string(),
        }
    }

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

    /// Every reply in one JSON body. Each part is scanned as it arrives and,
    /// for a streaming caller, handed on before the next one is read: the
    /// channel is bounded, so a slow reader slows reading the cluster's
    /// stream instead of filling a buffer. A caller that went away (its
    /// receiver dropped) stops getting parts; the message is still
    /// answered, recorded and audited as a whole.
    async fn collect_all(
        &self,
        msg: PlatformMessage,
        env: Envelope,
        mut accepted: Accepted,
        found: &mut Vec<Found>,
    ) -> (Done, i32) {
        let mut replies = Vec::new();
        let mut deltas = self
            .deltas
            .then(|| egress::DeltaEgress::new(self.policies, self.restore));
        let (state, code) = loop {
            match (accepted.next_part().await, deltas.as_mut()) {
                (Part::Text(text), None) => {
                    let text = egress::scan_reply(self.policies, &text, found);
                    let shown = self.restored(&text).await;
                    self.hand_on(&mut replies, text, shown).await;
                }
                (Part::Text(text), Some(d)) => {
                    let piece = d.push(&text, found).await;
                    if !piece.shown.is_empty() {
                        self.hand_on(&mut replies, piece.recorded, piece.shown)
                            .await;
                    }
                }
                (Part::End { state, code }, _) => break (state, code),
            }
        };
        if let Some(d) = deltas {
            let piece = d.finish(found).await;
            if !piece.shown.is_empty() {
                self.hand_on(&mut replies, piece.recorded, piece.shown)
                    .await;
            }
        }
        // Context keeps what the AI saw (tokens); the user gets values.
        let recorded: Vec<String> = replies.iter().map(|(t, _)| t.clone()).collect();
        self.context
            .record(&env, &msg.text, &recorded, &state)
            .await;
        let body = serde_json::json!({
            "envelope_id": env.id,
            "replies": replies.iter().map(|(_, t)| serde_json::json!({"text": t})).collect::<Vec<_>>(),
            "complete": code == 0,
        });
        let done = Done {
            response: answer::json_response(StatusCode::OK, &body),
            decision: "answered",
            note: "",
            settles: true,
        };
        (done, code)
    }

    /// Keeps a reply part (recorded, shown) and hands it to a streaming caller.
    async fn hand_on(&self, replies: &mut Vec<(String, String)>, recorded: String, shown: String) {
        if let Some(parts) = self.parts {
            let _ = parts.send(shown.clone()).await;
        }
        replies.push((recorded, shown));
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
        let text = self.restored(&text).await;
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
        let restore = self.restore.cloned();
        tokio::spawn(async move {
            let rest = accepted.collect().await;
            let mut found = Vec::new();
            let text = egress::scan_reply(&policies, &rest.texts.join("\n"), &mut found);
            egress::count(&metrics, &found);
            context
                .record(&env, &msg.text, std::slice::from_ref(&text), &rest.state)
                .await;
            let text = match &restore {
                Some(r) => r.text(&text).await,
                None => text,
            };
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
        // `next_part` is cancel safe: a part is never lost to the timeout.
        match tokio::time::timeout_at(by.into(), accepted.next_part()).await {
            Err(_) => break,
            Ok(Part::Text(text)) => early.texts.push(text),
            Ok(Part::End { state, code }) => {
                early.state = state;
                early.code = code;
                return Some(early);
            }
        }
    }
    accepted.unread(early);
    None
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;
    use crate::assistant::ReplyStream;
    use crate::context::ContextStore;
    use crate::path::testkit::{self, JsonAdapter, CARD};
    use crate::proto::v1::{reply, Final, Reply, TextPart};

    /// A cluster's stream of `texts` then `final`; `read` counts the replies
    /// taken from it.
    fn replies(texts: &[&str], read: Arc<AtomicUsize>) -> ReplyStream {
        let mut kinds: Vec<reply::Kind> = texts
            .iter()
            .map(|t| {
                reply::Kind::Text(TextPart {
                    text: t.to_string(),
                })
            })
            .collect();
        kinds.push(reply::Kind::Final(Final::default()));
        Box::pin(futures::stream::iter(kinds).map(move |kind| {
            read.fetch_add(1, Ordering::SeqCst);
            Ok(Reply {
                envelope_id: "e".into(),
                kind: Some(kind),
            })
        }))
    }

    #[tokio::test]
    async fn parts_stream_scanned_with_back_pressure_and_the_body_has_them_all() {
        let policies = testkit::policies(&[("dlp.yaml", testkit::DLP)]);
        let adapter: Arc<dyn PlatformAdapter> = Arc::new(JsonAdapter { reseal: false });
        let metrics = Metrics::new();
        let context = Conversations {
            local: Arc::new(ContextStore::new(&Default::default(), metrics.clone())),
            shared: None,
        };
        let writeback = Writeback::new(metrics.clone(), Default::default());
        let (tx, mut rx) = mpsc::channel(1);
        let replier = Replier {
            policies: &policies,
            adapter: &adapter,
            context: &context,
            writeback: &writeback,
            metrics: &metrics,
            inline_by: Instant::now(),
            parts: Some(&tx),
            restore: None,
            deltas: false,
        };
        let read = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        let texts = ["one", CARD, "three", "four"];
        let accepted = Accepted::new("n".into(), replies(&texts, read.clone()), deadline);
        let mut found = Vec::new();
        let mut answering = Box::pin(replier.collect_all(
            PlatformMessage::default(),
            Envelope::default(),
            accepted,
            &mut found,
        ));

        // Nobody takes the parts: one waits in the channel, the next in
        // `send`, and the cluster's stream is read no further.
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut answering).await;
        assert!(waited.is_err(), "the answer waits for its reader");
        assert_eq!(read.load(Ordering::SeqCst), 2);

        // Taken one by one, each part comes as it was scanned (the card masked).
        let mut streamed = Vec::new();
        let (done, code) = loop {
            tokio::select! {
                done = &mut answering => break done,
                Some(part) = rx.recv() => streamed.push(part),
            }
        };
        drop(answering);
        while let Ok(part) = rx.try_recv() {
            streamed.push(part);
        }
        let masked = format!("************{}", &CARD[12..]);
        assert_eq!(streamed, ["one", masked.as_str(), "three", "four"]);
        assert_eq!(found.len(), 1, "each part is scanned once");
        assert_eq!(code, 0);
        let body: serde_json::Value = serde_json::from_slice(done.response.body()).unwrap();
        let in_body: Vec<&str> = body["replies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["text"].as_str().unwrap())
            .collect();
        assert_eq!(in_body, streamed, "the JSON answer is unchanged");
        assert_eq!(body["complete"], true);
    }

    #[tokio::test]
    async fn a_reader_that_went_away_does_not_stop_the_answer() {
        let policies = testkit::policies(&[]);
        let adapter: Arc<dyn PlatformAdapter> = Arc::new(JsonAdapter { reseal: false });
        let metrics = Metrics::new();
        let context = Conversations {
            local: Arc::new(ContextStore::new(&Default::default(), metrics.clone())),
            shared: None,
        };
        let writeback = Writeback::new(metrics.clone(), Default::default());
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let replier = Replier {
            policies: &policies,
            adapter: &adapter,
            context: &context,
            writeback: &writeback,
            metrics: &metrics,
            inline_by: Instant::now(),
            parts: Some(&tx),
            restore: None,
            deltas: false,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = replies(&["a", "b", "c"], Arc::new(AtomicUsize::new(0)));
        let accepted = Accepted::new("n".into(), stream, deadline);
        let (done, code) = replier
            .collect_all(
                PlatformMessage::default(),
                Envelope::default(),
                accepted,
                &mut Vec::new(),
            )
            .await;
        assert_eq!(code, 0);
        let body: serde_json::Value = serde_json::from_slice(done.response.body()).unwrap();
        assert_eq!(body["replies"].as_array().map(Vec::len), Some(3));
    }
}
