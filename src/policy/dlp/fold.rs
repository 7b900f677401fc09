//! What DLP (and command detection) reads: a folded copy of the text, with a
//! map back to the original.
//!
//! Folding defeats the cheap evasions: full-width digits and letters
//! (`１３８…`, `ＡＫＩＡ…`), zero-width and other invisible characters between
//! digits (`138\u{200b}1234…`), bidi controls, soft hyphens. The fold is:
//!
//! 1. drop every default-ignorable code point ([`is_ignorable`]: Unicode
//!    `Cf`, variation selectors, the Hangul fillers, the combining grapheme
//!    joiner, tags): they render as nothing, so a reader sees the value whole;
//! 2. NFKC on what is left.
//!
//! Detection runs on the folded text. Every finding is mapped back to the
//! original characters it came from ([`Folded::span`]), so `dlp scan`
//! reports byte offsets into the original, and masking replaces exactly the
//! original characters (a full-width digit becomes one `*`, a zero-width
//! space inside a masked number is masked with it).
//!
//! Cost: text that folding leaves unchanged (ASCII, CJK ideographs, most
//! accented Latin) is checked and used as it is, without a copy. Otherwise
//! unchanged runs are copied whole and only the characters that change go
//! through NFKC one segment at a time; a segment starts at a character that
//! nothing before it can compose with, so segment by segment is the same as
//! NFKC of the whole text.

use std::borrow::Cow;
use std::sync::LazyLock;

use unicode_normalization::char::{canonical_combining_class, decompose_compatible};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// Default-ignorable code points (DerivedCoreProperties `Default_Ignorable_Code_Point`,
/// Unicode 16) plus every `Cf` character, sorted and disjoint. Generated from
/// the Unicode Character Database: `Cf` ∪ `Other_Default_Ignorable_Code_Point`
/// ∪ `Variation_Selector`.
const IGNORABLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `c` is dropped by the fold: a format character (`Cf`) or another
/// default-ignorable code point.
pub fn is_ignorable(c: char) -> bool {
    // The wide gaps of the table (CJK among them) need no search.
    if c < '\u{AD}'
        || ('\u{2070}'..'\u{3164}').contains(&c)
        || ('\u{3165}'..'\u{FE00}').contains(&c)
    {
        return false;
    }
    IGNORABLE
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The folded form of `text` (ignorables dropped, then NFKC), borrowed when
/// folding changes nothing. Commands are detected on this, like DLP.
pub fn fold(text: &str) -> Cow<'_, str> {
    Folded::new(text, Keep::NONE).text
}

/// Full-width punctuation a policy cannot tell from its ASCII form, so the
/// fold may leave it as it is (a copy of the text is then often avoided:
/// Chinese text is full of `，：（）！？`). Bit `i` is U+FF00 + `i`.
///
/// A character `u` is kept only when it and its NFKC form `a` (one ASCII
/// punctuation character) are interchangeable for every rule: every regex
/// class holds both or neither, no regex literal, trigger or keyword holds
/// either, and `a` is not a word character, a number separator (space, `-`,
/// `.`) or a base a combining mark composes with (`<`, `=`, `>`). Both are
/// non-word, non-digit characters of one character each, so boundaries,
/// digit windows, validators and mask lengths see the same thing. The scan
/// is then the same as on the fully folded text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Keep(u128);

impl Keep {
    /// Fold everything.
    pub const NONE: Keep = Keep(0);

    /// The characters that may be kept, with their NFKC forms.
    pub fn candidates() -> impl Iterator<Item = (char, char)> {
        ('\u{FF01}'..='\u{FF5E}').filter_map(|u| {
            let a = char::from_u32(u as u32 - 0xFEE0)?;
            let excluded =
                a.is_ascii_alphanumeric() || matches!(a, '_' | ' ' | '-' | '.' | '<' | '=' | '>');
            (!excluded).then_some((u, a))
        })
    }

    /// Adds `u`, one of the [`Keep::candidates`].
    pub fn with(self, u: char) -> Keep {
        Keep(self.0 | 1 << (u as u32 - 0xFF00))
    }

    pub fn has(self, c: char) -> bool {
        let d = (c as u32).wrapping_sub(0xFF00);
        d < 128 && self.0 >> d & 1 == 1
    }
}

/// Two properties per BMP character, looked up on every non-ASCII character
/// outside U+4000..U+9FFF: 8 KiB each, computed once.
struct Bmp {
    inert: Box<[u64]>,
    starts: Box<[u64]>,
}

static BMP: LazyLock<Bmp> = LazyLock::new(|| {
    let mut inert = vec![0u64; 1024];
    let mut starts = vec![0u64; 1024];
    for cp in 0..0x10000u32 {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        let bit = 1u64 << (cp & 63);
        if compute_inert(c) {
            inert[cp as usize >> 6] |= bit;
        }
        if compute_starts(c) {
            starts[cp as usize >> 6] |= bit;
        }
    }
    Bmp {
        inert: inert.into_boxed_slice(),
        starts: starts.into_boxed_slice(),
    }
});

/// Builds the lookup tables now rather than on the first scan.
pub(super) fn warm() {
    LazyLock::force(&BMP);
}

fn lookup(table: &[u64], c: char) -> Option<bool> {
    let cp = c as usize;
    table.get(cp >> 6).map(|w| w >> (cp & 63) & 1 == 1)
}

/// A character that folding leaves alone and that starts a segment.
fn inert(bmp: &Bmp, c: char) -> bool {
    c.is_ascii() || lookup(&bmp.inert, c).unwrap_or_else(|| compute_inert(c))
}

fn compute_inert(c: char) -> bool {
    c.is_ascii()
        || !is_ignorable(c)
            && canonical_combining_class(c) == 0
            && is_nfkc_quick(std::iter::once(c)) == IsNormalized::Yes
}

/// Whether a new NFKC segment starts at `c`: nothing before it can compose
/// with it or be reordered around it (ccc 0, not `Maybe`, and the same for
/// the first character of its compatibility decomposition).
fn starts_segment(bmp: &Bmp, c: char) -> bool {
    c.is_ascii() || lookup(&bmp.starts, c).unwrap_or_else(|| compute_starts(c))
}

pub(super) fn compute_starts(c: char) -> bool {
    let safe = |c: char| {
        canonical_combining_class(c) == 0
            && is_nfkc_quick(std::iter::once(c)) != IsNormalized::Maybe
    };
    let mut first = None;
    decompose_compatible(c, |d| {
        first.get_or_insert(d);
    });
    c.is_ascii() || safe(c) && first.is_none_or(safe)
}

/// A lead byte of a character that needs a look: not ASCII, not a
/// continuation byte, not U+4000..U+9FFF (lead bytes E4..E9: CJK ideographs
/// and Yijing symbols, all inert).
fn needs_look(b: u8) -> bool {
    (b >= 0xC0) & (b.wrapping_sub(0xE4) > 5)
}

/// Position of the first character at or after `from` that folding may
/// change: an ignorable, or a character that is neither [`inert`] nor kept.
/// Chunks of 16 bytes with no lead byte worth a look are skipped with a
/// branch-free test the compiler vectorises.
fn next_change(bmp: &Bmp, keep: Keep, text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let chunk = |c: &[u8]| c.iter().fold(false, |acc, &b| acc | needs_look(b));
        i += match rest.chunks_exact(16).position(chunk) {
            Some(k) => k * 16,
            None => rest.len() - rest.len() % 16,
        };
        let end = bytes.len().min(i + 16);
        let Some(j) = bytes[i..end].iter().position(|&b| needs_look(b)) else {
            i = end;
            continue;
        };
        i += j;
        if is_cjk_punctuation(bytes, i) {
            i += 3;
            continue;
        }
        let c = decode(bytes, i);
        if !inert(bmp, c) && !keep.has(c) {
            return Some(i);
        }
        i += c.len_utf8();
    }
    None
}

/// 、。〈〉《》「」『』【】 and the rest of U+3001..U+3029 (E3 80 81..A9): inert,
/// and the most common non-ASCII characters of Chinese text after ideographs.
fn is_cjk_punctuation(bytes: &[u8], i: usize) -> bool {
    bytes[i] == 0xE3
        && bytes.get(i + 1) == Some(&0x80)
        && matches!(bytes.get(i + 2), Some(0x81..=0xA9))
}

/// The character whose lead byte is at `i` (of valid UTF-8).
fn decode(bytes: &[u8], i: usize) -> char {
    let b = |k: usize| u32::from(bytes.get(i + k).copied().unwrap_or(0) & 0x3F);
    let lead = u32::from(bytes[i]);
    let cp = match lead {
        0xF0.. => (lead & 0x07) << 18 | b(1) << 12 | b(2) << 6 | b(3),
        0xE0.. => (lead & 0x0F) << 12 | b(1) << 6 | b(2),
        _ => (lead & 0x1F) << 6 | b(1),
    };
    char::from_u32(cp).unwrap_or('\0')
}

/// A piece of the folded text that is not a byte-for-byte copy of the
/// original: `fold` came from `orig`. Dropped characters have an empty `fold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    fold: (usize, usize),
    orig: (usize, usize),
}

/// A folded text and the map back to the original's byte offsets. Between
/// pieces the folded text is a copy of the original.
#[derive(Debug)]
pub(super) struct Folded<'a> {
    /// The folded text.
    pub text: Cow<'a, str>,
    pieces: Vec<Piece>,
}

impl<'a> Folded<'a> {
    /// Folds `text`, leaving the characters of `keep` as they are.
    pub fn new(text: &'a str, keep: Keep) -> Self {
        let bmp = &*BMP;
        let Some(first) = next_change(bmp, keep, text, 0) else {
            return Folded {
                text: Cow::Borrowed(text),
                pieces: Vec::new(),
            };
        };
        let mut b = Builder {
            bmp,
            keep,
            text,
            out: String::with_capacity(text.len() + 8),
            pieces: Vec::new(),
            seg: Segment::default(),
        };
        let mut done = 0;
        let mut at = Some(first);
        while let Some(change) = at {
            // Unless a segment starts at the change, the character before it
            // may compose with it: refold that one too.
            let c = text[change..].chars().next().unwrap_or('\0');
            let from = if !is_ignorable(c) && starts_segment(bmp, c) {
                change
            } else {
                text[done..change]
                    .char_indices()
                    .next_back()
                    .map_or(change, |(i, _)| done + i)
            };
            b.out.push_str(&text[done..from]);
            done = b.segments(from);
            at = next_change(bmp, keep, text, done);
        }
        b.out.push_str(&text[done..]);
        Folded {
            text: Cow::Owned(b.out),
            pieces: b.pieces,
        }
    }

    /// The original byte range `[start, end)` that the folded range came
    /// from: widened to whole original characters, without dropped characters
    /// at its edges.
    pub fn span(&self, start: usize, end: usize) -> (usize, usize) {
        if self.pieces.is_empty() {
            return (start, end);
        }
        let s = self.start(start);
        if end <= start {
            return (s, s);
        }
        (s, self.end(end).max(s))
    }

    fn start(&self, f: usize) -> usize {
        let i = self.pieces.partition_point(|p| p.fold.1 <= f);
        match self.pieces.get(i) {
            Some(p) if p.fold.0 <= f => p.orig.0,
            _ => match i.checked_sub(1).map(|j| self.pieces[j]) {
                Some(q) => q.orig.1 + (f - q.fold.1),
                None => f,
            },
        }
    }

    fn end(&self, f: usize) -> usize {
        let i = self.pieces.partition_point(|p| p.fold.1 < f);
        match self.pieces.get(i) {
            Some(p) if p.fold.0 < f => p.orig.1,
            _ => match i.checked_sub(1).map(|j| self.pieces[j]) {
                Some(q) => q.orig.1 + (f - q.fold.1),
                None => f,
            },
        }
    }
}

/// The segment being collected: its original span, how many characters it
/// has (ignorables aside), and whether ignorables were dropped inside it.
#[derive(Debug, Default)]
struct Segment {
    span: (usize, usize),
    chars: usize,
    dropped: bool,
}

/// The slow path of [`Folded::new`]: folds segment by segment.
struct Builder<'a> {
    bmp: &'a Bmp,
    keep: Keep,
    text: &'a str,
    out: String,
    pieces: Vec<Piece>,
    seg: Segment,
}

impl Builder<'_> {
    /// Folds from `from` (a segment start) until the next character that is
    /// copied unchanged; returns its position (or the end of the text).
    fn segments(&mut self, from: usize) -> usize {
        let mut drops: Option<(usize, usize)> = None;
        let mut first = true;
        for (off, c) in self.text[from..].char_indices() {
            let i = from + off;
            let end = i + c.len_utf8();
            if is_ignorable(c) {
                drops = Some(drops.map_or((i, end), |(s, _)| (s, end)));
                continue;
            }
            if !first && starts_segment(self.bmp, c) {
                // The segment ends; ignorables after it stand alone.
                self.flush();
                self.dropped(drops.take());
                if inert(self.bmp, c) || self.keep.has(c) {
                    return i;
                }
            } else if drops.is_some() {
                if self.seg.chars == 0 {
                    self.dropped(drops.take());
                } else {
                    // `c` continues the segment: the ignorables are inside it.
                    drops = None;
                    self.seg.dropped = true;
                }
            }
            first = false;
            if self.seg.chars == 0 {
                self.seg.span.0 = i;
            }
            self.seg.chars += 1;
            self.seg.span.1 = end;
        }
        self.flush();
        self.dropped(drops);
        self.text.len()
    }

    /// Records ignorables dropped between segments.
    fn dropped(&mut self, orig: Option<(usize, usize)>) {
        if let Some(orig) = orig {
            let at = self.out.len();
            self.pieces.push(Piece {
                fold: (at, at),
                orig,
            });
        }
    }

    /// Writes the current segment's NFKC form, with a piece when it differs
    /// from the original.
    fn flush(&mut self) {
        if self.seg.chars == 0 {
            return;
        }
        let at = self.out.len();
        let (s, e) = self.seg.span;
        let original = &self.text[s..e];
        let single = (self.seg.chars == 1 && !self.seg.dropped)
            .then(|| original.chars().next())
            .flatten();
        match single {
            Some(c) if ('\u{FF01}'..='\u{FF5E}').contains(&c) => {
                self.out
                    .push(char::from_u32(c as u32 - 0xFEE0).unwrap_or(c));
            }
            Some(c) if inert(self.bmp, c) => {
                self.out.push_str(original);
                self.seg = Segment::default();
                return;
            }
            _ => self
                .out
                .extend(original.chars().filter(|c| !is_ignorable(*c)).nfkc()),
        }
        if self.seg.dropped || self.out[at..] != *original {
            self.pieces.push(Piece {
                fold: (at, self.out.len()),
                orig: (s, e),
            });
        }
        self.seg = Segment::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(text: &'a str, want: &str) -> Folded<'a> {
        let f = Folded::new(text, Keep::NONE);
        assert_eq!(f.text, want, "{text:?}");
        let whole: String = text.chars().filter(|c| !is_ignorable(*c)).nfkc().collect();
        assert_eq!(
            f.text, whole,
            "segment-wise fold equals NFKC of the whole: {text:?}"
        );
        f
    }

    #[test]
    fn unchanged_text_is_borrowed() {
        for t in [
            "",
            "plain ascii 123",
            "中文不变。",
            "café",
            "한국어",
            "ελληνικά",
        ] {
            assert!(
                matches!(Folded::new(t, Keep::NONE).text, Cow::Borrowed(_)),
                "{t}"
            );
        }
        assert!(matches!(
            Folded::new("中文，变", Keep::NONE).text,
            Cow::Owned(_)
        ));
    }

    #[test]
    fn full_width_and_ignorables_fold() {
        check("１３８\u{200b}1234\u{feff}5678", "13812345678");
        check("ＡＫＩＡ", "AKIA");
        check("／reboot", "/reboot");
        check("a\u{00ad}b\u{2060}c\u{202e}d", "abcd");
        check("e\u{301}", "é");
        check("e\u{200b}\u{301}x", "éx");
        check("ｶﾞ", "ガ");
        check("x\u{2026}y", "x...y");
        check("\u{3000}１", " 1");
        check("\u{200b}", "");
        check("\u{200b}a\u{200b}", "a");
        check("①②", "12");
        check("Ａ\u{30a}", "Å");
        check("中\u{FE0F}文", "中文");
    }

    #[test]
    fn spans_map_back_to_original_characters() {
        let text = "tel １３８\u{200b}1234５６７８!";
        let f = check(text, "tel 13812345678!");
        // The whole number: from the first full-width digit to the last.
        let (s, e) = f.span(4, 15);
        assert_eq!(&text[s..e], "１３８\u{200b}1234５６７８");
        // A start after a dropped character excludes it; an end before one too.
        let (s, e) = f.span(7, 11);
        assert_eq!(&text[s..e], "1234");
        let (s, e) = f.span(4, 7);
        assert_eq!(&text[s..e], "１３８");
        // Unchanged text around the pieces maps one to one.
        assert_eq!(f.span(0, 3), (0, 3));
        assert_eq!(f.span(15, 16), (text.len() - 1, text.len()));
        // A range inside one folded character widens to the whole character.
        let text = "a…b";
        let f = check(text, "a...b");
        assert_eq!(f.span(2, 3), (1, 4));
        assert_eq!(f.span(0, 1), (0, 1));
        assert_eq!(f.span(4, 5), (4, 5));
    }

    /// The byte-level shortcut for U+3001..U+3029 agrees with the tables.
    #[test]
    fn cjk_punctuation_shortcut_is_inert() {
        let bmp = &*BMP;
        for cp in 0x3001..=0x3029 {
            let c = char::from_u32(cp).unwrap();
            assert!(inert(bmp, c), "{c:?}");
        }
        for c in ['\u{3000}', '\u{3036}', '\u{FF0C}', '\u{2026}', '\u{200B}'] {
            assert!(!inert(bmp, c), "{c:?}");
        }
    }

    #[test]
    fn ignorable_table_is_sorted_and_disjoint() {
        for w in IGNORABLE.windows(2) {
            assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0, "{w:?}");
        }
        for c in [
            '\u{200b}',
            '\u{200d}',
            '\u{2060}',
            '\u{feff}',
            '\u{ad}',
            '\u{180e}',
            '\u{e0041}',
        ] {
            assert!(is_ignorable(c), "{c:?}");
        }
        for c in ['a', ' ', '\u{3000}', '中', '\u{301}', '\u{ac}', '\u{2010}'] {
            assert!(!is_ignorable(c), "{c:?}");
        }
    }
}
