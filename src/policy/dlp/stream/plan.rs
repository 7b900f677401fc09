//! What streaming masking derives from a policy's rules, once: every
//! pattern as a Thompson NFA over characters, and how far back the tail is
//! held (see the parent module).

use regex_syntax::hir::{Class, Hir, HirKind, Repetition};

use super::super::fold::{fold, is_ignorable};
use super::super::triggers::Trigger;
use super::super::{Direction, DlpPolicy, MAX_MASK_PASSES};
use super::{ceil_char, FOLD_EXPANSION, LOOKBEHIND, UNBOUNDED_CAP};

/// NFA states for all patterns; a pattern past it is held for its length.
const MAX_STATES: usize = 50_000;
/// A bounded pattern longer than this is followed only this far.
const PATTERN_CAP: usize = 4096;
/// The cached [`Plan`] of `policy`.
pub(super) fn plan_of(policy: &DlpPolicy) -> &Plan {
    policy.stream.get_or_init(|| Plan::build(policy))
}

/// What streaming needs to know about a policy's rules, derived once.
#[derive(Debug, Default)]
pub struct Plan {
    nfa: Nfa,
    /// Per direction (ingress, egress): the NFA's start, and its
    /// consuming states with the ASCII characters they take.
    starts: [Starts; 2],
    /// Per direction: bytes held whatever the NFA says (patterns too large
    /// to follow).
    hold: [usize; 2],
    /// Per direction: the keywords, ASCII lower case, sorted (a tail that
    /// starts one of them is held), the bytes they start with, the longest.
    keywords: [Vec<Box<[u8]>>; 2],
    keyword_first: [Vec<bool>; 2],
    keyword_longest: [usize; 2],
    /// Characters of the windowed numeric patterns (cards, phones, IDs).
    number_chars: CharSet,
    /// How far back a run of number characters is held.
    number_reach: usize,
    /// Some pattern reads numbers whole (the ASCII dialect).
    pub(super) whole_numbers: bool,
    /// The most bytes held after a push.
    pub(super) bound: usize,
}

#[derive(Debug, Default)]
struct Starts {
    /// Per ASCII character, where the start states that take it go.
    ascii: Vec<Vec<u32>>,
    /// The start states that take some non-ASCII character.
    other: Vec<u32>,
}

impl Plan {
    fn build(policy: &DlpPolicy) -> Plan {
        let mut plan = Plan::default();
        let mut starts: [Vec<u32>; 2] = Default::default();
        let mut longest = 0usize;
        let mut number_len = 0usize;
        let mut number_chars = Vec::new();
        for p in &policy.patterns {
            let rule = &policy.rules[p.rule];
            let hir = regex_syntax::Parser::new().parse(p.regex.as_str()).ok();
            let max = hir.as_ref().and_then(|h| h.properties().maximum_len());
            let len = max.map_or(UNBOUNDED_CAP, |m| m.min(PATTERN_CAP));
            let state = hir.as_ref().and_then(|h| plan.nfa.pattern(h));
            for (d, dir) in [Direction::Ingress, Direction::Egress].iter().enumerate() {
                if rule.dirs & dir.bit() == 0 {
                    continue;
                }
                longest = longest.max(len);
                match state {
                    Some(s) => starts[d].push(s),
                    None => plan.hold[d] = plan.hold[d].max(len),
                }
            }
            if let (
                Trigger::Digits {
                    max_len: Some(l), ..
                },
                Some(h),
            ) = (p.trigger, &hir)
            {
                if p.whole_numbers && rule.action.rewrites() {
                    chars_of(h, &mut number_chars);
                    number_len = number_len.max(l);
                }
            }
            plan.whole_numbers |= p.whole_numbers;
        }
        plan.keywords = keywords_of(policy);
        for (d, s) in starts.iter().enumerate() {
            plan.starts[d] = plan.nfa.starts(s);
            let keyword_len = plan.keywords[d].iter().map(|w| w.len()).max().unwrap_or(0);
            longest = longest.max(keyword_len);
            plan.keyword_longest[d] = keyword_len;
            let mut first = vec![false; 256];
            for w in &plan.keywords[d] {
                if let Some(&b) = w.first() {
                    first[usize::from(b)] = true;
                }
            }
            plan.keyword_first[d] = first;
        }
        plan.number_chars = CharSet::new(number_chars);
        plan.number_reach = FOLD_EXPANSION * MAX_MASK_PASSES * number_len;
        let folded = 2 * longest + MAX_MASK_PASSES * number_len + 2 * LOOKBEHIND;
        plan.bound = FOLD_EXPANSION * folded + 64;
        plan
    }

    /// Bytes of folded text held at the end whatever the NFA says.
    pub(super) fn tail_hold(&self, direction: Direction) -> usize {
        self.hold[dir_index(direction)]
    }

    /// Bytes at the end of the folded `text` that are the start of a longer
    /// keyword going `direction` (ASCII case aside): the longest such tail.
    /// A keyword that may still be completed by what follows starts there;
    /// anything before it no keyword can change.
    pub(super) fn keyword_tail(&self, direction: Direction, text: &str) -> usize {
        let d = dir_index(direction);
        let (words, first) = (&self.keywords[d], &self.keyword_first[d]);
        let longest = self.keyword_longest[d];
        if longest == 0 {
            return 0;
        }
        let bytes = text.as_bytes();
        let from = bytes.len().saturating_sub(longest - 1);
        for i in from..bytes.len() {
            // Most tails start with a byte no keyword starts with.
            let starts = first.get(usize::from(bytes[i].to_ascii_lowercase()));
            if !starts.copied().unwrap_or(false) || !text.is_char_boundary(i) {
                continue;
            }
            let tail = &bytes[i..];
            // The first word after `tail` (a longer one it starts, if any).
            let at = words.partition_point(|w| cmp_lower(w, tail) != std::cmp::Ordering::Greater);
            if words
                .get(at)
                .is_some_and(|w| w.len() > tail.len() && w[..tail.len()].eq_ignore_ascii_case(tail))
            {
                return bytes.len() - i;
            }
        }
        0
    }

    pub(super) fn run(&self, direction: Direction, text: &str, scratch: &mut Scratch) -> Runs {
        Sim {
            nfa: &self.nfa,
            starts: &self.starts[dir_index(direction)],
            s: scratch,
        }
        .run(text)
    }

    /// `at`, or, when `at` is inside a token of `[A-Za-z0-9-]` with a digit
    /// before `at`, the token's start (not before `floor`, at most
    /// `number_reach` bytes back):
    /// masking a number in the token's held part breaks the token, and a
    /// number before it that was part of a hex digest is one of its own then.
    pub(super) fn token_start(&self, text: &str, at: usize, floor: usize) -> usize {
        if !self.whole_numbers || at <= floor || !text[at..].chars().next().is_some_and(wordish) {
            return at;
        }
        let limit = ceil_char(text, at.saturating_sub(self.number_reach)).max(floor);
        let mut start = at;
        let mut digit = false;
        for (i, c) in text[limit..at].char_indices().rev() {
            if !(wordish(c) || is_ignorable(c)) {
                break;
            }
            digit |= c.is_ascii_digit() || ('０'..='９').contains(&c) || c.is_numeric();
            start = limit + i;
        }
        // Only a number in the token's emitted part can change.
        if digit {
            start
        } else {
            at
        }
    }

    /// `at`, or the start of the run of number characters with a digit that
    /// ends there (not before `floor`, at most `number_reach` bytes back):
    /// masking a value after it can join the run's digits into a new number.
    pub(super) fn number_run_start(&self, text: &str, at: usize, floor: usize) -> usize {
        if (self.number_chars.ascii == 0 && self.number_chars.other.is_empty()) || at <= floor {
            return at;
        }
        let limit = ceil_char(text, at.saturating_sub(self.number_reach)).max(floor);
        let mut start = at;
        let mut digit = false;
        for (i, c) in text[limit..at].char_indices().rev() {
            let mut buf = [0u8; 4];
            let f = fold(c.encode_utf8(&mut buf));
            if !f.chars().all(|c| self.number_chars.contains(c)) {
                break;
            }
            digit |= f.bytes().any(|b| b.is_ascii_digit());
            start = limit + i;
        }
        if digit {
            start
        } else {
            at
        }
    }
}

/// Whether `c` folds to `[A-Za-z0-9-]` (one character of a token that
/// "numbers are whole" reads whole).
fn wordish(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '-';
    }
    let mut buf = [0u8; 4];
    let f = fold(c.encode_utf8(&mut buf));
    !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// `word` (lower case) against `tail` lower-cased, as `Ord` on bytes would.
fn cmp_lower(word: &[u8], tail: &[u8]) -> std::cmp::Ordering {
    let lowered = tail.iter().map(u8::to_ascii_lowercase);
    word.iter().copied().cmp(lowered)
}

/// Per direction, the keywords of the rules going that way: folded (as the
/// automaton matches them), ASCII lower case (an automaton built case
/// insensitive matches either case: holding on either is safe), sorted.
fn keywords_of(policy: &DlpPolicy) -> [Vec<Box<[u8]>>; 2] {
    let mut out: [Vec<Box<[u8]>>; 2] = Default::default();
    for (word, dirs) in &policy.keywords {
        for (d, dir) in [Direction::Ingress, Direction::Egress].iter().enumerate() {
            if dirs & dir.bit() != 0 {
                out[d].push(word.to_ascii_lowercase().into_boxed_slice());
            }
        }
    }
    for words in &mut out {
        words.sort();
        words.dedup();
    }
    out
}

/// Every character a match of `hir` can contain, added to `out`.
fn chars_of(hir: &Hir, out: &mut Vec<(char, char)>) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => {
            out.extend(String::from_utf8_lossy(&lit.0).chars().map(|c| (c, c)));
        }
        HirKind::Class(class) => out.extend(class_ranges(class).iter().copied()),
        HirKind::Capture(cap) => chars_of(&cap.sub, out),
        HirKind::Repetition(rep) => chars_of(&rep.sub, out),
        HirKind::Concat(parts) | HirKind::Alternation(parts) => {
            parts.iter().for_each(|p| chars_of(p, out))
        }
    }
}

fn normalise(ranges: &mut Vec<(char, char)>) {
    ranges.sort_unstable();
    let mut out: Vec<(char, char)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        match out.last_mut() {
            Some(last) if a as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *ranges = out;
}

fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    let i = ranges.partition_point(|&(_, hi)| hi < c);
    ranges.get(i).is_some_and(|&(lo, _)| lo <= c)
}

/// A set of characters: a bit per ASCII character, sorted ranges above.
#[derive(Debug, Default)]
struct CharSet {
    ascii: u128,
    other: Box<[(char, char)]>,
}

impl CharSet {
    fn new(mut ranges: Vec<(char, char)>) -> Self {
        normalise(&mut ranges);
        let mut ascii = 0u128;
        let mut other = Vec::new();
        for (lo, hi) in ranges {
            for c in (lo as u32).min(128)..(hi as u32 + 1).min(128) {
                ascii |= 1 << c;
            }
            if hi as u32 >= 128 {
                other.push((lo.max('\u{80}'), hi));
            }
        }
        Self {
            ascii,
            other: other.into_boxed_slice(),
        }
    }

    fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            self.ascii >> (c as u32) & 1 == 1
        } else {
            in_ranges(&self.other, c)
        }
    }
}

/// The characters a class takes. A byte class is read as characters: its
/// ASCII bytes as themselves, any byte from 0x80 up as every non-ASCII
/// character (more than it takes, which only holds more).
fn class_ranges(class: &Class) -> Vec<(char, char)> {
    match class {
        Class::Unicode(c) => c.iter().map(|r| (r.start(), r.end())).collect(),
        Class::Bytes(c) => {
            let mut out: Vec<(char, char)> = c
                .iter()
                .filter(|r| r.start() < 0x80)
                .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f))))
                .collect();
            if c.iter().any(|r| r.end() >= 0x80) {
                out.push(('\u{80}', char::MAX));
            }
            out
        }
    }
}

/// One NFA state.
#[derive(Debug)]
enum Inst {
    /// Takes one character of `set`, then goes to `next`.
    Chars { set: CharSet, next: u32 },
    /// Goes to both.
    Split(u32, u32),
    /// A match ends here.
    Match,
}

/// A Thompson NFA of every pattern, over characters.
#[derive(Debug, Default)]
struct Nfa {
    insts: Vec<Inst>,
}

impl Nfa {
    fn push(&mut self, inst: Inst) -> Option<u32> {
        if self.insts.len() >= MAX_STATES {
            return None;
        }
        self.insts.push(inst);
        u32::try_from(self.insts.len() - 1).ok()
    }

    /// Compiles one pattern; its start state, or `None` (and nothing kept)
    /// when the NFA would grow past [`MAX_STATES`].
    fn pattern(&mut self, hir: &Hir) -> Option<u32> {
        let before = self.insts.len();
        let start = self.push(Inst::Match).and_then(|m| self.compile(hir, m));
        if start.is_none() {
            self.insts.truncate(before);
        }
        start
    }

    /// States matching `hir` and then going to `next`; the first of them.
    fn compile(&mut self, hir: &Hir, next: u32) -> Option<u32> {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => Some(next),
            HirKind::Literal(lit) => {
                let text = String::from_utf8_lossy(&lit.0);
                text.chars().rev().try_fold(next, |n, c| {
                    self.push(Inst::Chars {
                        set: CharSet::new(vec![(c, c)]),
                        next: n,
                    })
                })
            }
            HirKind::Class(class) => self.push(Inst::Chars {
                set: CharSet::new(class_ranges(class)),
                next,
            }),
            HirKind::Capture(cap) => self.compile(&cap.sub, next),
            HirKind::Concat(parts) => parts.iter().rev().try_fold(next, |n, p| self.compile(p, n)),
            HirKind::Alternation(alts) => {
                let mut firsts = Vec::with_capacity(alts.len());
                for alt in alts {
                    firsts.push(self.compile(alt, next)?);
                }
                self.split_chain(&firsts)
            }
            HirKind::Repetition(rep) => self.repeat(rep, next),
        }
    }

    fn repeat(&mut self, rep: &Repetition, next: u32) -> Option<u32> {
        let mut cur = next;
        match rep.max {
            Some(max) => {
                for _ in rep.min..max {
                    let body = self.compile(&rep.sub, cur)?;
                    cur = self.push(Inst::Split(body, next))?;
                }
            }
            None => {
                let lp = self.push(Inst::Split(next, next))?;
                let body = self.compile(&rep.sub, lp)?;
                self.insts[lp as usize] = Inst::Split(body, next);
                cur = lp;
            }
        }
        for _ in 0..rep.min {
            cur = self.compile(&rep.sub, cur)?;
        }
        Some(cur)
    }

    /// A state going to every one of `states` (`None` when there is none).
    fn split_chain(&mut self, states: &[u32]) -> Option<u32> {
        let (&last, rest) = states.split_last()?;
        rest.iter()
            .rev()
            .try_fold(last, |acc, &s| self.push(Inst::Split(s, acc)))
    }

    /// The consuming states reachable from `starts`, and the ASCII
    /// characters they take.
    fn starts(&mut self, starts: &[u32]) -> Starts {
        let mut out = Starts {
            ascii: vec![Vec::new(); 128],
            other: Vec::new(),
        };
        let mut seen = vec![false; self.insts.len()];
        let mut stack: Vec<u32> = starts.to_vec();
        while let Some(s) = stack.pop() {
            if std::mem::replace(&mut seen[s as usize], true) {
                continue;
            }
            match &self.insts[s as usize] {
                Inst::Split(a, b) => stack.extend([*b, *a]),
                Inst::Chars { set, next } => {
                    for (c, list) in out.ascii.iter_mut().enumerate() {
                        if set.ascii >> c & 1 == 1 {
                            list.push(*next);
                        }
                    }
                    if !set.other.is_empty() {
                        out.other.push(s);
                    }
                }
                // An empty match is no value.
                Inst::Match => {}
            }
        }
        out
    }
}

/// What running the NFA over a text says.
pub(super) struct Runs {
    /// The earliest start of a thread alive at the end.
    pub(super) open: Option<usize>,
    /// Positions no thread from before them crosses.
    pub(super) cuts: Vec<usize>,
}

/// The lists a run of the NFA works in, kept between runs.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    curr: Vec<(u32, usize)>,
    next: Vec<(u32, usize)>,
    /// Per state, the generation of the list it was last added to.
    mark: Vec<u32>,
    generation: u32,
    stack: Vec<u32>,
}

impl Scratch {
    /// Starts a new list.
    fn bump(&mut self) {
        if self.generation == u32::MAX {
            self.mark.fill(0);
            self.generation = 0;
        }
        self.generation += 1;
    }
}

/// A breadth-first run of the NFA from every position, keeping the earliest
/// start per state (threads are kept in order of start, so the first to
/// reach a state has the earliest).
struct Sim<'a> {
    nfa: &'a Nfa,
    starts: &'a Starts,
    s: &'a mut Scratch,
}

impl Sim<'_> {
    fn run(self, text: &str) -> Runs {
        let Sim { nfa, starts, s } = self;
        if s.mark.len() != nfa.insts.len() {
            s.mark = vec![0; nfa.insts.len()];
            s.generation = 0;
        }
        s.curr.clear();
        s.bump();
        let mut cuts = Vec::new();
        for (q, c) in text.char_indices() {
            s.bump();
            s.next.clear();
            for i in 0..s.curr.len() {
                let (st, start) = s.curr[i];
                if let Inst::Chars { set, next } = &nfa.insts[st as usize] {
                    if set.contains(c) {
                        add(nfa, s, *next, start);
                    }
                }
            }
            // Threads starting here come last: they start latest.
            match starts.ascii.get(c as usize) {
                Some(nexts) => nexts.iter().for_each(|&n| add(nfa, s, n, q)),
                None => {
                    for &st in &starts.other {
                        if let Inst::Chars { set, next } = &nfa.insts[st as usize] {
                            if set.contains(c) {
                                add(nfa, s, *next, q);
                            }
                        }
                    }
                }
            }
            std::mem::swap(&mut s.curr, &mut s.next);
            if s.curr.first().is_none_or(|&(_, start)| start >= q) {
                cuts.push(q);
            }
        }
        Runs {
            open: s.curr.first().map(|&(_, start)| start),
            cuts,
        }
    }
}

/// Adds `state` (and what it splits into) with `start` to the next list.
fn add(nfa: &Nfa, s: &mut Scratch, state: u32, start: usize) {
    s.stack.push(state);
    while let Some(st) = s.stack.pop() {
        let mark = &mut s.mark[st as usize];
        if *mark == s.generation {
            continue;
        }
        *mark = s.generation;
        match &nfa.insts[st as usize] {
            Inst::Split(a, b) => s.stack.extend([*b, *a]),
            _ => s.next.push((st, start)),
        }
    }
}
