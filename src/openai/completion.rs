//! A whole (`stream: false`) chat-completions answer through egress DLP:
//! every choice's `message.content` (string or text parts), `refusal`, and
//! tool calls' `function.arguments`, each masked as a whole text, and the
//! `error` object of an error answer.

use serde_json::Value;

use crate::policy::dlp::Direction;
use crate::policy::findings::Found;
use crate::policy::findings::{for_each_string, mask_text};
use crate::policy::PolicySet;

/// An answer that cannot be inspected, so it must not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream's answer is not JSON, so it cannot be inspected")]
pub struct NotInspectable;

/// The answer with its texts masked, if anything changed.
pub fn mask(
    policies: &PolicySet,
    body: &[u8],
    found: &mut Vec<Found>,
) -> Result<Option<Vec<u8>>, NotInspectable> {
    let mut answer: Value = serde_json::from_slice(body).map_err(|_| NotInspectable)?;
    let mut changed = false;
    let mut scan = |v: &mut Value| {
        for_each_string(v, &mut |s| {
            if let Some(masked) = mask_text(policies, s, Direction::Egress, found) {
                *s = masked;
                changed = true;
            }
        })
    };
    if let Some(error) = answer.get_mut("error") {
        scan(error);
    }
    if let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            let Some(message) = choice.get_mut("message") else {
                continue;
            };
            for field in ["/content", "/refusal"] {
                if let Some(v) = message.pointer_mut(field) {
                    text_parts(v, &mut scan);
                }
            }
            if let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    if let Some(args) = call.pointer_mut("/function/arguments") {
                        scan(args);
                    }
                }
            }
        }
    }
    Ok(changed.then(|| answer.to_string().into_bytes()))
}

/// Calls `scan` on a content value's texts: the string, or each text part's `text`.
fn text_parts(content: &mut Value, scan: &mut impl FnMut(&mut Value)) {
    match content {
        Value::String(_) => scan(content),
        Value::Array(parts) => {
            for part in parts {
                if let Some(text) = part.get_mut("text") {
                    scan(text);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::chunks::tests::shipped;
    use serde_json::json;

    #[test]
    fn every_text_of_the_answer_is_masked() {
        let p = shipped();
        let body = json!({"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"card 4111 1111 1111 1111",
            "tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{\"phone\":\"13800138000\"}"}}]},"finish_reason":"stop"}]});
        let mut found = Vec::new();
        let out = mask(&p, body.to_string().as_bytes(), &mut found)
            .unwrap()
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains("4111 1111 1111 1111") && !out.contains("13800138000"),
            "{out}"
        );
        assert!(out.contains("138****8000"));
        assert_eq!(found.len(), 2);
        let clean = json!({"choices":[{"message":{"content":"hello"}}]}).to_string();
        assert_eq!(mask(&p, clean.as_bytes(), &mut found), Ok(None));
        assert_eq!(mask(&p, b"<html>", &mut found), Err(NotInspectable));
    }
}
