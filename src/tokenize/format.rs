//! What a token looks like, and what makes two values the same value.
//!
//! **Format: `⟨LABEL:id⟩`**, for example `⟨CN_MOBILE:q7mzk2x4ba5t⟩`.
//!
//! * `⟨` `⟩` (U+27E8, U+27E9, mathematical angle brackets) delimit it: they
//!   almost never occur in chat text, JSON needs no escaping for them, and
//!   unlike `<…>` or `[…]` they mean nothing to HTML, XML (WeCom's replies
//!   are XML) or Markdown, so a renderer does not eat or link the token.
//! * `LABEL` is the DLP rule's name in ASCII capitals (`cn_mobile` →
//!   `CN_MOBILE`; other characters become `_`; a name with no ASCII letter
//!   or digit is `VALUE`). The model sees what kind of value stood there,
//!   so it can still answer "I will call ⟨CN_MOBILE:…⟩".
//! * `id` is 12 characters of lowercase RFC 4648 base32 (`a-z`, `2-7`):
//!   the first 60 bits of HMAC-SM3 (id key) of tenant, label and normalised
//!   value. Why 60 bits: two different values of one type and tenant get
//!   the same id with probability about n²/2⁶¹ for n distinct values: one in
//!   two million for a million values. Ids only need to be unique within one
//!   conversation to restore correctly (the vault is keyed by tenant and
//!   conversation), and a collision there is detected and fails closed
//!   ([`super::TokenizeError::Collision`]). Base32 has no `0`, `1`, `8`,
//!   `9`, and no case: a model that upper-cases the id, or reads `0` for
//!   `o`, cannot turn it into a different id, and no id contains a run of
//!   digits that reads as a phone number (they start with `1`) or, with at
//!   most 12 digits, as a card (13–19).
//!
//! **Normalisation** ([`normalise`]) decides what "the same value" is, so
//! the user who writes `138 1234 5678` and later `138-1234-5678` gets one
//! token:
//! * NFKC and invisible characters dropped (as DLP reads text: `１３８` is
//!   `138`);
//! * a value made of digits once spaces, dashes, dots, slashes and
//!   parentheses are removed (phones, cards, ID numbers, an optional leading
//!   `+` and a trailing check letter `X`) is those digits, `X` upper-cased;
//! * an e-mail-like value (one word with `@`) is lower-cased;
//! * anything else (keywords, secrets) keeps its case, with runs of white
//!   space made one space and the ends trimmed: an API key's case matters.

use std::fmt;

use super::crypto::Keys;

/// Characters of a token id.
pub const ID_LEN: usize = 12;
/// The most bytes of a label.
pub const MAX_LABEL: usize = 32;
/// RFC 4648 base32, lower case.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// The token's brackets.
pub const OPEN: char = '\u{27E8}';
/// The token's closing bracket.
pub const CLOSE: char = '\u{27E9}';

/// A token: what the model sees instead of a value. Holds no part of the
/// value, so its `Debug` and `Display` are safe to log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token {
    label: String,
    id: String,
}

impl Token {
    /// The token of `value` for `tenant` under rule `rule`.
    pub(crate) fn derive(keys: &Keys, tenant: &str, rule: &str, value: &str) -> Self {
        let label = label_of(rule);
        let norm = normalise(value);
        let mac = keys.id_mac(&[tenant.as_bytes(), label.as_bytes(), norm.as_bytes()]);
        Self {
            id: base32_prefix(&mac),
            label,
        }
    }

    /// The type label (`CN_MOBILE`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The id (`q7mzk2x4ba5t`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn from_parts(label: String, id: String) -> Self {
        Self { label, id }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{OPEN}{}:{}{CLOSE}", self.label, self.id)
    }
}

/// The label of rule `rule`: ASCII capitals, digits and `_`, at most
/// [`MAX_LABEL`] bytes.
pub fn label_of(rule: &str) -> String {
    let mut out = String::with_capacity(rule.len());
    for c in rule.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_uppercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
        if out.len() >= MAX_LABEL {
            break;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    // A label starts with a letter (what restore looks for).
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'V');
        out.truncate(MAX_LABEL);
        if out == "V" {
            return "VALUE".into();
        }
    }
    out
}

/// A label as written by a model, made comparable: upper case, each run of
/// spaces, `_` and `-` one `_`, none at the ends.
pub fn canonical_label(written: &str) -> String {
    let mut out = String::with_capacity(written.len());
    for c in written.chars() {
        if matches!(c, ' ' | '\t' | '_' | '-' | '\u{3000}' | '\u{a0}') {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
        } else {
            out.push(c.to_ascii_uppercase());
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// The normal form of a value (see the module documentation).
pub fn normalise(value: &str) -> String {
    let folded = crate::policy::dlp::fold(value);
    let trimmed = folded.trim();
    let compact: String = trimmed
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '/' | '(' | ')')))
        .collect();
    if is_numeric_value(&compact) {
        return compact.to_ascii_uppercase();
    }
    if trimmed.contains('@') && !trimmed.contains(char::is_whitespace) {
        return trimmed.to_lowercase();
    }
    trimmed.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Digits, with an optional leading `+` and trailing `X`.
fn is_numeric_value(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let s = s.strip_suffix(['x', 'X']).unwrap_or(s);
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The first `ID_LEN * 5` bits of `mac` in base32.
fn base32_prefix(mac: &[u8; 32]) -> String {
    let mut bits: u64 = 0;
    for &b in &mac[..8] {
        bits = (bits << 8) | u64::from(b);
    }
    (0..ID_LEN)
        .map(|i| {
            let shift = 64 - 5 * (i + 1);
            char::from(ALPHABET[((bits >> shift) & 31) as usize])
        })
        .collect()
}

/// Whether `c` may appear in an id (either case).
pub fn is_id_char(c: char) -> bool {
    c.is_ascii_alphabetic() || ('2'..='7').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(label_of("cn_mobile"), "CN_MOBILE");
        assert_eq!(label_of("credit-card number"), "CREDIT_CARD_NUMBER");
        assert_eq!(label_of("__x__"), "X");
        assert_eq!(label_of("机密"), "VALUE");
        assert_eq!(label_of("2fa"), "V2FA");
        assert_eq!(label_of(&"a".repeat(50)).len(), MAX_LABEL);
        assert_eq!(canonical_label(" credit card "), "CREDIT_CARD");
        assert_eq!(canonical_label("Credit-Card"), "CREDIT_CARD");
    }

    #[test]
    fn normal_forms() {
        assert_eq!(normalise("138 1234 5678"), "13812345678");
        assert_eq!(normalise("138-1234-5678"), "13812345678");
        assert_eq!(normalise("１３８１２３４５６７８"), "13812345678");
        assert_eq!(normalise("(010) 8888.6666"), "01088886666");
        assert_eq!(normalise("+86 138 1234 5678"), "+8613812345678");
        assert_eq!(normalise("11010519491231002x"), "11010519491231002X");
        assert_eq!(
            normalise(" Alice.Smith@Example.COM "),
            "alice.smith@example.com"
        );
        assert_eq!(normalise("AKIA  ABCD\tEFGH"), "AKIA ABCD EFGH");
        assert_ne!(normalise("AKIAabcd"), normalise("AKIAABCD"));
        assert_eq!(normalise("x"), "x");
    }

    #[test]
    fn ids_are_base32() {
        let mac = [0xffu8; 32];
        assert_eq!(base32_prefix(&mac), "777777777777");
        let zero = [0u8; 32];
        assert_eq!(base32_prefix(&zero), "aaaaaaaaaaaa");
        assert!(base32_prefix(&[0x5a; 32]).chars().all(is_id_char));
    }
}
