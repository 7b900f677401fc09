//! Stage: DLP on the way out. Every reply, from the AI cluster or from a
//! bot, is scanned before it reaches the user; a `block` finding withholds
//! the reply, `mask` findings are masked.

use super::exchange::Found;
use crate::observe::Metrics;
use crate::platform::Payload;
use crate::policy::dlp::{Direction, DlpOutcome};
use crate::policy::PolicySet;

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
