//! Cheap triggers for DLP patterns: which literal (in the shared automaton)
//! or how many ASCII digits a text must contain before a pattern's regex is
//! worth running, derived soundly from the regex's syntax tree; and the
//! ASCII regex dialect DLP patterns are written in.

use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// How a pattern decides whether it needs to run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trigger {
    /// One of its literals (in the shared automaton) must appear.
    Literals,
    /// At least `min` ASCII digits must appear; with `max_len`, within that
    /// many bytes, and the regex then runs only on those windows.
    Digits { min: usize, max_len: Option<usize> },
    /// No usable trigger: runs on every text.
    Always,
}

/// Rewrites `\d` to `[0-9]` and `\b`/`\B` to their ASCII forms (see the
/// module doc), leaving escapes, classes and everything else as written.
pub(super) fn ascii_dialect(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    let mut depth = 0usize;
    let mut class_open = false;
    while let Some(c) = chars.next() {
        let opened = class_open;
        class_open = false;
        match c {
            '\\' => match chars.next() {
                Some('d') if depth > 0 => out.push_str("0-9"),
                Some('d') => out.push_str("[0-9]"),
                Some(b @ ('b' | 'B')) if depth == 0 && chars.peek() != Some(&'{') => {
                    out.push_str("(?-u:\\");
                    out.push(b);
                    out.push(')');
                }
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '[' => {
                depth += 1;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                class_open = true;
            }
            ']' if depth > 0 && !opened => {
                depth -= 1;
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Works out a pattern's trigger and the literals it needs in the automaton.
/// Anything the analysis cannot prove falls back to [`Trigger::Always`].
pub(super) fn derive_trigger(source: &str) -> (Trigger, Vec<Vec<u8>>) {
    let Ok(hir) = regex_syntax::Parser::new().parse(source) else {
        return (Trigger::Always, Vec::new());
    };
    let lits = required_literals(&hir).filter(|l| l.set.iter().all(|s| !s.is_empty()));
    let min_len = lits
        .as_ref()
        .map_or(0, |l| l.set.iter().map(Vec::len).min().unwrap_or(0));
    let digits = min_digits(&hir);
    // Windows are exact only when the regex looks at nothing but ASCII word
    // boundaries: slices are cut where those see the same thing.
    let windowable = hir.properties().look_set().iter().all(|l| {
        matches!(
            l,
            Look::WordAscii
                | Look::WordAsciiNegate
                | Look::WordStartAscii
                | Look::WordEndAscii
                | Look::WordStartHalfAscii
                | Look::WordEndHalfAscii
        )
    });
    let max_len = hir.properties().maximum_len().filter(|_| windowable);
    // Preference: digit windows (regex runs on a few bytes), then a literal of
    // two or more bytes, then a bare digit count, then a one-byte literal.
    if digits >= 4 && max_len.is_some() {
        return (
            Trigger::Digits {
                min: digits,
                max_len,
            },
            Vec::new(),
        );
    }
    if let Some(l) = lits.filter(|_| min_len >= 2 || digits < 4) {
        return (Trigger::Literals, l.set);
    }
    if digits >= 4 {
        return (
            Trigger::Digits {
                min: digits,
                max_len,
            },
            Vec::new(),
        );
    }
    (Trigger::Always, Vec::new())
}

/// Whether every match of `source` has a bounded length.
pub(super) fn is_bounded(source: &str) -> bool {
    regex_syntax::Parser::new()
        .parse(source)
        .is_ok_and(|hir| hir.properties().maximum_len().is_some())
}

/// Whether the regex cannot tell `u` (a non-ASCII, non-word character) from
/// `a` (an ASCII non-word character): every class holds both or neither and
/// no literal holds either. Byte classes (`(?-u)`) see UTF-8 bytes, so they
/// must hold neither `a` nor any non-ASCII byte.
pub(super) fn treats_alike(hir: &Hir, u: char, a: char) -> bool {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => true,
        HirKind::Literal(lit) => {
            let mut buf = [0u8; 4];
            let u = u.encode_utf8(&mut buf).as_bytes();
            !lit.0.contains(&(a as u8)) && !lit.0.windows(u.len()).any(|w| w == u)
        }
        HirKind::Class(Class::Unicode(c)) => {
            let has = |ch: char| c.iter().any(|r| r.start() <= ch && ch <= r.end());
            has(u) == has(a)
        }
        HirKind::Class(Class::Bytes(c)) => c
            .iter()
            .all(|r| r.end() < 0x80 && !(r.start()..=r.end()).contains(&(a as u8))),
        HirKind::Capture(cap) => treats_alike(&cap.sub, u, a),
        HirKind::Repetition(rep) => treats_alike(&rep.sub, u, a),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => {
            parts.iter().all(|h| treats_alike(h, u, a))
        }
    }
}

/// Literals of which every match contains at least one; `exact` when the
/// node matches exactly one of them and nothing else.
struct Lits {
    set: Vec<Vec<u8>>,
    exact: bool,
}

const MAX_LITERALS: usize = 64;
const MAX_CLASS_CHARS: usize = 8;

fn required_literals(hir: &Hir) -> Option<Lits> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(Lits {
            set: vec![Vec::new()],
            exact: true,
        }),
        HirKind::Literal(lit) => Some(Lits {
            set: vec![lit.0.to_vec()],
            exact: true,
        }),
        HirKind::Class(class) => class_literals(class).map(|set| Lits { set, exact: true }),
        HirKind::Capture(cap) => required_literals(&cap.sub),
        HirKind::Repetition(rep) if rep.min == 0 => None,
        HirKind::Repetition(rep) => {
            let mut lits = required_literals(&rep.sub)?;
            lits.exact &= rep.max == Some(1) && rep.min == 1;
            Some(lits)
        }
        HirKind::Alternation(alts) => {
            let mut set = Vec::new();
            let mut exact = true;
            for alt in alts {
                let l = required_literals(alt)?;
                exact &= l.exact;
                set.extend(l.set);
                if set.len() > MAX_LITERALS {
                    return None;
                }
            }
            Some(Lits { set, exact })
        }
        HirKind::Concat(parts) => {
            let mut best: Option<Vec<Vec<u8>>> = None;
            let mut run: Vec<Vec<u8>> = vec![Vec::new()];
            let mut all_exact = true;
            let consider = |cand: Vec<Vec<u8>>, best: &mut Option<Vec<Vec<u8>>>| {
                let score = |s: &Vec<Vec<u8>>| {
                    (
                        s.iter().map(Vec::len).min().unwrap_or(0),
                        usize::MAX - s.len(),
                    )
                };
                if best.as_ref().is_none_or(|b| score(&cand) > score(b)) {
                    *best = Some(cand);
                }
            };
            for part in parts {
                match required_literals(part) {
                    Some(l) if l.exact && run.len() * l.set.len() <= MAX_LITERALS => {
                        run = run
                            .iter()
                            .flat_map(|a| l.set.iter().map(move |b| [a.as_slice(), b].concat()))
                            .collect();
                    }
                    Some(l) => {
                        all_exact = false;
                        consider(std::mem::replace(&mut run, vec![Vec::new()]), &mut best);
                        if l.exact {
                            run = l.set;
                        } else {
                            consider(l.set, &mut best);
                        }
                    }
                    None => {
                        all_exact = false;
                        consider(std::mem::replace(&mut run, vec![Vec::new()]), &mut best);
                    }
                }
            }
            if all_exact {
                return Some(Lits {
                    set: run,
                    exact: true,
                });
            }
            consider(run, &mut best);
            best.map(|set| Lits { set, exact: false })
        }
    }
}

fn class_literals(class: &Class) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    match class {
        Class::Unicode(c) => {
            for r in c.iter() {
                for ch in r.start()..=r.end() {
                    out.push(ch.to_string().into_bytes());
                    if out.len() > MAX_CLASS_CHARS {
                        return None;
                    }
                }
            }
        }
        Class::Bytes(c) => {
            for r in c.iter() {
                for b in r.start()..=r.end() {
                    out.push(vec![b]);
                    if out.len() > MAX_CLASS_CHARS {
                        return None;
                    }
                }
            }
        }
    }
    Some(out)
}

/// A set of byte values.
#[derive(Debug, Clone)]
pub(super) struct ByteSet([bool; 256]);

impl Default for ByteSet {
    fn default() -> Self {
        Self([false; 256])
    }
}

impl ByteSet {
    pub(super) fn contains(&self, b: u8) -> bool {
        self.0[usize::from(b)]
    }

    fn insert_range(&mut self, from: u8, to: u8) {
        for b in from..=to {
            self.0[usize::from(b)] = true;
        }
    }

    pub(super) fn union(&mut self, other: &ByteSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }
}

/// Every byte any match of `source` can contain (a superset: a non-ASCII
/// character counts as every byte from 0x80 up). `None` when it does not parse.
pub(super) fn match_bytes(source: &str) -> Option<ByteSet> {
    let hir = regex_syntax::Parser::new().parse(source).ok()?;
    let mut set = ByteSet::default();
    add_match_bytes(&hir, &mut set);
    Some(set)
}

fn add_match_bytes(hir: &Hir, set: &mut ByteSet) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => lit.0.iter().for_each(|&b| set.insert_range(b, b)),
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.iter() {
                let (from, to) = (u32::from(r.start()), u32::from(r.end()));
                if from < 0x80 {
                    // Both below 0x80 here, so the casts are exact.
                    set.insert_range(from as u8, to.min(0x7f) as u8);
                }
                if to >= 0x80 {
                    set.insert_range(0x80, 0xff);
                }
            }
        }
        HirKind::Class(Class::Bytes(c)) => {
            c.iter().for_each(|r| set.insert_range(r.start(), r.end()))
        }
        HirKind::Capture(cap) => add_match_bytes(&cap.sub, set),
        HirKind::Repetition(rep) => add_match_bytes(&rep.sub, set),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => {
            parts.iter().for_each(|p| add_match_bytes(p, set))
        }
    }
}

/// The fewest ASCII digits any match must contain.
fn min_digits(hir: &Hir) -> usize {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => 0,
        HirKind::Literal(lit) => lit.0.iter().filter(|b| b.is_ascii_digit()).count(),
        HirKind::Class(Class::Unicode(c)) => usize::from(
            !c.ranges().is_empty() && c.iter().all(|r| r.start() >= '0' && r.end() <= '9'),
        ),
        HirKind::Class(Class::Bytes(c)) => usize::from(
            !c.ranges().is_empty() && c.iter().all(|r| r.start() >= b'0' && r.end() <= b'9'),
        ),
        HirKind::Capture(cap) => min_digits(&cap.sub),
        HirKind::Repetition(rep) => (rep.min as usize).saturating_mul(min_digits(&rep.sub)),
        HirKind::Concat(parts) => parts.iter().map(min_digits).fold(0, usize::saturating_add),
        HirKind::Alternation(alts) => alts.iter().map(min_digits).min().unwrap_or(0),
    }
}

/// Positions of ASCII digits. Most text has few, so 16-byte chunks without
/// any are skipped with a branch-free test the compiler vectorises, and the
/// list is allocated once, at the first digit, with room for a typical message.
pub(super) fn digit_positions(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut chunks = bytes.chunks_exact(16);
    let mut base = 0;
    for chunk in &mut chunks {
        if chunk
            .iter()
            .fold(false, |acc, &b| acc | (b.wrapping_sub(b'0') < 10))
        {
            if out.capacity() == 0 {
                out.reserve(32);
            }
            out.extend(
                chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.is_ascii_digit())
                    .map(|(i, _)| base + i),
            );
        }
        base += 16;
    }
    let rest = chunks.remainder();
    out.extend(
        rest.iter()
            .enumerate()
            .filter(|(_, b)| b.is_ascii_digit())
            .map(|(i, _)| base + i),
    );
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The slices a digit-triggered pattern must search: around every group of
/// `min` digits that fits in `max_len` bytes and in one segment (any match
/// contains such a group; `segments` numbers each digit's segment, see
/// `DigitSegments`), widened to cut points where an ASCII word boundary sees the same
/// neighbour inside the slice as in the whole text, and merged.
pub(super) fn windows(
    text: &str,
    digits: &[usize],
    segments: &[usize],
    min: usize,
    max_len: usize,
) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut raw: Vec<(usize, usize)> = Vec::new();
    for (at, group) in digits.windows(min).enumerate() {
        let (first, last) = (group[0], group[min - 1]);
        if last - first >= max_len || segments[at] != segments[at + min - 1] {
            continue;
        }
        let start = (last + 1).saturating_sub(max_len);
        let end = (first + max_len).min(bytes.len());
        match raw.last_mut() {
            Some(prev) if start <= prev.1 => prev.1 = prev.1.max(end),
            _ => raw.push((start, end)),
        }
    }
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(raw.len());
    for (mut start, mut end) in raw {
        while start > 0 && (is_word_byte(bytes[start - 1]) || !text.is_char_boundary(start)) {
            start -= 1;
        }
        while end < bytes.len() && (is_word_byte(bytes[end]) || !text.is_char_boundary(end)) {
            end += 1;
        }
        match out.last_mut() {
            Some(prev) if start <= prev.1 => prev.1 = prev.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}
