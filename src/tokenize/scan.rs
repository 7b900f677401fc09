//! Finding tokens in a model's reply, including tokens the model rewrote.
//!
//! Models copy tokens mostly faithfully, but not always: they change case,
//! put spaces around the colon, swap `⟨⟩` for `<>` or drop the brackets.
//! [`parse`] accepts these forms (restore then also needs the vault to hold
//! exactly one entry that fits, see [`super::Tokenizer`]):
//!
//! 1. `open? sp LABEL sp SEP sp ID (sp close)?` where `open` is one of
//!    `⟨ 〈 〈 < ‹ « 《 【 [ ( {` and `close` any of their partners, `SEP` is
//!    `:` or `：`, `sp` at most three spaces (ASCII, tab, ideographic,
//!    no-break), `LABEL` letters, digits, `_`, `-` and spaces starting with
//!    a letter, compared case-insensitively with spaces, `-` and `_` alike,
//!    and `ID` exactly 12 characters of `a-z2-7` in either case, not followed
//!    by another letter or digit. `⟨PHONE:k3f9q2…⟩`, `<phone:K3F9Q2…>`,
//!    `⟨ phone : K3F9Q2… ⟩` and `PHONE:k3f9q2…` all match.
//! 2. Without an opening bracket, the label must be one of the labels the
//!    policy tokenises with ([`Labels`]) and start a word: an ordinary
//!    `Note: something` is not a token, and only a word that could still
//!    become such a label is held back in a stream.
//! 3. `open sp ID sp close` (the model dropped the label).
//!
//! Not accepted: a changed id (a dropped, added or substituted character),
//! an id split by spaces, a token across a line break. Those stay as the
//! model wrote them, which shows the token, never a wrong value.
//!
//! Every form is at most [`MAX_TOKEN_BYTES`] long, so a stream holds back
//! at most that much.

use super::format::{canonical_label, is_id_char, ID_LEN, MAX_LABEL};

/// The longest text [`parse`] reads for one token: bracket (4 bytes), three
/// runs of spaces (3 × 3 × 3), label, separator (3), id, bracket (4).
pub const MAX_TOKEN_BYTES: usize = 4 + 27 + MAX_LABEL + 3 + ID_LEN + 4;
/// Spaces allowed in one place.
const MAX_SPACES: usize = 3;

/// The labels a policy tokenises with, canonical (see
/// [`canonical_label`]); what an unbracketed token must start with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Vec<String>);

impl Labels {
    /// The labels of the DLP rules named `rules` (their `action: tokenize`
    /// rules: [`crate::policy::dlp::DlpPolicy::tokenize_rules`]).
    pub fn from_rules<'a>(rules: impl IntoIterator<Item = &'a str>) -> Self {
        let mut v: Vec<String> = rules
            .into_iter()
            .map(|r| canonical_label(&super::format::label_of(r)))
            .collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Labels already canonical (as a [`super::restore::Known`] keeps them).
    pub(super) fn from_canonical(labels: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = labels.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    fn contains(&self, label: &str) -> bool {
        self.0.iter().any(|l| l == label)
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.0.iter().any(|l| l.starts_with(prefix))
    }
}

/// A token found at some position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Byte offset one past its last character (its closing bracket, if any).
    pub end: usize,
    /// The label as written, canonical; `None` for form 3.
    pub label: Option<String>,
    /// The id, lower case.
    pub id: String,
}

/// What [`parse`] decided at one position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// No token starts here, whatever follows.
    No,
    /// A token may start here: the text ends before it could tell.
    More,
    /// A token.
    Found(Found),
}

fn is_open(c: char) -> bool {
    matches!(
        c,
        '\u{27E8}'
            | '\u{2329}'
            | '\u{3008}'
            | '<'
            | '\u{2039}'
            | '\u{AB}'
            | '\u{300A}'
            | '\u{3010}'
            | '['
            | '('
            | '{'
    )
}

fn is_close(c: char) -> bool {
    matches!(
        c,
        '\u{27E9}'
            | '\u{232A}'
            | '\u{3009}'
            | '>'
            | '\u{203A}'
            | '\u{BB}'
            | '\u{300B}'
            | '\u{3011}'
            | ']'
            | ')'
            | '}'
    )
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{3000}' | '\u{a0}')
}

/// Letters, digits and `_`: what a label must not be glued to.
pub fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || is_space(c)
}

/// Reads text from one position; `eof`: no more text will come.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    eof: bool,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self, c: char) {
        self.pos += c.len_utf8();
    }

    /// What running out of text means here.
    fn out(&self) -> Parse {
        if self.eof {
            Parse::No
        } else {
            Parse::More
        }
    }

    /// Up to [`MAX_SPACES`] spaces; `Err(More)` when the text ends in them.
    fn spaces(&mut self) -> Result<(), Parse> {
        for _ in 0..MAX_SPACES {
            match self.peek() {
                Some(c) if is_space(c) => self.bump(c),
                Some(_) => return Ok(()),
                None if self.eof => return Ok(()),
                None => return Err(Parse::More),
            }
        }
        Ok(())
    }

    /// The label run (letters, digits, `_`, `-`, spaces), trailing spaces
    /// included; `known`: it must become one of `labels`.
    fn label_run(&mut self, known: Option<&Labels>) -> Result<String, Parse> {
        let start = self.pos;
        loop {
            match self.peek() {
                Some(c) if is_label_char(c) => {
                    self.bump(c);
                    if self.pos - start > MAX_LABEL + 2 * MAX_SPACES {
                        return Err(Parse::No);
                    }
                    let canon = canonical_label(&self.text[start..self.pos]);
                    if known.is_some_and(|l| !l.has_prefix(&canon)) {
                        return Err(Parse::No);
                    }
                }
                Some(_) => break,
                None if self.eof => break,
                None => return Err(Parse::More),
            }
        }
        Ok(self.text[start..self.pos].to_string())
    }

    /// Exactly [`ID_LEN`] id characters, then no letter or digit.
    fn id(&mut self) -> Result<String, Parse> {
        let start = self.pos;
        for _ in 0..ID_LEN {
            match self.peek() {
                Some(c) if is_id_char(c) => self.bump(c),
                Some(_) => return Err(Parse::No),
                None => return Err(self.out()),
            }
        }
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() => Err(Parse::No),
            None if !self.eof => Err(Parse::More),
            _ => Ok(self.text[start..self.pos].to_ascii_lowercase()),
        }
    }

    /// An optional closing bracket after spaces: the token's end.
    fn close(&mut self) -> Result<usize, Parse> {
        let id_end = self.pos;
        self.spaces()?;
        match self.peek() {
            Some(c) if is_close(c) => Ok(self.pos + c.len_utf8()),
            None if !self.eof => Err(Parse::More),
            _ => Ok(id_end),
        }
    }
}

/// Whether a token starts at byte `at` of `text` (`prev`: the character
/// before it, which may be outside `text`).
pub fn parse(text: &str, at: usize, prev: Option<char>, labels: &Labels, eof: bool) -> Parse {
    match parse_inner(text, at, prev, labels, eof) {
        Ok(f) => Parse::Found(f),
        Err(p) => p,
    }
}

fn parse_inner(
    text: &str,
    at: usize,
    prev: Option<char>,
    labels: &Labels,
    eof: bool,
) -> Result<Found, Parse> {
    let mut cur = Cursor { text, pos: at, eof };
    let first = cur.peek().ok_or(Parse::No)?;
    let bracketed = is_open(first);
    if bracketed {
        cur.bump(first);
        cur.spaces()?;
    } else if !first.is_ascii_alphabetic() || prev.is_some_and(is_word) || labels.0.is_empty() {
        return Err(Parse::No);
    }
    let run = cur.label_run((!bracketed).then_some(labels))?;
    let label = canonical_label(&run);
    let next = cur.peek().ok_or_else(|| cur.out())?;
    if matches!(next, ':' | '\u{FF1A}') {
        let known = labels.contains(&label);
        if label.is_empty() || !label.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(Parse::No);
        }
        if !bracketed && !known {
            return Err(Parse::No);
        }
        cur.bump(next);
        cur.spaces()?;
        let id = cur.id()?;
        let end = cur.close()?;
        return Ok(Found {
            end,
            label: Some(label),
            id,
        });
    }
    let bare = run.trim_end_matches(is_space);
    if bracketed && is_close(next) && bare.len() == ID_LEN && bare.chars().all(is_id_char) {
        return Ok(Found {
            end: cur.pos + next.len_utf8(),
            label: None,
            id: bare.to_ascii_lowercase(),
        });
    }
    Err(Parse::No)
}

/// Every token in `text`, in order, not overlapping; and where the part of
/// `text` that may still hold (the start of) a token begins (`text.len()`
/// when nothing is held; with `eof`, always).
pub fn find(
    text: &str,
    prev: Option<char>,
    labels: &Labels,
    eof: bool,
) -> (Vec<(usize, Found)>, usize) {
    let mut out = Vec::new();
    let mut before = prev;
    let mut skip_to = 0;
    for (i, c) in text.char_indices() {
        if i >= skip_to {
            match parse(text, i, before, labels, eof) {
                Parse::No => {}
                Parse::More => return (out, i),
                Parse::Found(f) => {
                    skip_to = f.end;
                    out.push((i, f));
                }
            }
        }
        before = Some(c);
    }
    (out, text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels::from_rules(["phone", "credit card"])
    }

    fn one(text: &str) -> Option<(usize, Found)> {
        let (found, held) = find(text, None, &labels(), true);
        assert_eq!(held, text.len());
        assert!(found.len() <= 1, "{found:?}");
        found.into_iter().next()
    }

    #[test]
    fn forms() {
        let id = "k3f9q2abcdef".replace('9', "7");
        for (text, label) in [
            (format!("⟨PHONE:{id}⟩"), Some("PHONE")),
            (format!("<phone:{}>", id.to_uppercase()), Some("PHONE")),
            (format!("⟨ phone : {} ⟩", id.to_uppercase()), Some("PHONE")),
            (format!("PHONE:{id}"), Some("PHONE")),
            (format!("phone：{id}"), Some("PHONE")),
            (format!("《credit card: {id}》"), Some("CREDIT_CARD")),
            (format!("Credit-Card:{id}"), Some("CREDIT_CARD")),
            (format!("⟨TEL:{id}⟩"), Some("TEL")),
            (format!("⟨{id}⟩"), None),
        ] {
            let (at, f) = one(&text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(at, 0, "{text}");
            assert_eq!(f.end, text.len(), "{text}");
            assert_eq!(f.label.as_deref(), label, "{text}");
            assert_eq!(f.id, id, "{text}");
        }
    }

    #[test]
    fn not_tokens() {
        for text in [
            "TEL:k3f7q2abcdef",    // unknown label without a bracket
            "xPHONE:k3f7q2abcdef", // glued to a word
            "PHONE:k3f7q2abcde",   // id too short
            "PHONE:k3f7q2abcdefg", // id too long
            "PHONE:k3f7q2abcde1",  // not base32
            "PHONE:k3f7 q2abcdef", // id split
            "(accomplished.)",     // no close right after
            "Note: something else here",
            "⟨:k3f7q2abcdef⟩",
        ] {
            assert_eq!(one(text), None, "{text}");
        }
    }

    #[test]
    fn positions_and_ends() {
        let text = "call ⟨PHONE:k3f7q2abcdef⟩, or PHONE:aaaaaaaaaaaa.";
        let (found, _) = find(text, None, &labels(), true);
        assert_eq!(found.len(), 2);
        assert_eq!(&text[found[0].0..found[0].1.end], "⟨PHONE:k3f7q2abcdef⟩");
        assert_eq!(&text[found[1].0..found[1].1.end], "PHONE:aaaaaaaaaaaa");
    }

    #[test]
    fn holds_only_what_could_be_a_token() {
        let l = labels();
        for (text, held) in [
            ("hello wor", 9),
            ("hello ph", 6),
            ("hello PHONE: k3f", 6),
            ("see ⟨", 4),
            ("a ⟨PHONE:k3f7q2abcdef", 2),
            ("a ⟨PHONE:k3f7q2abcdef ", 2),
            ("plain text.", 11),
        ] {
            assert_eq!(find(text, None, &l, false).1, held, "{text}");
        }
        assert_eq!(find("hone", Some('p'), &l, false).1, 4);
    }
}
