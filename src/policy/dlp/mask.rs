//! Rewriting text so a masked finding keeps only what the operator allowed.
//!
//! Kept in its own module because overlapping findings (a phone number inside
//! a keyword, two rules on one card) must merge into one deterministic result
//! whose masked parts never leak through another finding's kept prefix.

use serde::Deserialize;

/// How a `mask` finding is rewritten: which characters stay and what replaces the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// The replacement character, one per masked character (default `*`).
    #[serde(default = "default_char", rename = "char")]
    pub mask_char: char,
    /// Characters kept at the start (`138****1234` keeps 3).
    #[serde(default)]
    pub keep_prefix: usize,
    /// Characters kept at the end (`138****1234` keeps 4).
    #[serde(default)]
    pub keep_suffix: usize,
}

fn default_char() -> char {
    '*'
}

impl Default for MaskSpec {
    fn default() -> Self {
        Self {
            mask_char: '*',
            keep_prefix: 0,
            keep_suffix: 0,
        }
    }
}

/// One byte range to overwrite, already aligned to character boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaskRange {
    pub start: usize,
    pub end: usize,
    pub mask_char: char,
}

impl MaskSpec {
    /// The part of `text[start..end]` this spec hides. When the kept prefix
    /// and suffix would together show the whole match, everything is hidden:
    /// a mask that reveals the value is no mask.
    ///
    /// Kept characters are shown only where they cannot join a neighbouring
    /// number: a prefix is kept only when no digit comes just before the
    /// match (one separator, any character but a letter, between them counts
    /// as joined),
    /// a suffix only when no digit comes just after. Otherwise the kept
    /// digits would extend the digits around them, and the text shown could
    /// read as a number the scan found (or masked) elsewhere: the `dlp_mask`
    /// and `message_path` fuzz targets built such inputs out of phone numbers
    /// written next to card numbers.
    pub(crate) fn range(&self, text: &str, start: usize, end: usize) -> Option<MaskRange> {
        let span = text.get(start..end)?;
        let n = span.chars().count();
        if n == 0 {
            return None;
        }
        let before = text.get(..start).unwrap_or_default().chars().rev();
        let after = text.get(end..).unwrap_or_default().chars();
        let keep_prefix = if digit_next(before) {
            0
        } else {
            self.keep_prefix
        };
        let keep_suffix = if digit_next(after) {
            0
        } else {
            self.keep_suffix
        };
        let (skip, take) = if keep_prefix + keep_suffix >= n {
            (0, n)
        } else {
            (keep_prefix, n - keep_prefix - keep_suffix)
        };
        let mut offsets = span
            .char_indices()
            .map(|(i, _)| start + i)
            .chain(std::iter::once(end));
        let from = offsets.nth(skip)?;
        let to = if take == 0 {
            from
        } else {
            offsets.nth(take - 1)?
        };
        Some(MaskRange {
            start: from,
            end: to,
            mask_char: self.mask_char,
        })
    }
}

/// Whether the next character of `chars` is a digit, or a separator (any
/// one character but a letter) and then a digit: whether a number ending (or starting) there touches other
/// digits.
pub(crate) fn digit_next(mut chars: impl Iterator<Item = char>) -> bool {
    match chars.next() {
        Some(c) if c.is_numeric() => true,
        // Any one separator: patterns differ in what they allow between
        // digit groups (spaces, dashes of every width, dots, slashes).
        Some(c) if !c.is_alphabetic() => chars.next().is_some_and(char::is_numeric),
        _ => false,
    }
}

/// Applies `ranges` to `text`. Overlapping ranges merge (the earlier range's
/// mask character wins), so no character is ever revealed by overlap.
pub(crate) fn apply(text: &str, mut ranges: Vec<MaskRange>) -> String {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    let mut iter = ranges.into_iter().peekable();
    while let Some(mut r) = iter.next() {
        while let Some(next) = iter.peek() {
            if next.start > r.end {
                break;
            }
            r.end = r.end.max(next.end);
            iter.next();
        }
        let start = r.start.max(pos);
        if start >= r.end {
            continue;
        }
        out.push_str(text.get(pos..start).unwrap_or_default());
        let hidden = text.get(start..r.end).map_or(0, |s| s.chars().count());
        out.extend(std::iter::repeat_n(r.mask_char, hidden));
        pos = r.end;
    }
    out.push_str(text.get(pos..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(text: &str, spec: MaskSpec, start: usize, end: usize) -> String {
        apply(text, spec.range(text, start, end).into_iter().collect())
    }

    #[test]
    fn partial_phone_mask() {
        let spec = MaskSpec {
            mask_char: '*',
            keep_prefix: 3,
            keep_suffix: 4,
        };
        assert_eq!(mask("tel 13812341234.", spec, 4, 15), "tel 138****1234.");
    }

    #[test]
    fn full_mask_counts_characters_not_bytes() {
        assert_eq!(mask("是机密吗", MaskSpec::default(), 3, 9), "是**吗");
        let hash = MaskSpec {
            mask_char: '#',
            ..MaskSpec::default()
        };
        assert_eq!(mask("a-b", hash, 0, 3), "###");
    }

    #[test]
    fn keeping_everything_masks_everything() {
        let spec = MaskSpec {
            mask_char: '*',
            keep_prefix: 3,
            keep_suffix: 4,
        };
        assert_eq!(mask("abc123", spec, 0, 6), "******");
    }

    #[test]
    fn overlapping_ranges_merge() {
        let text = "0123456789";
        let a = MaskRange {
            start: 1,
            end: 5,
            mask_char: '*',
        };
        let b = MaskRange {
            start: 3,
            end: 8,
            mask_char: '#',
        };
        assert_eq!(apply(text, vec![b, a]), "0*******89");
        let inner = MaskRange {
            start: 2,
            end: 3,
            mask_char: '#',
        };
        assert_eq!(apply(text, vec![a, inner]), "0****56789");
    }
}
