//! Streaming-safe egress DLP for an OpenAI-compatible Server-Sent Events
//! answer (`stream: true`): `data: {chat.completion.chunk}` … `data: [DONE]`.
//!
//! A value can be split across chunks (`"4111 1111"` + `" 1111 1111"`), so a
//! chunk cannot be masked alone. Each text field of each choice (its
//! `delta.content`, `delta.refusal`, and every tool call's
//! `function.arguments`) gets its own [`StreamMasker`]: a chunk carries only
//! what no later chunk can change, the rest is held and flushed at the
//! choice's `finish_reason`, at `[DONE]`, or when the stream ends (then in a
//! chunk of moltgate's, with the stream's `id` and `model`). Only the tail
//! that could still become a match is held, so the first chunk is not
//! delayed until the stream ends.
//!
//! An event nothing changed is forwarded as the bytes that arrived. Anything
//! that cannot be inspected (an event that is not JSON, not UTF-8, or
//! larger than [`sse::MAX_EVENT`]) fails closed: the stream ends with an
//! error event of moltgate's and nothing after it is forwarded. A `block`
//! finding withholds the rest of the answer (a notice, then empty deltas).
//!
//! With the request's tokens ([`ChunkMasker::restoring`]), each field's
//! masked text then goes through a [`KnownRestorer`]: a token split across
//! chunks comes back as its value.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::sse::{self, Event, SseParser};
use crate::policy::dlp::{Direction, Emitted, StreamMasker};
use crate::policy::findings::Found;
use crate::policy::findings::{for_each_string, mask_text, WITHHELD_REPLY};
use crate::policy::PolicySet;
use crate::tokenize::{Known, KnownRestorer};

/// Which text of which choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FieldKey {
    Content(u64),
    Refusal(u64),
    ToolArguments(u64, u64),
}

impl FieldKey {
    fn choice(self) -> u64 {
        match self {
            FieldKey::Content(c) | FieldKey::Refusal(c) | FieldKey::ToolArguments(c, _) => c,
        }
    }
}

/// One text field's stream: masked, then its tokens restored.
struct Field {
    masker: StreamMasker<Arc<PolicySet>>,
    restorer: Option<KnownRestorer>,
}

/// Masks one SSE answer as it streams.
pub struct ChunkMasker {
    policies: Arc<PolicySet>,
    parser: SseParser,
    fields: BTreeMap<FieldKey, Field>,
    /// The request's tokens, restored in what is shown.
    known: Option<Arc<Known>>,
    /// `id`, `object`, `created`, `model` of the last chunk (for a flush chunk).
    meta: Map<String, Value>,
    withheld: bool,
    failed: bool,
    found: Vec<Found>,
}

impl ChunkMasker {
    /// A masker with the request's policy snapshot.
    pub fn new(policies: Arc<PolicySet>) -> Self {
        Self {
            policies,
            parser: SseParser::default(),
            fields: BTreeMap::new(),
            known: None,
            meta: Map::new(),
            withheld: false,
            failed: false,
            found: Vec::new(),
        }
    }

    /// Also restores `known`'s tokens (the request's) in every text field.
    pub fn restoring(mut self, known: Option<Arc<Known>>) -> Self {
        self.known = known;
        self
    }

    /// Takes the next bytes from the upstream; returns the bytes to send on.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        match self.parser.push(bytes) {
            Ok(events) => events.into_iter().flat_map(|e| self.event(e)).collect(),
            Err(_) => self.fail(),
        }
    }

    /// The upstream's stream ended: the last event and whatever is held.
    pub fn finish(&mut self) -> Vec<u8> {
        if self.failed {
            return Vec::new();
        }
        let mut out = match self.parser.finish() {
            Ok(Some(last)) => self.event(last),
            Ok(None) => Vec::new(),
            Err(_) => return self.fail(),
        };
        out.extend(self.flush_all());
        out
    }

    /// Whether the stream failed closed.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The findings so far (rules, never values), taken.
    pub fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    fn event(&mut self, event: Event) -> Vec<u8> {
        let Some(data) = event.data.as_deref() else {
            return event.raw;
        };
        if data.trim() == "[DONE]" {
            let mut out = self.flush_all();
            out.extend(event.raw);
            return out;
        }
        let Ok(mut chunk) = serde_json::from_str::<Value>(data) else {
            return self.fail();
        };
        if self.chunk(&mut chunk) {
            sse::data_event(&chunk.to_string())
        } else {
            event.raw
        }
    }

    /// Masks a chunk in place; whether it changed.
    fn chunk(&mut self, chunk: &mut Value) -> bool {
        for key in ["id", "object", "created", "model"] {
            if let Some(v) = chunk.get(key) {
                self.meta.insert(key.into(), v.clone());
            }
        }
        let mut changed = false;
        if let Some(error) = chunk.get_mut("error") {
            changed |= self.mask_whole(error);
        }
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
            return changed;
        };
        for (position, choice) in choices.iter_mut().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            changed |= self.choice(index, choice);
        }
        changed
    }

    fn choice(&mut self, index: u64, choice: &mut Value) -> bool {
        let finished = choice.get("finish_reason").is_some_and(|f| !f.is_null());
        let Some(delta) = choice.get_mut("delta").filter(|d| d.is_object()) else {
            return false;
        };
        let mut changed = false;
        for (name, key) in [
            ("content", FieldKey::Content(index)),
            ("refusal", FieldKey::Refusal(index)),
        ] {
            if let Some(Value::String(text)) = delta.get_mut(name) {
                changed |= self.advance(key, text);
            }
        }
        if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
            for (position, call) in calls.iter_mut().enumerate() {
                let tool = call
                    .get("index")
                    .and_then(Value::as_u64)
                    .unwrap_or(position as u64);
                if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                    changed |= self.advance(FieldKey::ToolArguments(index, tool), args);
                }
            }
        }
        if finished {
            changed |= self.flush_choice(index, delta);
        }
        changed
    }

    /// Streams one field's increment; `text` becomes what may be shown.
    fn advance(&mut self, key: FieldKey, text: &mut String) -> bool {
        let emitted = if self.withheld {
            Emitted::default()
        } else {
            // The snapshot is cloned only when a field's stream starts.
            let (policies, known) = (&self.policies, &self.known);
            let field = self.fields.entry(key).or_insert_with(|| Field {
                masker: StreamMasker::with_snapshot(
                    policies.clone(),
                    |s| &s.dlp,
                    Direction::Egress,
                ),
                restorer: known.clone().map(KnownRestorer::new),
            });
            field.masker.push(text)
        };
        let mut shown = self.shown(emitted);
        if let Some(r) = self.fields.get_mut(&key).and_then(|f| f.restorer.as_mut()) {
            shown = r.push(&shown);
        }
        let changed = *text != shown;
        *text = shown;
        changed
    }

    /// What an emitted piece shows: its text, or the notice once a `block`
    /// rule matched (and nothing after).
    fn shown(&mut self, emitted: Emitted) -> String {
        self.found.extend(emitted.findings.iter().map(|f| Found {
            rule: f.rule.clone(),
            action: f.action.as_str(),
            direction: "egress",
        }));
        if emitted.blocked_by.is_some() && !self.withheld {
            self.withheld = true;
            return format!("{}{WITHHELD_REPLY}", emitted.text);
        }
        emitted.text
    }

    /// Ends a choice's fields into its finishing `delta`.
    fn flush_choice(&mut self, index: u64, delta: &mut Value) -> bool {
        let keys: Vec<FieldKey> = self
            .fields
            .keys()
            .copied()
            .filter(|k| k.choice() == index)
            .collect();
        let mut changed = false;
        for key in keys {
            let Some(field) = self.fields.remove(&key) else {
                continue;
            };
            let emitted = if self.withheld {
                Emitted::default()
            } else {
                field.masker.finish()
            };
            let mut rest = self.shown(emitted);
            if let Some(mut r) = field.restorer {
                rest = r.push(&rest);
                rest.push_str(&r.finish());
            }
            if !rest.is_empty() {
                append(delta, key, &rest);
                changed = true;
            }
        }
        changed
    }

    /// Ends every field still open, as one chunk of moltgate's (or nothing).
    fn flush_all(&mut self) -> Vec<u8> {
        let choices: Vec<u64> = self.fields.keys().map(|k| k.choice()).collect();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for index in choices {
            if seen.contains(&index) {
                continue;
            }
            seen.push(index);
            let mut delta = json!({});
            if self.flush_choice(index, &mut delta) {
                let mut chunk = Value::Object(self.meta.clone());
                chunk["object"] = json!("chat.completion.chunk");
                chunk["choices"] = json!([{"index": index, "delta": delta, "finish_reason": null}]);
                out.extend(sse::data_event(&chunk.to_string()));
            }
        }
        out
    }

    /// Masks every string inside `value` as a whole text.
    fn mask_whole(&mut self, value: &mut Value) -> bool {
        let mut changed = false;
        let (policies, found) = (&self.policies, &mut self.found);
        for_each_string(value, &mut |s| {
            if let Some(masked) = mask_text(policies, s, Direction::Egress, found) {
                *s = masked;
                changed = true;
            }
        });
        changed
    }

    /// Fails closed: an error event, and nothing more.
    fn fail(&mut self) -> Vec<u8> {
        self.failed = true;
        self.fields.clear();
        let error = json!({"error": {
            "message": "moltgate could not inspect the rest of this answer, so it was not sent",
            "type": "moltgate_error",
            "code": "stream_not_inspectable",
        }});
        sse::data_event(&error.to_string())
    }
}

/// Appends `rest` to the field `key` names in a finishing `delta`.
fn append(delta: &mut Value, key: FieldKey, rest: &str) {
    let Some(obj) = delta.as_object_mut() else {
        return;
    };
    let push = |slot: &mut Value| match slot {
        Value::String(s) => s.push_str(rest),
        other => *other = json!(rest),
    };
    match key {
        FieldKey::Content(_) => push(obj.entry("content").or_insert(Value::Null)),
        FieldKey::Refusal(_) => push(obj.entry("refusal").or_insert(Value::Null)),
        FieldKey::ToolArguments(_, tool) => {
            let calls = obj.entry("tool_calls").or_insert_with(|| json!([]));
            let Some(calls) = calls.as_array_mut() else {
                return;
            };
            let at = calls
                .iter()
                .position(|c| c.get("index").and_then(Value::as_u64) == Some(tool));
            match at {
                Some(i) => match calls[i].pointer_mut("/function/arguments") {
                    Some(slot) => push(slot),
                    None => calls[i]["function"] = json!({"arguments": rest}),
                },
                None => calls.push(json!({"index": tool, "function": {"arguments": rest}})),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::dlp::stream::whole_outcome;

    pub(crate) fn shipped() -> Arc<PolicySet> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        Arc::new(PolicySet::load(&dir, 1, None).unwrap())
    }

    fn chunk(content: &str, finish: Option<&str>) -> Vec<u8> {
        let c = json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":content},"finish_reason":finish}]});
        sse::data_event(&c.to_string())
    }

    /// The content the client sees: every delta, in order.
    fn contents(out: &[u8]) -> (String, Vec<Value>) {
        let mut p = SseParser::default();
        let mut events = p.push(out).unwrap();
        events.extend(p.finish().unwrap());
        let mut text = String::new();
        let mut chunks = Vec::new();
        for e in events {
            let Some(d) = e.data else { continue };
            if d == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&d).unwrap();
            if let Some(c) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                text.push_str(c);
            }
            chunks.push(v);
        }
        (text, chunks)
    }

    /// For random splits of texts with values in them, the client sees
    /// exactly the whole text's masking, and never a value's digits.
    #[test]
    fn any_split_gives_the_whole_texts_masking() {
        let p = shipped();
        let texts = [
            "My card is 4111 1111 1111 1111, call 13800138000 or mail a.b@example.com.",
            "plain words only, nothing to see here at all",
            "13800138000",
            "digits 1234 5678 and 4111111111111111 end",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for text in texts {
            let whole = whole_outcome(&p.dlp, text, Direction::Egress);
            let want = whole.text(text);
            for _ in 0..200 {
                let mut m = ChunkMasker::new(p.clone());
                let mut out = Vec::new();
                let mut from = 0;
                while from < text.len() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let mut to = (from + 1 + (seed % 12) as usize).min(text.len());
                    while !text.is_char_boundary(to) {
                        to += 1;
                    }
                    let bytes = chunk(&text[from..to], None);
                    // The SSE bytes themselves arrive in two cuts too.
                    let cut = (seed as usize >> 8) % bytes.len();
                    out.extend(m.push(&bytes[..cut]));
                    out.extend(m.push(&bytes[cut..]));
                    from = to;
                }
                out.extend(m.push(&chunk("", Some("stop"))));
                out.extend(m.push(b"data: [DONE]\n\n"));
                out.extend(m.finish());
                let (seen, _) = contents(&out);
                assert_eq!(seen, want, "{text:?}");
                assert!(!m.failed());
            }
        }
    }

    #[test]
    fn the_first_chunk_is_not_held_and_held_text_flushes_at_the_end() {
        let p = shipped();
        let mut m = ChunkMasker::new(p.clone());
        let first = m.push(&chunk(
            "Here is a long first sentence with no numbers in it at all. ",
            None,
        ));
        assert!(!contents(&first).0.is_empty(), "the first chunk went out");
        let held = m.push(&chunk("Call 138", None));
        assert!(
            !contents(&held).0.contains("138"),
            "a possible phone number is held"
        );
        // The stream ends without finish_reason or [DONE]: a chunk of
        // moltgate's carries the rest, with the stream's id and model.
        let (rest, chunks) = contents(&m.finish());
        assert_eq!(format!("{}{rest}", contents(&held).0), "Call 138");
        assert_eq!(chunks[0]["id"], "chatcmpl-1");
        assert_eq!(chunks[0]["model"], "m");
    }

    #[test]
    fn tool_arguments_are_streamed_and_flushed_into_the_finishing_chunk() {
        let p = shipped();
        let mut m = ChunkMasker::new(p);
        let call = |args: &str, finish: Option<&str>| {
            let c = json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":args}}]},"finish_reason":finish}]});
            sse::data_event(&c.to_string())
        };
        let mut out = m.push(&call("{\"phone\":\"1380013", None));
        out.extend(m.push(&call("8000\"}", None)));
        out.extend(m.push(&sse::data_event(
            &json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}).to_string(),
        )));
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("13800138000") && !text.contains("0013"),
            "{text}"
        );
        assert!(text.contains("138****8000"), "{text}");
        assert!(m.take_found().iter().any(|f| &*f.rule == "cn_mobile"));
    }

    #[test]
    fn what_cannot_be_inspected_fails_closed() {
        let p = shipped();
        let mut m = ChunkMasker::new(p);
        let out = m.push(b"data: {not json\n\n");
        assert!(String::from_utf8_lossy(&out).contains("stream_not_inspectable"));
        assert!(m.failed());
        assert!(m.push(&chunk("more 4111 1111 1111 1111", None)).is_empty());
        assert!(m.finish().is_empty());
        // Comments and keep-alives pass as they are.
        let mut m = ChunkMasker::new(shipped());
        assert_eq!(m.push(b": keep-alive\n\n"), b": keep-alive\n\n");
    }
}
