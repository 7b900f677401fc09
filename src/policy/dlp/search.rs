//! Turning a pattern's regex matches into findings.
//!
//! Two rules on top of the regex:
//!
//! * **Numbers are whole.** In the ASCII dialect a match never cuts a run of
//!   digits: its first character is not a digit right after a digit, and its
//!   last is not a digit right before one. So an 18-digit order number holds
//!   no card and a 12-digit run no phone number, while a number glued to
//!   letters (`tel13812345678`) is still found: `\b` is not needed around
//!   numbers, and the shipped patterns do without it.
//!   A number glued to letters inside a long hexadecimal token (a commit
//!   hash, a digest, a UUID: 16 or more characters of `[0-9a-fA-F-]`) is
//!   part of that token, not a number.
//! * **A refused candidate is retried.** When a match is refused (by that
//!   rule, by its validator or by the caller), shorter matches at the same
//!   start are tried, each ending before an ASCII non-word character (so
//!   `\b` and `$` see the same there as in the whole text), and then the
//!   next start positions. A card followed by one more digit group
//!   (`4111 1111 1111 1111 7`) or preceded by one is found, where the greedy
//!   17-digit match alone fails Luhn. Later starts are tried only for
//!   patterns of bounded length (each retry then costs a bounded search);
//!   an unbounded pattern goes on after the refused match, as before.

use regex::Regex;

/// Shorter ends tried for one refused candidate.
const MAX_SHORTER: usize = 8;

/// How to search one pattern.
pub(super) struct Search<'r> {
    pub regex: &'r Regex,
    /// Apply "numbers are whole" (the ASCII dialect).
    pub whole_numbers: bool,
    /// The pattern's matches have a bounded length.
    pub bounded: bool,
}

fn digit(bytes: &[u8], i: usize) -> bool {
    bytes.get(i).is_some_and(u8::is_ascii_digit)
}

/// Whether a match starting at `s` starts inside a digit run.
fn splits_left(bytes: &[u8], s: usize) -> bool {
    s > 0 && digit(bytes, s) && digit(bytes, s - 1)
}

/// Whether a match ending at `e` ends inside a digit run.
fn splits_right(bytes: &[u8], e: usize) -> bool {
    e > 0 && digit(bytes, e - 1) && digit(bytes, e)
}

/// When the match `[s, e)` starts or ends with a digit glued to a letter
/// and lies in a hexadecimal token (16 or more characters of `[0-9a-fA-F-]`
/// with at least one hex letter: a digest, a commit hash, a UUID), the end
/// of that token.
fn hex_token_end(bytes: &[u8], s: usize, e: usize) -> Option<usize> {
    let letter = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_alphabetic);
    let glued_left = s > 0 && letter(s - 1) && digit(bytes, s);
    let glued_right = e > 0 && letter(e) && digit(bytes, e - 1);
    if !(glued_left || glued_right) {
        return None;
    }
    let part = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-';
    let start = bytes[..s]
        .iter()
        .rposition(|b| !part(b))
        .map_or(0, |i| i + 1);
    let end = bytes[e..]
        .iter()
        .position(|b| !part(b))
        .map_or(bytes.len(), |i| e + i);
    let token = &bytes[start..end];
    let hex = token.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-')
        && token.iter().any(u8::is_ascii_alphabetic);
    (token.len() >= 16 && hex).then_some(end)
}

/// The position after the character at `i`.
fn next_char(text: &str, i: usize) -> usize {
    i + text[i..].chars().next().map_or(1, char::len_utf8)
}

/// The largest cut in `(s, e)`: a position before an ASCII non-word byte.
fn prev_cut(bytes: &[u8], s: usize, e: usize) -> Option<usize> {
    (s + 1..e)
        .rev()
        .find(|&q| bytes[q].is_ascii() && !(bytes[q].is_ascii_alphanumeric() || bytes[q] == b'_'))
}

impl Search<'_> {
    /// Calls `emit(start, end)` for every finding of this pattern that
    /// starts in `text[from..to]` and ends by `to`. `accept` is the
    /// validator (and any check of the caller's) on a candidate's range.
    pub fn run(
        &self,
        text: &str,
        from: usize,
        to: usize,
        accept: impl Fn(usize, usize) -> bool,
        mut emit: impl FnMut(usize, usize),
    ) {
        let hay = &text[..to];
        let bytes = text.as_bytes();
        let mut pos = from;
        while pos <= to {
            let Some(m) = self.regex.find_at(hay, pos) else {
                break;
            };
            let (s, e) = (m.start(), m.end());
            if self.whole_numbers && splits_left(bytes, s) {
                // Every later start inside this digit run splits it too.
                pos = (s..bytes.len())
                    .find(|&i| !digit(bytes, i))
                    .unwrap_or(bytes.len());
                continue;
            }
            if let Some(end) = self
                .whole_numbers
                .then(|| hex_token_end(bytes, s, e))
                .flatten()
            {
                pos = end;
                continue;
            }
            match self.longest_accepted(hay, bytes, s, e, &accept) {
                Some(end) => {
                    emit(s, end);
                    pos = if end > s { end } else { next_char(text, s) };
                }
                None if self.bounded || e == s => pos = next_char(text, s),
                None => pos = e,
            }
        }
    }

    /// The candidate `[s, e)` or the longest shorter match at `s` that is accepted.
    fn longest_accepted(
        &self,
        hay: &str,
        bytes: &[u8],
        s: usize,
        mut e: usize,
        accept: &impl Fn(usize, usize) -> bool,
    ) -> Option<usize> {
        for _ in 0..=MAX_SHORTER {
            if !(self.whole_numbers && splits_right(bytes, e)) && accept(s, e) {
                return Some(e);
            }
            let cut = prev_cut(bytes, s, e)?;
            let m = self.regex.find_at(&hay[..cut], s)?;
            if m.start() != s {
                return None;
            }
            e = m.end();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(regex: &str, text: &str, accept: impl Fn(&str) -> bool) -> Vec<String> {
        let regex = Regex::new(regex).unwrap();
        let bounded = regex_syntax::Parser::new()
            .parse(regex.as_str())
            .unwrap()
            .properties()
            .maximum_len()
            .is_some();
        let search = Search {
            regex: &regex,
            whole_numbers: true,
            bounded,
        };
        let mut out = Vec::new();
        search.run(
            text,
            0,
            text.len(),
            |s, e| accept(&text[s..e]),
            |s, e| out.push(text[s..e].to_string()),
        );
        out
    }

    const CARD: &str = r"(?:[3-6][0-9]{3})(?:[ .-]?[0-9]){9,15}";
    const MOBILE: &str = r"1[3-9][0-9]{9}";

    fn luhn(s: &str) -> bool {
        super::super::validators::luhn(s)
    }

    #[test]
    fn numbers_are_never_cut_out_of_longer_runs() {
        assert!(find(MOBILE, "order 138123456789 shipped", |_| true).is_empty());
        assert!(find(MOBILE, "x213812345678", |_| true).is_empty());
        assert_eq!(find(MOBILE, "tel13812345678", |_| true), ["13812345678"]);
        assert_eq!(find(MOBILE, "13812345678abc", |_| true), ["13812345678"]);
        // A Luhn-valid card inside an 18-digit run is not a card.
        assert!(find(CARD, "no 004111111111111111", luhn).is_empty());
        assert!(find(CARD, "no 41111111111111110000", luhn).is_empty());
        // Inside a hexadecimal token: a digest, not a number.
        for hex in [
            "commit a13812345678f0e9d8c7b6a5",
            "sha e3b0c44298fc1c14b13812345678fb92",
            "id DEADBEEF13812345678",
            "request 0d59c0f2-a159-9245-7761-6556f7e45403",
        ] {
            assert!(find(MOBILE, hex, |_| true).is_empty(), "{hex}");
        }
        // Letters that are not hex, or a short token, are glue.
        assert_eq!(find(MOBILE, "ab13812345678", |_| true), ["13812345678"]);
        assert_eq!(
            find(MOBILE, "mobile13812345678x", |_| true),
            ["13812345678"]
        );
        assert_eq!(
            find(CARD, "4111-1111-1111-1111", luhn),
            ["4111-1111-1111-1111"]
        );
    }

    #[test]
    fn a_refused_grab_is_retried_shorter_and_later() {
        // Greedy: 17 digits, fails Luhn; the 16 before the last group pass.
        assert_eq!(
            find(CARD, "card 4111 1111 1111 1111 7 thanks", luhn),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            find(CARD, "4111-1111-1111-1111-23", luhn),
            ["4111-1111-1111-1111"]
        );
        // Greedy from an earlier group: the card starts one group later.
        assert_eq!(
            find(CARD, "ref 3456 4111 1111 1111 1111", luhn),
            ["4111 1111 1111 1111"]
        );
        // Two cards in a row, the second still found.
        assert_eq!(
            find(CARD, "5500000000000004 4111111111111111", luhn),
            ["5500000000000004", "4111111111111111"]
        );
    }

    #[test]
    fn unbounded_patterns_go_on_after_a_refused_match() {
        assert_eq!(
            find(r"[0-9 ]+", "12 34 56", |s| s == "34 56"),
            Vec::<String>::new()
        );
        assert_eq!(find(r"[0-9]+x", "12x 34x", |s| s == "34x"), ["34x"]);
    }
}
