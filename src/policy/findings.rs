//! DLP findings as the gateway records them (the rule, its action and the
//! direction; never the value), and DLP over the texts inside a JSON
//! document (a WebSocket frame, an SSE chunk, an answer). Below the message
//! path, so that the channels that parse such documents (`websocket`,
//! `openai`) and the path share one way of scanning them.

use std::sync::Arc;

use serde_json::Value;

use super::dlp::{Direction, DlpOutcome};
use super::PolicySet;

/// What the user is told when a reply is withheld by egress DLP.
pub const WITHHELD_REPLY: &str =
    "[reply withheld: it contained data the policy does not allow to leave]";

/// A DLP finding to count (rule and action are policy names, never values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The DLP rule.
    pub rule: Arc<str>,
    /// `block`, `mask` or `alert`.
    pub action: &'static str,
    /// `ingress` or `egress`.
    pub direction: &'static str,
}

/// The `direction` label of a finding.
pub fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// Scans `text` in `direction`, noting each finding in `found`.
pub fn scan_noting(
    policies: &PolicySet,
    text: &str,
    direction: Direction,
    found: &mut Vec<Found>,
) -> DlpOutcome {
    let scan = policies.dlp.scan(text, direction);
    let label = direction_label(direction);
    found.extend(scan.findings.iter().map(|f| Found {
        rule: f.rule.clone(),
        action: f.action.as_str(),
        direction: label,
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

/// Calls `f` on every string inside a JSON value.
pub fn for_each_string(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_string(v, f)),
        Value::Object(map) => map.values_mut().for_each(|v| for_each_string(v, f)),
        _ => {}
    }
}
