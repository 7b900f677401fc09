//! OpenClaw's gateway protocol (version 4), as far as DLP needs it: where
//! the user's text and the assistant's text travel, and the state that
//! masking a streamed answer needs.
//!
//! Frames are `req` (client → gateway: `{"type":"req","id","method","params"}`),
//! `res` (the answer to one `req`) and `event` (gateway → client). The
//! user's text is `params.message` of the message methods
//! ([`MESSAGE_METHODS`]). The assistant's text arrives three ways per turn:
//! - `chat` events: state `delta` with the increment in `deltaText` and the
//!   text so far in `message.content[].text` (a delta with `replace: true`
//!   starts over), then `final` with the whole text in `message`;
//! - `agent` events of stream `assistant`: `data.delta` and `data.text`;
//! - the `agent` lifecycle `end` event's `data.terminalReply.text`.
//!
//! A value can be split across increments (`138` + `0013` + `8000`), so each
//! run's `chat` and `agent` texts go through a [`StreamMasker`]: a frame
//! shows only what no later increment can change, as its increment, and the
//! text shown so far as its accumulated field. The rest is held until the
//! next frame of the run or its end (`chat` `final`). `terminalReply.text`
//! and the messages of a `chat.history` answer are whole texts, masked
//! whole.
//!
//! Everything else passes untouched: the `connect.challenge`, the `connect`
//! request (its device signature covers `auth`, `role`, `scopes` and the
//! client's ids; nothing in it is read) and `hello-ok` (its device token is
//! a credential, never scanned or logged).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::policy::dlp::{Direction, Emitted, Finding, StreamMasker};
use crate::policy::findings::Found;
use crate::policy::findings::{for_each_string, mask_text, WITHHELD_REPLY};
use crate::policy::PolicySet;

/// The `req` methods whose `params.message` is text for the assistant or a
/// session's transcript (OpenClaw 2026.9.6's schemas: `chat.inject` writes
/// into a transcript the model reads later): each such frame is a message.
pub const MESSAGE_METHODS: &[&str] =
    &["chat.send", "chat.inject", "agent", "send", "sessions.send"];

/// Runs whose streamed answers one connection tracks at once; the oldest is
/// forgotten first (its next frame starts a new stream).
const MAX_STREAMS: usize = 32;
/// `chat.history` requests awaiting their answer, per connection.
const MAX_PENDING: usize = 64;
/// Longest run id kept as a key.
const MAX_RUN_ID: usize = 256;
/// Longest streamed answer, in bytes; past it the rest is withheld.
const MAX_STREAM_TEXT: usize = 1 << 20;

/// One connection's OpenClaw state.
#[derive(Default)]
pub struct State {
    streams: HashMap<StreamKey, Stream>,
    order: VecDeque<StreamKey>,
    history: VecDeque<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StreamKey {
    agent: bool,
    run: String,
}

/// The user's text in a client frame: `params.message` of a message
/// method's `req`, or nothing.
pub fn user_text<'v>(frame: &'v mut Value, state: &mut State) -> Vec<&'v mut Value> {
    if frame.get("type").and_then(Value::as_str) != Some("req") {
        return Vec::new();
    }
    let method = frame.get("method").and_then(Value::as_str).unwrap_or("");
    if method == "chat.history" {
        if let Some(id) = frame.get("id").and_then(Value::as_str) {
            state.await_history(id);
        }
        return Vec::new();
    }
    if !MESSAGE_METHODS.contains(&method) {
        return Vec::new();
    }
    frame.pointer_mut("/params/message").into_iter().collect()
}

/// Masks the assistant's text in an upstream frame, in place; whether
/// anything changed.
pub fn assistant_text(
    frame: &mut Value,
    state: &mut State,
    policies: &Arc<PolicySet>,
    found: &mut Vec<Found>,
) -> bool {
    match frame.get("type").and_then(Value::as_str) {
        Some("event") => {}
        Some("res") => return history_answer(frame, state, policies, found),
        _ => return false,
    }
    let event = frame.get("event").and_then(Value::as_str).unwrap_or("");
    let agent = match event {
        "chat" => false,
        "agent" => true,
        _ => return false,
    };
    let Some(payload) = frame.get_mut("payload") else {
        return false;
    };
    if agent {
        agent_event(payload, state, policies, found)
    } else {
        chat_event(payload, state, policies, found)
    }
}

/// A `chat` event: `deltaText` and `message` of a run.
fn chat_event(
    p: &mut Value,
    state: &mut State,
    policies: &Arc<PolicySet>,
    found: &mut Vec<Found>,
) -> bool {
    let accumulated = message_text(p.get("message"));
    let delta = p
        .get("deltaText")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let run = run_id(p);
    match (p.get("state").and_then(Value::as_str), run) {
        (Some(phase @ ("delta" | "final")), Some(run)) => {
            let key = StreamKey { agent: false, run };
            let stream = state.stream(key.clone(), policies);
            let (mut out, mut shown) =
                stream.advance(accumulated.as_deref(), delta.as_deref(), policies, found);
            if phase == "final" {
                if let Some(stream) = state.forget(&key) {
                    let rest = stream.finish(found);
                    out.push_str(&rest);
                    shown.push_str(&rest);
                }
            }
            let mut changed = set_str(p, "deltaText", &out);
            if let Some(message) = p.get_mut("message") {
                changed |= set_message_text(message, &shown);
            }
            changed
        }
        (_, run) => {
            // A run's end without text (error, aborted), or a frame outside
            // any run: whatever text it holds is masked whole.
            if let Some(run) = run.filter(|_| accumulated.is_none() && delta.is_none()) {
                state.forget(&StreamKey { agent: false, run });
            }
            scan_whole(
                p,
                &["/deltaText", "/message/content", "/errorMessage"],
                policies,
                found,
            )
        }
    }
}

/// An `agent` event: stream `assistant` (`data.delta`, `data.text`), and the
/// lifecycle `end` with `data.terminalReply.text`.
fn agent_event(
    p: &mut Value,
    state: &mut State,
    policies: &Arc<PolicySet>,
    found: &mut Vec<Found>,
) -> bool {
    let stream = p.get("stream").and_then(Value::as_str).unwrap_or("");
    let run = run_id(p);
    match (stream, run) {
        ("assistant", Some(run)) => {
            let accumulated = p
                .pointer("/data/text")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let delta = p
                .pointer("/data/delta")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let key = StreamKey { agent: true, run };
            let s = state.stream(key, policies);
            let (out, shown) = s.advance(accumulated.as_deref(), delta.as_deref(), policies, found);
            let Some(data) = p.get_mut("data") else {
                return false;
            };
            set_str(data, "delta", &out) | set_str(data, "text", &shown)
        }
        ("lifecycle", run) => {
            let phase = p.pointer("/data/phase").and_then(Value::as_str);
            if let (Some("end" | "error"), Some(run)) = (phase, run) {
                state.forget(&StreamKey { agent: true, run });
            }
            scan_whole(
                p,
                &["/data/terminalReply/text", "/data/error"],
                policies,
                found,
            )
        }
        ("assistant", None) => scan_whole(p, &["/data/text", "/data/delta"], policies, found),
        _ => false,
    }
}

/// The answer to a `chat.history` request: every message's text, whole.
fn history_answer(
    frame: &mut Value,
    state: &mut State,
    policies: &Arc<PolicySet>,
    found: &mut Vec<Found>,
) -> bool {
    let id = frame.get("id").and_then(Value::as_str).unwrap_or("");
    let Some(at) = state.history.iter().position(|h| h == id) else {
        return false;
    };
    state.history.remove(at);
    let Some(messages) = frame
        .pointer_mut("/payload/messages")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let mut changed = false;
    for message in messages {
        changed |= scan_whole(message, &["/content", "/text"], policies, found);
    }
    changed
}

/// Masks every string under `pointers` of `value` as a whole text.
fn scan_whole(
    value: &mut Value,
    pointers: &[&str],
    policies: &PolicySet,
    found: &mut Vec<Found>,
) -> bool {
    let mut changed = false;
    for pointer in pointers {
        if let Some(field) = value.pointer_mut(pointer) {
            for_each_string(field, &mut |s| {
                if let Some(masked) = mask_text(policies, s, Direction::Egress, found) {
                    *s = masked;
                    changed = true;
                }
            });
        }
    }
    changed
}

fn run_id(p: &Value) -> Option<String> {
    p.get("runId")
        .and_then(Value::as_str)
        .filter(|r| r.len() <= MAX_RUN_ID)
        .map(str::to_owned)
}

/// The text of an OpenClaw message: its `content` string, or its text parts joined.
fn message_text(message: Option<&Value>) -> Option<String> {
    match message?.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str));
            Some(texts.collect())
        }
        _ => None,
    }
}

/// Puts `shown` in the message's text: the first text part holds it, the
/// others are emptied (their text is in it).
fn set_message_text(message: &mut Value, shown: &str) -> bool {
    let Some(content) = message.get_mut("content") else {
        return false;
    };
    if let Value::String(s) = content {
        return replace(s, shown);
    }
    let Value::Array(parts) = content else {
        return false;
    };
    let mut first = true;
    let mut changed = false;
    for part in parts {
        if part.get("type").and_then(Value::as_str) != Some("text") {
            continue;
        }
        let want = if first { shown } else { "" };
        first = false;
        changed |= set_str(part, "text", want);
    }
    changed
}

/// Sets `obj[key]` to `want` if it is a string; whether it changed.
fn set_str(obj: &mut Value, key: &str, want: &str) -> bool {
    match obj.get_mut(key) {
        Some(Value::String(s)) => replace(s, want),
        _ => false,
    }
}

fn replace(s: &mut String, want: &str) -> bool {
    if s == want {
        return false;
    }
    want.clone_into(s);
    true
}

impl State {
    fn await_history(&mut self, id: &str) {
        if id.len() > MAX_RUN_ID {
            return;
        }
        if self.history.len() >= MAX_PENDING {
            self.history.pop_front();
        }
        self.history.push_back(id.to_owned());
    }

    /// The run's stream, new if it has none.
    fn stream(&mut self, key: StreamKey, policies: &Arc<PolicySet>) -> &mut Stream {
        if !self.streams.contains_key(&key) {
            if self.streams.len() >= MAX_STREAMS {
                if let Some(oldest) = self.order.pop_front() {
                    self.streams.remove(&oldest);
                }
            }
            self.order.push_back(key.clone());
        }
        self.streams
            .entry(key)
            .or_insert_with(|| Stream::new(policies))
    }

    fn forget(&mut self, key: &StreamKey) -> Option<Stream> {
        self.order.retain(|k| k != key);
        self.streams.remove(key)
    }
}

/// One run's streamed text: what arrived (`raw`), what was shown, and the
/// masker holding back what may still change.
struct Stream {
    raw: String,
    shown: String,
    masker: StreamMasker<Arc<PolicySet>>,
    withheld: bool,
}

impl Stream {
    fn new(policies: &Arc<PolicySet>) -> Self {
        Self {
            raw: String::new(),
            shown: String::new(),
            masker: StreamMasker::with_snapshot(policies.clone(), |s| &s.dlp, Direction::Egress),
            withheld: false,
        }
    }

    /// Takes a frame's text so far (`accumulated`, preferred) or its
    /// increment; returns the frame's increment and text so far as they
    /// may be shown. Text so far that does not extend what came before
    /// (`replace`) starts the stream over; the frame then shows all of it.
    fn advance(
        &mut self,
        accumulated: Option<&str>,
        delta: Option<&str>,
        policies: &Arc<PolicySet>,
        found: &mut Vec<Found>,
    ) -> (String, String) {
        let (increment, restart) = match accumulated {
            Some(a) => match a.strip_prefix(self.raw.as_str()) {
                Some(rest) => (rest.to_owned(), false),
                None => (a.to_owned(), true),
            },
            None => (delta.unwrap_or("").to_owned(), false),
        };
        if restart {
            *self = Stream::new(policies);
        }
        if self.withheld {
            return (String::new(), self.shown.clone());
        }
        if self.raw.len() + increment.len() > MAX_STREAM_TEXT {
            let notice = self.withhold();
            return (notice, self.shown.clone());
        }
        self.raw.push_str(&increment);
        let emitted = self.masker.push(&increment);
        let out = self.take(emitted, found);
        if restart {
            return (self.shown.clone(), self.shown.clone());
        }
        (out, self.shown.clone())
    }

    /// Flushes what was held at the run's end.
    fn finish(self, found: &mut Vec<Found>) -> String {
        if self.withheld {
            return String::new();
        }
        let Stream { masker, .. } = self;
        let emitted = masker.finish();
        note(&emitted.findings, found);
        match emitted.blocked_by {
            Some(_) => WITHHELD_REPLY.to_string(),
            None => emitted.text,
        }
    }

    /// Records what the masker emitted; withholds the rest on a `block`.
    fn take(&mut self, emitted: Emitted, found: &mut Vec<Found>) -> String {
        note(&emitted.findings, found);
        let mut out = emitted.text;
        self.shown.push_str(&out);
        if emitted.blocked_by.is_some() {
            out.push_str(&self.withhold());
        }
        out
    }

    fn withhold(&mut self) -> String {
        self.withheld = true;
        self.shown.push_str(WITHHELD_REPLY);
        WITHHELD_REPLY.to_string()
    }
}

/// Records findings for the audit line and metrics (rules, not values).
fn note(findings: &[Finding], found: &mut Vec<Found>) {
    found.extend(findings.iter().map(|f| Found {
        rule: f.rule.clone(),
        action: f.action.as_str(),
        direction: "egress",
    }));
}
