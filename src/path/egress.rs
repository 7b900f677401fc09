//! Stage: DLP on the way out. Every reply, from the AI cluster or from a
//! bot, is scanned before it reaches the user; a `block` finding withholds
//! the reply, `mask` findings are masked.

use std::sync::Arc;

use super::exchange::Found;
use super::tokens::Restore;
use crate::observe::Metrics;
use crate::platform::Payload;
use crate::policy::dlp::stream::{Emitted, StreamMasker};
use crate::policy::dlp::{Direction, DlpOutcome};
use crate::policy::findings::direction_label;
use crate::policy::PolicySet;
use crate::tokenize::{Restorer, Tokenizer};

/// The text the user may see: masked, or the withheld notice.
pub fn scan_reply(policies: &PolicySet, text: &str, found: &mut Vec<Found>) -> String {
    let scan = scan(policies, text, found);
    if scan.is_blocked() {
        return WITHHELD_REPLY.to_string();
    }
    scan.masked.unwrap_or_else(|| text.to_string())
}

/// What egress DLP made of a bot's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerScan {
    /// Nothing to change: forward the answer's bytes as they are.
    Clean,
    /// Something was masked in place: the answer must be re-serialised.
    Masked,
    /// A `block` rule matched, or the answer could not be walked: withhold it.
    Withheld,
}

/// Scans every text of a bot's answer in place.
pub fn scan_answer(
    policies: &PolicySet,
    answer: &mut Payload,
    opaque: &[&str],
    found: &mut Vec<Found>,
) -> AnswerScan {
    let mut blocked = false;
    let mut masked = false;
    let walked = answer.texts_mut(opaque, &mut |text: &mut String| {
        let scan = scan(policies, text, found);
        blocked |= scan.is_blocked();
        if let Some(m) = scan.masked {
            *text = m;
            masked = true;
        }
    });
    if walked.is_err() || blocked {
        AnswerScan::Withheld
    } else if masked {
        AnswerScan::Masked
    } else {
        AnswerScan::Clean
    }
}

/// Scans `text` for egress, noting each finding in `found`.
fn scan(policies: &PolicySet, text: &str, found: &mut Vec<Found>) -> DlpOutcome {
    scan_noting(policies, text, Direction::Egress, found)
}

pub use crate::policy::findings::{for_each_string, mask_text, scan_noting, WITHHELD_REPLY};

/// Counts DLP findings made outside a request's record (deferred replies).
pub fn count(metrics: &Metrics, found: &[Found]) {
    for f in found {
        metrics
            .dlp_findings
            .with_label_values(&[&f.rule, f.action, f.direction])
            .inc();
    }
}

/// Egress for a reply whose parts are pieces of one text (the deltas of an
/// OpenAI completion): a value split across parts is masked as if it had
/// arrived whole, and a token split across them is still restored.
///
/// Each part yields what may be shown now; the concatenation of everything
/// it yields is the whole text's egress outcome. After a `block` finding it
/// yields the withheld notice once, then nothing.
pub struct DeltaEgress {
    masker: Option<StreamMasker<Arc<PolicySet>>>,
    restorer: Option<Restorer<Arc<Tokenizer>>>,
}

/// One step of a [`DeltaEgress`]: what the context records (tokens) and what
/// the user is shown (tokens restored).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeltaPiece {
    /// Masked text, tokens kept.
    pub recorded: String,
    /// Masked text, tokens restored.
    pub shown: String,
}

impl DeltaEgress {
    /// Egress of one reply under the request's policy snapshot.
    pub fn new(policies: &Arc<PolicySet>, restore: Option<&Restore>) -> Self {
        Self {
            masker: Some(StreamMasker::with_snapshot(
                policies.clone(),
                |s| &s.dlp,
                Direction::Egress,
            )),
            restorer: restore.map(Restore::streaming),
        }
    }

    /// Takes the next part.
    pub async fn push(&mut self, part: &str, found: &mut Vec<Found>) -> DeltaPiece {
        let Some(masker) = self.masker.as_mut() else {
            return DeltaPiece::default();
        };
        let emitted = masker.push(part);
        self.piece(emitted, false, found).await
    }

    /// Ends the reply: what was held back, masked and restored.
    pub async fn finish(mut self, found: &mut Vec<Found>) -> DeltaPiece {
        let Some(masker) = self.masker.take() else {
            return DeltaPiece::default();
        };
        let emitted = masker.finish();
        self.piece(emitted, true, found).await
    }

    async fn piece(&mut self, emitted: Emitted, last: bool, found: &mut Vec<Found>) -> DeltaPiece {
        found.extend(emitted.findings.iter().map(|f| Found {
            rule: f.rule.clone(),
            action: f.action.as_str(),
            direction: direction_label(Direction::Egress),
        }));
        let blocked = emitted.blocked_by.is_some();
        let mut recorded = emitted.text;
        if blocked {
            // Nothing of the value was emitted; the rest of the reply is dropped.
            self.masker = None;
            recorded.push_str(WITHHELD_REPLY);
        }
        let shown = match (&mut self.restorer, last || blocked) {
            (None, _) => recorded.clone(),
            (Some(r), false) => r.push(&recorded).await,
            (Some(_), true) => match self.restorer.take() {
                Some(mut r) => {
                    let mut shown = r.push(&recorded).await;
                    shown.push_str(&r.finish().await);
                    shown
                }
                None => recorded.clone(),
            },
        };
        DeltaPiece { recorded, shown }
    }
}
