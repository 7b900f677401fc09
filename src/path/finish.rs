//! The one place a request ends: its answer is rendered, its dedupe claim
//! committed (settled) or released (the sender retries), and exactly one
//! audit line and one set of metrics are written, whichever stage ended it.

use bytes::Bytes;
use http::Response;

use super::answer::{self, Done};
use super::exchange::Exchange;
use super::stop::{Stop, StopKind};
use super::Gateway;
use crate::observe::Audit;

/// How a request ended, as the audit line and metrics see it.
struct Ending {
    decision: &'static str,
    outcome: &'static str,
    reason: String,
    settles: bool,
}

/// How a message ended, for a channel that acts on it instead of sending
/// the response on (MQTT acknowledges a message, or has it redelivered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The message reached its upstream, which answered (settled or not).
    Delivered {
        /// Whether the upstream's answer settles it (a bot's 2xx).
        settles: bool,
    },
    /// A stage stopped it.
    Stopped(StopKind),
}

impl Gateway {
    /// Renders, settles, audits and counts the end of `ex`.
    pub async fn finish(&self, ex: Exchange, end: Result<Done, Stop>) -> Response<Bytes> {
        self.finish_ended(ex, end).await.0
    }

    /// [`Self::finish`], also saying how the message ended.
    pub async fn finish_ended(
        &self,
        mut ex: Exchange,
        end: Result<Done, Stop>,
    ) -> (Response<Bytes>, Ended) {
        let ended = match &end {
            Ok(done) => Ended::Delivered {
                settles: done.settles,
            },
            Err(stop) => Ended::Stopped(stop.kind()),
        };
        let ending = match &end {
            Ok(done) => ending_of_done(&ex, done),
            Err(stop) => ending_of_stop(stop),
        };
        let response = match end {
            Ok(done) => done.response,
            Err(stop) => {
                let adapter = ex.route.as_ref().map(|r| r.adapter.as_ref());
                answer::render(&stop, adapter, ex.msg(), &self.writeback)
            }
        };
        if let Some(claim) = ex.claim.take() {
            claim.settle(ending.settles).await;
        }
        self.count(&ex, &ending);
        audit(ex, ending, response.status().as_u16());
        (response, ended)
    }

    fn count(&self, ex: &Exchange, ending: &Ending) {
        let m = &self.metrics;
        let route = ex.route_label();
        let platform = ex.platform();
        m.requests
            .with_label_values(&[route, platform, ending.outcome])
            .inc();
        match ending.outcome {
            "rejected" => m
                .rejections
                .with_label_values(&[route, &ending.reason])
                .inc(),
            "duplicate" => m.duplicates.with_label_values(&[platform]).inc(),
            "ignored" => m
                .ignored_events
                .with_label_values(&[platform, &ending.reason])
                .inc(),
            "answered" | "proxied" => m
                .message_latency
                .with_label_values(&[platform])
                .observe(ex.started().elapsed().as_secs_f64()),
            _ => {}
        }
        for d in &ex.decided {
            let decision = if d.allowed { "allow" } else { "deny" };
            m.policy_decisions
                .with_label_values(&[d.stage, decision, &d.label])
                .inc();
        }
        super::egress::count(m, &ex.found);
    }
}

/// Writes the request's one audit line; the record is spent, so its ids and
/// rules move into the line instead of being copied.
fn audit(ex: Exchange, ending: Ending, status: u16) {
    let mut audit = Audit::at(ex.route_label(), ex.platform(), ex.started());
    audit.envelope_id = ex.envelope_id;
    audit.thread_id = ex.thread_id;
    audit.sender_id = ex.sender_id;
    audit.decision = ending.decision;
    audit.reason = ending.reason;
    audit.rules = ex.rules;
    audit.node = ex.node;
    audit.ai_response_code = ex.ai_response_code;
    audit.status = status;
    audit.client_ip = ex.client_ip;
    audit.emit();
}

fn ending_of_done(ex: &Exchange, done: &Done) -> Ending {
    let note = if done.note.is_empty() {
        ex.note
    } else {
        done.note
    };
    Ending {
        decision: done.decision,
        outcome: done.decision,
        reason: note.to_string(),
        settles: done.settles,
    }
}

fn ending_of_stop(stop: &Stop) -> Ending {
    Ending {
        decision: stop.decision(),
        outcome: stop.outcome(),
        reason: stop.reason(),
        settles: stop.settles(),
    }
}
