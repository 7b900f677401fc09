//! The OpenAI response shapes for answers that come from the AI cluster
//! (`platform: openai`, `mode: translate`): the message path answers in the
//! JSON API's shape (`{"replies":[{"text"}],"complete"}` or
//! `{"error","message"}`), and this is the same answer as a
//! `chat.completion`, as `chat.completion.chunk` events, or as an OpenAI
//! error object.

use serde_json::{json, Value};

/// One streamed answer's identity: the same `id`, `created` and `model` on
/// every chunk.
#[derive(Debug, Clone)]
pub struct Completion {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model the request named.
    pub model: String,
}

impl Completion {
    /// A new answer to a request for `model`.
    pub fn new(model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created,
            model: model.chars().take(128).collect(),
        }
    }

    /// A `chat.completion.chunk` with `delta`, and `finish_reason` if it ends the answer.
    pub fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }

    /// The JSON API's answer as a whole `chat.completion`: its replies (the
    /// cluster's reply parts, deltas of one text) concatenated; `finish_reason` `length` when the cluster did not
    /// complete it (deadline).
    pub fn whole(&self, api_answer: &Value) -> Value {
        let text = replies(api_answer).concat();
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(api_answer),
            }],
        })
    }
}

/// The replies' texts of a JSON API answer.
pub fn replies(api_answer: &Value) -> Vec<String> {
    api_answer["replies"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|p| p["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `stop`, or `length` when the cluster did not complete the answer.
pub fn finish_reason(api_answer: &Value) -> &'static str {
    if api_answer["complete"] == false {
        "length"
    } else {
        "stop"
    }
}

/// The JSON API's refusal (`{"error","message"}`, or a held message's
/// `{"status","message","code"}`) as an OpenAI error object.
pub fn error(api_answer: &Value) -> Value {
    let code = api_answer["error"]
        .as_str()
        .or_else(|| api_answer["status"].as_str())
        .unwrap_or("error");
    let mut message = api_answer["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(held) = api_answer["code"].as_str() {
        message = format!("{message} (code {held})");
    }
    json!({"error": {"message": message, "type": code, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_in_openai_shapes() {
        let c = Completion::new("m");
        let ok = json!({"envelope_id":"e","replies":[{"text":"a"},{"text":"b"}],"complete":true});
        let whole = c.whole(&ok);
        assert_eq!(whole["choices"][0]["message"]["content"], "ab");
        assert_eq!(whole["choices"][0]["finish_reason"], "stop");
        assert_eq!(whole["object"], "chat.completion");
        let cut = json!({"replies":[{"text":"a"}],"complete":false});
        assert_eq!(finish_reason(&cut), "length");
        let chunk = c.chunk(json!({"content":"x"}), None);
        assert_eq!(
            (chunk["id"].clone(), chunk["model"].clone()),
            (whole["id"].clone(), json!("m"))
        );
        let refused = error(&json!({"error":"rate_limited","message":"slow down"}));
        assert_eq!(refused["error"]["code"], "rate_limited");
        assert_eq!(refused["error"]["message"], "slow down");
    }
}
