//! The texts of a chat-completions request that ingress DLP reads: every
//! message's `content` when it is a string, and the `text` of its content
//! parts (`{"type":"text","text":…}`); images and audio parts are not text.

use serde_json::Value;

/// Why a body is not a chat-completions request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a JSON object.
    #[error("the body is not a JSON object (a chat-completions request: {{\"model\":…,\"messages\":[…]}})")]
    NotAnObject,
    /// No `messages` array.
    #[error("`messages` must be an array of {{\"role\":…,\"content\":…}}")]
    NoMessages,
    /// A message's `content` is neither a string, an array of parts, nor null.
    #[error("messages[{0}].content must be a string or an array of content parts")]
    BadContent(usize),
}

/// Checks the request's shape and returns its message texts, in order.
pub fn texts_mut(body: &mut Value) -> Result<Vec<&mut String>, RequestError> {
    let obj = body.as_object_mut().ok_or(RequestError::NotAnObject)?;
    let messages = obj
        .get_mut("messages")
        .and_then(Value::as_array_mut)
        .ok_or(RequestError::NoMessages)?;
    let mut out = Vec::new();
    for (i, message) in messages.iter_mut().enumerate() {
        match message.get_mut("content") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.push(s),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if part.get("type").and_then(Value::as_str) != Some("text") {
                        continue;
                    }
                    if let Some(Value::String(text)) = part.get_mut("text") {
                        out.push(text);
                    }
                }
            }
            Some(_) => return Err(RequestError::BadContent(i)),
        }
    }
    Ok(out)
}

/// Whether a request body asks for a streamed answer (`"stream": true`).
pub fn is_streamed_body(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| is_streamed(&v))
}

/// Whether the request asks for a streamed answer.
pub fn is_streamed(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_text_is_found_and_nothing_else() {
        let mut body = json!({"model":"m","stream":true,"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"card 4111"},{"type":"image_url","image_url":{"url":"data:x"}}]},
            {"role":"assistant","content":null,"tool_calls":[]},
        ]});
        assert!(is_streamed(&body));
        let texts: Vec<String> = texts_mut(&mut body)
            .unwrap()
            .into_iter()
            .map(|s| s.clone())
            .collect();
        assert_eq!(texts, ["be brief", "card 4111"]);
        for bad in [
            json!([1]),
            json!({"messages": "x"}),
            json!({"messages": [{"content": 3}]}),
        ] {
            let mut bad = bad;
            assert!(texts_mut(&mut bad).is_err(), "{bad}");
        }
    }
}
