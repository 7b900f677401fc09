//! Which text of a proxied WebSocket connection is people's text, and what
//! DLP makes of it: one [`FrameInspector`] per connection (it keeps the
//! state of the assistant's streamed answers), plain functions over frame
//! text, testable without sockets.
//!
//! The profiles:
//! - `openclaw` knows OpenClaw's gateway protocol ([`super::openclaw`]);
//! - `json` takes JSON pointers from the route: the user's text in client
//!   frames (a frame with any of them is a message), the bot's text in
//!   upstream frames (each field masked whole).
//!
//! A frame nothing changed is forwarded as the bytes that arrived
//! ([`Verdict::Forward`]); only a masked frame is serialised again. A client
//! frame that is not JSON cannot be inspected, so it is refused: it never
//! reaches the upstream.

use std::sync::Arc;

use serde_json::Value;

use super::openclaw;
use crate::config::{WebSocketProfile, WebSocketSettings};
use crate::policy::dlp::Direction;
use crate::policy::findings::Found;
use crate::policy::findings::{for_each_string, scan_noting};
use crate::policy::PolicySet;

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the frame's bytes as they arrived.
    Forward,
    /// Forward this text instead: something in it was masked.
    Rewrite(String),
    /// Do not forward it (client frames only).
    Refuse(Refusal),
}

/// Why a client frame is not forwarded (the message path's refusal kinds).
pub use crate::path::FrameRefusal as Refusal;

/// A client frame, inspected.
#[derive(Debug)]
pub struct Ingress {
    /// Forward, rewrite or refuse.
    pub verdict: Verdict,
    /// The user's text (as masked) when the frame is a message: rate
    /// limits and policy decisions count these frames only.
    pub message: Option<String>,
    /// The frame's own id, for an answer that names it.
    pub id: Option<String>,
    /// DLP findings, to count and audit (never the values).
    pub found: Vec<Found>,
}

/// An upstream frame, inspected. A `block` finding withholds the text (it
/// is replaced by a notice); the frame itself still goes, so the client's
/// protocol state (sequence numbers, run ends) stays whole.
#[derive(Debug)]
pub struct Egress {
    /// Forward or rewrite.
    pub verdict: Verdict,
    /// DLP findings.
    pub found: Vec<Found>,
}

/// Where a route's frames carry text.
#[derive(Debug, Clone)]
enum Profile {
    Openclaw,
    Json {
        ingress: Vec<String>,
        egress: Vec<String>,
    },
}

/// The inspection state of one connection.
pub struct FrameInspector {
    profile: Profile,
    openclaw: openclaw::State,
}

impl FrameInspector {
    /// An inspector for a passthrough route's settings.
    pub fn new(settings: &WebSocketSettings) -> Self {
        let profile = match settings.profile {
            Some(WebSocketProfile::Json) => Profile::Json {
                ingress: settings.ingress_pointers.clone(),
                egress: settings.egress_pointers.clone(),
            },
            _ => Profile::Openclaw,
        };
        Self {
            profile,
            openclaw: openclaw::State::default(),
        }
    }

    /// Inspects a text frame from the client.
    pub fn client_frame(&mut self, policies: &Arc<PolicySet>, text: &str) -> Ingress {
        let mut found = Vec::new();
        let Ok(mut frame) = serde_json::from_str::<Value>(text) else {
            return Ingress {
                verdict: Verdict::Refuse(Refusal::Malformed("a frame is one JSON value")),
                message: None,
                id: None,
                found,
            };
        };
        let id = frame
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| id.len() <= super::frames::MAX_ID_LEN)
            .map(str::to_owned);
        let fields: Vec<&mut Value> = match &self.profile {
            Profile::Openclaw => openclaw::user_text(&mut frame, &mut self.openclaw),
            Profile::Json { ingress, .. } => pointed(&mut frame, ingress),
        };
        if fields.is_empty() {
            let verdict = Verdict::Forward;
            return Ingress {
                verdict,
                message: None,
                id,
                found,
            };
        }
        let scanned = scan_fields(policies, fields, Direction::Ingress, &mut found);
        let verdict = match (&scanned.blocked_by, scanned.masked) {
            (Some(rule), _) => Verdict::Refuse(Refusal::Blocked(rule.clone())),
            (None, true) => Verdict::Rewrite(frame.to_string()),
            (None, false) => Verdict::Forward,
        };
        Ingress {
            verdict,
            message: Some(scanned.text),
            id,
            found,
        }
    }

    /// Inspects a text frame from the upstream.
    pub fn upstream_frame(&mut self, policies: &Arc<PolicySet>, text: &str) -> Egress {
        let mut found = Vec::new();
        // Not JSON: nothing the profile knows is in it (OpenClaw sends only
        // JSON), but it may still be text for a person: scan it whole.
        let Ok(mut frame) = serde_json::from_str::<Value>(text) else {
            let verdict = match crate::policy::findings::mask_text(
                policies,
                text,
                Direction::Egress,
                &mut found,
            ) {
                Some(masked) => Verdict::Rewrite(masked),
                None => Verdict::Forward,
            };
            return Egress { verdict, found };
        };
        let changed = match &self.profile {
            Profile::Openclaw => {
                openclaw::assistant_text(&mut frame, &mut self.openclaw, policies, &mut found)
            }
            Profile::Json { egress, .. } => {
                let fields = pointed(&mut frame, egress);
                let scanned = scan_fields(policies, fields, Direction::Egress, &mut found);
                scanned.masked || scanned.blocked_by.is_some()
            }
        };
        let verdict = if changed {
            Verdict::Rewrite(frame.to_string())
        } else {
            Verdict::Forward
        };
        Egress { verdict, found }
    }
}

/// The values at `pointers` that exist; a value inside another one is
/// taken with it.
fn pointed<'v>(frame: &'v mut Value, pointers: &[String]) -> Vec<&'v mut Value> {
    let mut paths: Vec<&str> = pointers.iter().map(String::as_str).collect();
    paths.sort_unstable();
    paths.dedup();
    let mut out = Vec::new();
    collect_pointed(frame, &paths, "", &mut out);
    out
}

/// Walks `value` (at `here`) collecting the values whose paths are in `paths`.
fn collect_pointed<'v>(
    value: &'v mut Value,
    paths: &[&str],
    here: &str,
    out: &mut Vec<&'v mut Value>,
) {
    if paths.contains(&here) {
        out.push(value);
        return;
    }
    let under = |key: &str| format!("{here}/{}", key.replace('~', "~0").replace('/', "~1"));
    let wanted = |path: &str| {
        paths
            .iter()
            .any(|p| *p == path || p.starts_with(&format!("{path}/")))
    };
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let path = under(key);
                if wanted(&path) {
                    collect_pointed(v, paths, &path, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let path = under(&i.to_string());
                if wanted(&path) {
                    collect_pointed(v, paths, &path, out);
                }
            }
        }
        _ => {}
    }
}

/// What scanning a frame's text fields made of them.
struct Scanned {
    /// The texts, masked, joined by newlines.
    text: String,
    masked: bool,
    blocked_by: Option<Arc<str>>,
}

/// Scans (and masks in place) every string inside `fields`. A `block`
/// finding on the way out replaces the text with the withheld notice.
fn scan_fields(
    policies: &PolicySet,
    fields: Vec<&mut Value>,
    direction: Direction,
    found: &mut Vec<Found>,
) -> Scanned {
    let mut out = Scanned {
        text: String::new(),
        masked: false,
        blocked_by: None,
    };
    for field in fields {
        for_each_string(field, &mut |s| {
            let scan = scan_noting(policies, s, direction, found);
            if out.blocked_by.is_none() {
                out.blocked_by = scan.blocked_by.clone();
            }
            if scan.is_blocked() && direction == Direction::Egress {
                *s = crate::policy::findings::WITHHELD_REPLY.to_string();
            } else if let Some(m) = scan.masked {
                *s = m;
                out.masked = true;
            }
            if !out.text.is_empty() {
                out.text.push('\n');
            }
            out.text.push_str(s);
        });
    }
    out
}

#[cfg(test)]
mod tests;
