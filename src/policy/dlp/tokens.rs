//! The text to forward when some findings are `action: tokenize`.
//!
//! The engine knows nothing about keys or vaults: [`DlpOutcome::masked`]
//! masks a tokenize finding whole, which is what is forwarded when no
//! tokenizer is at hand (fail closed). [`DlpOutcome::render`] is how the
//! message path puts tokens in instead: it is given each value and returns
//! its replacement (from [`crate::tokenize::Tokenizer`]), and any value it
//! returns `None` for stays masked. What is rendered is the masked text
//! with the tokenized spans swapped, so `mask` findings stay masked exactly
//! as [`DlpOutcome::masked`] has them.

use std::sync::Arc;

use super::{Action, DlpOutcome, DlpPolicy, BOTH};

/// A span of the scanned text that becomes one token: one `tokenize`
/// finding, or overlapping ones merged (the first one's rule names it).
/// Byte offsets into the scanned text; never the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpan {
    /// The rule (the token's type).
    pub rule: Arc<str>,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
}

impl DlpOutcome {
    /// The spans of the `tokenize` findings, in order, overlaps merged.
    pub fn token_spans(&self) -> Vec<TokenSpan> {
        let mut spans: Vec<TokenSpan> = Vec::new();
        for f in self
            .findings
            .iter()
            .filter(|f| f.action == Action::Tokenize)
        {
            match spans.last_mut() {
                Some(last) if f.start < last.end => last.end = last.end.max(f.end),
                _ => spans.push(TokenSpan {
                    rule: f.rule.clone(),
                    start: f.start,
                    end: f.end,
                }),
            }
        }
        spans
    }

    /// The text to forward: [`Self::text`], with each token span replaced
    /// by what `replace` returns for it and its value (`original`'s bytes
    /// there); `None` keeps the span masked.
    pub fn render(
        &self,
        original: &str,
        mut replace: impl FnMut(&TokenSpan, &str) -> Option<String>,
    ) -> String {
        let masked = self.text(original);
        let spans = self.token_spans();
        if spans.is_empty() {
            return masked.to_string();
        }
        // Masking writes one character per character: the n-th character
        // of `masked` stands for the n-th of `original`.
        let at: Vec<usize> = masked
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(masked.len()))
            .collect();
        let mut out = String::with_capacity(masked.len());
        let (mut from, mut chars, mut done) = (0usize, 0usize, 0usize);
        for s in &spans {
            let (Some(gap), Some(value)) =
                (original.get(from..s.start), original.get(s.start..s.end))
            else {
                // Offsets that do not fit the text: forward it masked.
                return masked.to_string();
            };
            chars += gap.chars().count();
            let start = at.get(chars).copied().unwrap_or(masked.len());
            chars += value.chars().count();
            let end = at.get(chars).copied().unwrap_or(masked.len());
            out.push_str(masked.get(done..start).unwrap_or_default());
            match replace(s, value) {
                Some(token) => out.push_str(&token),
                None => out.push_str(masked.get(start..end).unwrap_or_default()),
            }
            from = s.end;
            done = end;
        }
        out.push_str(masked.get(done..).unwrap_or_default());
        out
    }
}

/// [`super::scan_line_json`] with tokens: `masked` is what the model
/// would see, each token span replaced by `replace` (`moltgate dlp scan
/// --tokenize`).
pub fn scan_line_json_with(
    policy: &DlpPolicy,
    line_no: usize,
    line: &str,
    replace: impl FnMut(&TokenSpan, &str) -> Option<String>,
) -> String {
    let outcome = policy.scan_dirs(line, BOTH);
    let mut out = format!("{{\"line\":{line_no},\"findings\":[");
    for (i, f) in outcome.findings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{\"type\":{},\"start\":{},\"end\":{},\"action\":\"{}\"}}",
            serde_json::Value::String(f.rule.to_string()),
            f.start,
            f.end,
            f.action
        ));
    }
    out.push_str("],\"masked\":");
    let shown = outcome.render(line, replace);
    out.push_str(&serde_json::Value::String(shown).to_string());
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::dlp::{Action, Direction, DlpPolicy};

    fn policy() -> DlpPolicy {
        DlpPolicy::from_yaml(
            Path::new("dlp.yaml"),
            r#"
patterns:
  phone: { regex: '1[3-9]\d{9}', action: tokenize }
  card: { regex: '4\d{15}', validate: luhn, action: mask, mask: { keep_suffix: 4 } }
keywords:
  secret: { words: ["机密"], action: tokenize }
"#,
        )
        .unwrap()
    }

    #[test]
    fn tokenize_findings_are_reported_and_masked_whole() {
        let p = policy();
        let text = "tel 13812345678, card 4111111111111111";
        let out = p.scan(text, Direction::Ingress);
        let actions: Vec<_> = out.findings.iter().map(|f| f.action).collect();
        assert_eq!(actions, [Action::Tokenize, Action::Mask]);
        assert_eq!(out.findings[0].action.as_str(), "tokenize");
        let masked = out.masked.as_deref().unwrap();
        assert_eq!(masked, "tel ***********, card ************1111");
        assert!(!masked.contains("13812345678"));
        assert_eq!(p.tokenize_rules().collect::<Vec<_>>(), ["phone", "secret"]);
    }

    #[test]
    fn render_puts_tokens_in_and_keeps_masks() {
        let p = policy();
        let text = "机密: tel 138-1234-5678? no, 13812345678; card 4111111111111111";
        let out = p.scan(text, Direction::Ingress);
        let mut seen = Vec::new();
        let shown = out.render(text, |s, v| {
            seen.push((s.rule.to_string(), v.to_string()));
            Some(format!("<{}>", s.rule))
        });
        assert_eq!(
            shown,
            "<secret>: tel 138-1234-5678? no, <phone>; card ************1111"
        );
        assert_eq!(seen[1], ("phone".to_string(), "13812345678".to_string()));
        // No replacement: stays masked (fail closed).
        assert_eq!(out.render(text, |_, _| None), out.text(text));
        let json = crate::policy::dlp::scan_line_json(&p, 1, "13812345678");
        assert!(json.contains("\"action\":\"tokenize\""), "{json}");
        assert!(json.ends_with("\"masked\":\"***********\"}"), "{json}");
    }

    #[test]
    fn mask_options_need_mask() {
        let e = DlpPolicy::from_yaml(
            Path::new("dlp.yaml"),
            "patterns:\n  p: { regex: 'x', action: tokenize, mask: { char: '#' } }\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("'mask' options need 'action: mask'"),
            "{e}"
        );
    }
}
