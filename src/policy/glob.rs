//! Globs for ABAC `resources` and `actions` and RBAC permissions.
//!
//! It is its own module because both `abac` and `rbac` match with it, and
//! neither should import the other to do so.
//!
//! # Semantics
//! - `*` matches any run of characters except `/` (it stays within one path
//!   segment); `**` matches any run, `/` included (`/hooks/**` matches
//!   `/hooks/slack/demo`, not `/hooks`).
//! - A bare `*` or `**` matches everything, as in IAM-style policies: an
//!   author who writes `resources: ["*"]` means every route, although no route
//!   path fits in one segment.
//! - `***` is refused as ambiguous, and so is the empty pattern.
//!
//! Matching is a bit-parallel NFA over bytes, linear in the input length times
//! the pattern length, so no input can make it backtrack exponentially.

/// Why a pattern is not a glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The pattern is empty.
    #[error("empty pattern; write '**' to match everything")]
    Empty,
    /// The pattern contains `***`.
    #[error("invalid glob '{0}': '***' is ambiguous; use '*' (one segment) or '**' (any depth)")]
    TripleStar(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    Byte(u8),
    Star,
    DoubleStar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlobKind {
    /// A bare `*` or `**`: everything.
    Any,
    /// No wildcard: plain equality.
    Exact,
    /// A literal followed by a final `**`: a prefix test.
    Prefix,
    /// A literal followed by a final `*`: a prefix test, then no `/` after it.
    PrefixStar,
    /// Anything else: the literal prefix, then the automaton on the rest.
    General,
}

/// A resource, action or permission glob: `*` within a `/` segment, `**`
/// across, a bare `*` or `**` everything.
#[derive(Debug, Clone)]
pub struct Glob {
    source: Box<str>,
    elems: Box<[Elem]>,
    kind: GlobKind,
    prefix_len: usize,
}

impl Glob {
    /// Compiles `pattern`; errors say what is wrong without panicking.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.contains("***") {
            return Err(GlobError::TripleStar(pattern.to_string()));
        }
        let prefix_len = pattern.find('*').unwrap_or(pattern.len());
        // Only the part from the first wildcard on needs the automaton.
        let elems = elements(&pattern.as_bytes()[prefix_len..]);
        let kind = match elems.as_slice() {
            _ if pattern == "*" || pattern == "**" => GlobKind::Any,
            [] => GlobKind::Exact,
            [Elem::DoubleStar] => GlobKind::Prefix,
            [Elem::Star] => GlobKind::PrefixStar,
            _ => GlobKind::General,
        };
        Ok(Self {
            source: pattern.into(),
            elems: elems.into_boxed_slice(),
            kind,
            prefix_len,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal text before the first wildcard.
    pub fn literal_prefix(&self) -> &str {
        &self.source[..self.prefix_len]
    }

    /// Whether the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.kind == GlobKind::Exact
    }

    /// Whether the pattern is a bare `*` or `**`, which matches everything.
    pub fn matches_everything(&self) -> bool {
        self.kind == GlobKind::Any
    }

    /// Whether `s` matches the whole pattern.
    pub fn is_match(&self, s: &str) -> bool {
        match self.kind {
            GlobKind::Any => true,
            GlobKind::Exact => *self.source == *s,
            GlobKind::Prefix => s.starts_with(self.literal_prefix()),
            GlobKind::PrefixStar => s
                .strip_prefix(self.literal_prefix())
                .is_some_and(|rest| !rest.contains('/')),
            GlobKind::General => {
                let Some(rest) = s.strip_prefix(self.literal_prefix()) else {
                    return false;
                };
                let words = (self.elems.len() + 1).div_ceil(64);
                if words <= 2 {
                    let (mut a, mut b) = ([0u64; 2], [0u64; 2]);
                    self.run(rest.as_bytes(), &mut a[..words], &mut b[..words])
                } else {
                    let (mut a, mut b) = (vec![0u64; words], vec![0u64; words]);
                    self.run(rest.as_bytes(), &mut a, &mut b)
                }
            }
        }
    }

    /// Simulates the pattern as an NFA over bytes: state `i` means "about to
    /// match element `i`".
    fn run<'a>(&self, input: &[u8], mut cur: &'a mut [u64], mut next: &'a mut [u64]) -> bool {
        let m = self.elems.len();
        set(cur, 0);
        self.close(cur);
        for &b in input {
            next.iter_mut().for_each(|w| *w = 0);
            if !self.step(cur, next, b) {
                return false;
            }
            self.close(next);
            std::mem::swap(&mut cur, &mut next);
        }
        get(cur, m)
    }

    /// Moves every state in `cur` over byte `b` into `next`; false when none survives.
    fn step(&self, cur: &[u64], next: &mut [u64], b: u8) -> bool {
        let mut any = false;
        for (wi, &word) in cur.iter().enumerate() {
            let mut w = word;
            while w != 0 {
                let i = wi * 64 + w.trailing_zeros() as usize;
                w &= w - 1;
                match self.elems.get(i) {
                    Some(Elem::Byte(x)) if *x == b => set(next, i + 1),
                    Some(Elem::Star) if b != b'/' => set(next, i),
                    Some(Elem::DoubleStar) => set(next, i),
                    _ => continue,
                }
                any = true;
            }
        }
        any
    }

    /// A wildcard may match nothing, so being before it means being after it too.
    fn close(&self, states: &mut [u64]) {
        for (i, e) in self.elems.iter().enumerate() {
            if get(states, i) && !matches!(e, Elem::Byte(_)) {
                set(states, i + 1);
            }
        }
    }
}

/// The automaton's elements for the pattern text from its first wildcard on.
fn elements(bytes: &[u8]) -> Vec<Elem> {
    let mut elems = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'*' {
            if bytes.get(i + 1) == Some(&b'*') {
                elems.push(Elem::DoubleStar);
                i += 2;
            } else {
                elems.push(Elem::Star);
                i += 1;
            }
        } else {
            elems.push(Elem::Byte(bytes[i]));
            i += 1;
        }
    }
    elems
}

fn get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn segments_and_depth() {
        assert!(g("/a/*").is_match("/a/b"));
        assert!(!g("/a/*").is_match("/a/b/c"));
        assert!(g("/a/*").is_match("/a/"));
        assert!(g("/a/**").is_match("/a/b/c"));
        assert!(!g("/a/**").is_match("/a"));
        assert!(g("/a/**/z").is_match("/a/b/c/z"));
        assert!(!g("/a/**/z").is_match("/a/b/c/y"));
        assert!(g("/a/*/z").is_match("/a/b/z"));
        assert!(!g("/a/*/z").is_match("/a/b/c/z"));
        assert!(g("/f*o*o").is_match("/fxoyyo"));
        assert!(g("command:*").is_match("command:reboot"));
        assert!(g("/exact").is_match("/exact"));
        assert!(!g("/exact").is_match("/exact2"));
        assert!(g("/a/*").is_match("/a/") && !g("/b/*").is_match("/a/x"));
        assert!(
            !g("*/x").is_match("/a/x"),
            "a leading '*' stays in the first segment"
        );
        assert!(matches!(Glob::new(""), Err(GlobError::Empty)));
        assert!(matches!(Glob::new("/a/***"), Err(GlobError::TripleStar(_))));
    }

    /// A bare `*` or `**` means everything: every route path, every action.
    #[test]
    fn bare_star_and_double_star_match_everything() {
        for p in ["*", "**"] {
            let glob = g(p);
            assert!(glob.matches_everything(), "{p}");
            assert!(!glob.is_literal(), "{p}");
            for s in [
                "",
                "/",
                "/v1/messages",
                "/hooks/slack/demo",
                "forward",
                "command:reboot",
                "a/b/c",
            ] {
                assert!(glob.is_match(s), "{p} vs {s}");
            }
        }
        assert!(!g("/*").matches_everything());
        assert!(!g("/*").is_match("/v1/messages"));
        assert!(g("/**").is_match("/v1/messages"));
    }

    #[test]
    fn long_patterns_and_no_backtracking() {
        // A pattern longer than the stack bitset still works.
        let long = format!("/{}*{}", "a".repeat(150), "b".repeat(20));
        assert!(g(&long).is_match(&format!("/{}xyz{}", "a".repeat(150), "b".repeat(20))));
        assert!(!g(&long).is_match(&format!("/{}x/z{}", "a".repeat(150), "b".repeat(20))));
        // A wildcard tail longer than 127 elements uses the heap bitset.
        let tail = format!("/x/*{}", "ab".repeat(80));
        assert!(g(&tail).is_match(&format!("/x/zz{}", "ab".repeat(80))));
        assert!(!g(&tail).is_match(&format!("/x/z/z{}", "ab".repeat(80))));
        // Many stars against a long input stay linear (would hang if backtracking).
        let many = "*a".repeat(30);
        assert!(!g(&many).is_match(&"a".repeat(29)));
        assert!(g(&many).is_match(&"a".repeat(5000)));
    }
}
