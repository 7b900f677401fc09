//! Stage: DLP on the way out. Every reply, from the AI cluster or from a
//! bot, is scanned before it reaches the user; a `block` finding withholds
//! the reply, `mask` findings are masked.

use super::exchange::Found;
use crate::observe::Metrics;
use crate::platform::Payload;
use crate::policy::dlp::{Direction, DlpOutcome};
use crate::policy::PolicySet;

/// What the user is told when a reply is withheld by egress DLP.
pub const WITHHELD_REPLY: &str =
    "[reply withheld: it contained data the policy does not allow to leave]";

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

/// Scans `text` in `direction`, noting each finding (rule and action,
/// never the value) in `found`.
pub fn scan_noting(
    policies: &PolicySet,
    text: &str,
    direction: Direction,
    found: &mut Vec<Found>,
) -> DlpOutcome {
    let scan = policies.dlp.scan(text, direction);
    let direction = match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    found.extend(scan.findings.iter().map(|f| Found {
        rule: f.rule.clone(),
        action: f.action.as_str(),
        direction,
    }));
    scan
}

/// Scans one whole text: the text to show instead (masked, or the withheld
/// notice when a `block` rule matched), or `None` when it may pass as it is.
pub fn mask_text(
    policies: &PolicySet,
    text: &str,
    direction: Direction,
    found: &mut Vec<Found>,
) -> Option<String> {
    let scan = scan_noting(policies, text, direction, found);
    if scan.is_blocked() {
        return Some(WITHHELD_REPLY.to_string());
    }
    scan.masked
}

/// Calls `f` on every string inside a JSON value (the texts of a frame or
/// a chunk that DLP reads).
pub fn for_each_string(value: &mut serde_json::Value, f: &mut dyn FnMut(&mut String)) {
    use serde_json::Value;
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_string(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| for_each_string(v, f)),
        _ => {}
    }
}

/// Counts DLP findings made outside a request's record (deferred replies).
pub fn count(metrics: &Metrics, found: &[Found]) {
    for f in found {
        metrics
            .dlp_findings
            .with_label_values(&[&f.rule, f.action, f.direction])
            .inc();
    }
}
