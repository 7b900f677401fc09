//! Streaming-safe masking: DLP on text that arrives in pieces (the deltas
//! of a streamed reply: OpenClaw `chat` events' `deltaText`, SSE
//! `choices[].delta.content`, gRPC reply parts), with the outcome of
//! scanning the whole text at once.
//!
//! A value can be split across pieces (`My card is 4111 1111` + ` 1111 1111`),
//! so a piece cannot be masked alone. [`StreamMasker`] keeps a window of the
//! stream, scans it with the policy's own engine after every piece, and
//! emits the part whose outcome no later input can change. It holds back
//! only a tail that could still be (the start of) a match, or that a match
//! still being written could change.
//!
//! **What can still change.** Each pattern's regex is compiled once more, as a
//! plain Thompson NFA over characters (from its `regex_syntax` syntax tree;
//! look-arounds count as always true, so it over-approximates), into a
//! `Plan` cached in the policy. Running it over the folded window (every
//! start position at once, keeping the earliest start per state) gives:
//!
//! * the earliest start of a thread still alive at the end: a match may still
//!   start there (or end there and need the next character for `\b` or
//!   "numbers are whole"), so everything from it on is held;
//! * the cuts: positions no possible match crosses. The next window starts at
//!   the last cut before what was emitted that no finding crosses and that is
//!   not inside a `[A-Za-z0-9-]` token, with two characters before it (what
//!   `\b` and the masks' digit checks look at), so the scan sees there what
//!   a scan of the whole text sees.
//!
//! On top of that the tail is held: from the longest tail that is the
//! start of a keyword (the plan keeps the direction's keywords sorted, so
//! each candidate tail is one binary search); from the last character folding may still combine with what
//! follows (`e` + U+0301 is `é`); from the start of any finding that is not
//! settled (it reaches the held part, or fewer than two characters follow
//! it: a mask keeps its prefix or suffix only when no digit is that close);
//! over a run of number characters just before the held part (masking keeps
//! digits, and kept digits next to other digits are scanned again as a new
//! number); and over a `[A-Za-z0-9-]` token with a digit that the held part
//! continues (masking in it breaks a hex digest, and a number in the digest
//! is one of its own then).
//!
//! **Re-scans.** The whole-text scan scans the masked text again only when a
//! mask touches digits *anywhere* in it; that second scan can then find a
//! value far away from that mask (a phone number in a hex token that a
//! card's mask cut short), so the outcome at the start of a text can depend
//! on its end. The stream cannot know its end, so its windows are always
//! scanned again when masked: its outcome ([`whole_outcome`]) is the same
//! however the stream is split, and differs from [`DlpPolicy::scan`] only by
//! masking such a value that the whole-text scan leaves visible.
//!
//! **Bounds.** A pattern with no maximum length (a `+` or `*`) is followed
//! for [`UNBOUNDED_CAP`] folded bytes. The held tail never exceeds
//! [`StreamMasker::bound`] bytes: twice the longest match (a match, and one
//! that ends inside it), plus the number run (one pattern length per
//! re-scan), plus lookbehind, times 4 (a folded byte comes from at most 4
//! bytes of input, such as `𝟏`), plus 64. The emitted context kept for the
//! next window has the same bound. Past it, the oldest bytes are emitted as
//! the window masks them, and a `block` finding among them stops the stream.
//!
//! **Outcome.** `block` findings are reported as soon as they are settled (or
//! about to be emitted); nothing of the value has been emitted then, and the
//! stream is over. Every finding is reported once, with byte offsets into
//! the stream's whole input.

use std::ops::Deref;
use std::sync::Arc;

use super::fold::{is_ignorable, Folded, Keep};
use super::{Action, Direction, DlpOutcome, DlpPolicy, Finding};

mod plan;

pub(super) use plan::Plan;
use plan::{plan_of, Scratch};

/// Bytes of folded text a pattern without a maximum length is followed for:
/// longer than any e-mail address (254) or API key the shipped policy knows.
pub const UNBOUNDED_CAP: usize = 256;
/// The most input bytes one folded byte comes from (a 4-byte character that
/// folds to one ASCII byte, like `𝟏`), invisible characters aside.
const FOLD_EXPANSION: usize = 4;
/// Characters before the cut that the next scan also sees.
const LOOKBEHIND: usize = 2;

/// What one [`StreamMasker::push`] or [`StreamMasker::finish`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Emitted {
    /// The next part of the masked stream (may be empty).
    pub text: String,
    /// Findings that start in this part, each reported once; offsets are
    /// into the stream's whole input. Rule names, never values.
    pub findings: Vec<Finding>,
    /// A `block` rule matched: the caller stops the stream. Nothing of the
    /// blocked value was emitted, and nothing more will be.
    pub blocked_by: Option<Arc<str>>,
}

/// Masks a stream piece by piece, with the outcome of masking it whole.
///
/// `S` is whatever keeps the policy alive for the stream: a stream that
/// outlives a reload keeps the snapshot it started with (an
/// `Arc<DlpPolicy>`, or a whole policy set with [`StreamMasker::with_snapshot`]).
pub struct StreamMasker<S = Arc<DlpPolicy>> {
    snapshot: S,
    dlp: fn(&S) -> &DlpPolicy,
    direction: Direction,
    /// The window: lookbehind and context already emitted, then held input.
    buf: String,
    /// Offset of `buf[0]` in the stream's input.
    base: usize,
    /// Where the held input starts in `buf`.
    held: usize,
    /// Where, in `buf`, the cut the window starts from is (what is before
    /// it is lookbehind).
    anchor: usize,
    /// A `block` rule matched: everything else is dropped.
    blocked: bool,
    scratch: Scratch,
}

impl<S> std::fmt::Debug for StreamMasker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMasker")
            .field("direction", &self.direction)
            .field("offset", &(self.base + self.held))
            .field("held", &self.held_len())
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

fn deref_policy<P: Deref<Target = DlpPolicy>>(p: &P) -> &DlpPolicy {
    p
}

impl<P: Deref<Target = DlpPolicy>> StreamMasker<P> {
    /// A masker for one stream going `direction`, holding `policy` (an
    /// `Arc<DlpPolicy>`, or `&DlpPolicy`) until it ends.
    pub fn new(policy: P, direction: Direction) -> Self {
        Self::with_snapshot(policy, deref_policy::<P>, direction)
    }
}

impl<S> StreamMasker<S> {
    /// A masker that keeps `snapshot` (such as an `Arc` of the whole policy
    /// set) and finds its DLP policy with `dlp`.
    pub fn with_snapshot(snapshot: S, dlp: fn(&S) -> &DlpPolicy, direction: Direction) -> Self {
        // Build the plan now, not on the first piece.
        plan_of(dlp(&snapshot));
        Self {
            snapshot,
            dlp,
            direction,
            buf: String::new(),
            base: 0,
            held: 0,
            anchor: 0,
            blocked: false,
            scratch: Scratch::default(),
        }
    }

    /// Takes the next piece of the stream and returns what can be emitted.
    ///
    /// When a value keeps the tail alive past [`Self::bound`] bytes (an
    /// unbounded pattern's match longer than [`UNBOUNDED_CAP`], or a value
    /// padded with invisible characters), the oldest bytes are emitted as
    /// the current window masks them: memory stays bounded, and only such a
    /// value can come out differently from a whole-text scan.
    pub fn push(&mut self, delta: &str) -> Emitted {
        if self.blocked {
            return Emitted::default();
        }
        self.buf.push_str(delta);
        self.advance(false)
    }

    /// Ends the stream: emits the held tail, masked.
    pub fn finish(mut self) -> Emitted {
        if self.blocked {
            return Emitted::default();
        }
        self.advance(true)
    }

    /// Bytes of input taken but not emitted yet.
    pub fn held_len(&self) -> usize {
        self.buf.len() - self.held
    }

    /// The most bytes [`Self::held_len`] can be after a `push`.
    pub fn bound(&self) -> usize {
        plan_of((self.dlp)(&self.snapshot)).bound
    }

    /// Whether a `block` rule has matched (the stream is over).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    fn advance(&mut self, last: bool) -> Emitted {
        let policy = (self.dlp)(&self.snapshot);
        let plan = plan_of(policy);
        let outcome = scan_window(policy, &self.buf, self.direction);
        let window = Window {
            text: &self.buf,
            held: self.held,
            anchor: self.anchor,
            outcome: &outcome,
        };
        let cut = if last {
            Cut::everything(self.buf.len())
        } else {
            window.decide(plan, policy.keep, self.direction, &mut self.scratch)
        };
        // A block finding counts once settled, or when the bound makes the
        // stream emit past its start (fail closed).
        let block = outcome.findings.iter().find(|f| {
            f.action == Action::Block
                && f.start >= self.held
                && (last || f.start < cut.open.max(cut.commit) || f.end < cut.stable)
        });
        let commit = block.map_or(cut.commit, |b| cut.commit.min(b.start));
        let mut out = Emitted {
            text: window.masked(self.held, commit),
            findings: window.findings(self.held, commit, self.base),
            blocked_by: None,
        };
        if let Some(b) = block {
            out.findings.push(Finding {
                start: b.start + self.base,
                end: b.end + self.base,
                ..b.clone()
            });
            out.blocked_by = Some(b.rule.clone());
            self.blocked = true;
            self.buf = String::new();
            self.held = 0;
            self.anchor = 0;
            return out;
        }
        let (start, anchor) = if last { (commit, commit) } else { cut.next };
        self.buf.drain(..start);
        self.base += start;
        self.held = commit - start;
        self.anchor = anchor - start;
        out
    }
}

/// The outcome a stream of `text` has, however it is split: what
/// [`StreamMasker`]'s pieces add up to. The same as [`DlpPolicy::scan`],
/// except that it may mask more (see below); a caller that answers the
/// same route both streamed and whole can use it for the whole answers.
pub fn whole_outcome(policy: &DlpPolicy, text: &str, direction: Direction) -> DlpOutcome {
    scan_window(policy, text, direction)
}

/// [`DlpPolicy::scan`], except that a masked text is always scanned again.
///
/// The whole-text scan scans the masked text again only when some mask
/// touches digits anywhere in it, and that second scan can find a value
/// far from that mask (a number inside a hex digest that another mask cut
/// short). Whether a later part of a stream will trigger it is unknowable,
/// so the stream always does: its outcome is the same however the stream
/// is split, and differs from the whole-text scan only by masking such a
/// value that the whole-text scan, with no mask touching digits, leaves.
fn scan_window(policy: &DlpPolicy, text: &str, direction: Direction) -> DlpOutcome {
    let outcome = policy.scan_once(text, direction.bit());
    if outcome.masked.is_none() {
        return outcome;
    }
    policy.rescan(text, direction.bit(), outcome)
}

/// Where one scan of the window lets the stream go.
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// Emit up to here.
    commit: usize,
    /// A match may still start here (or later): findings before it are final.
    open: usize,
    /// Folding is final before here.
    stable: usize,
    /// Where the next window starts, and its cut.
    next: (usize, usize),
}

impl Cut {
    fn everything(len: usize) -> Self {
        Self {
            commit: len,
            open: len,
            stable: len,
            next: (len, len),
        }
    }
}

/// One scan of the window.
struct Window<'a> {
    text: &'a str,
    held: usize,
    anchor: usize,
    outcome: &'a DlpOutcome,
}

impl Window<'_> {
    /// How far the outcome is final, and where the next window starts.
    fn decide(&self, plan: &Plan, keep: Keep, direction: Direction, scratch: &mut Scratch) -> Cut {
        let text = self.text;
        let stable = stable_end(text, self.held);
        let folded = Folded::new(&text[..stable], keep);
        let runs = plan.run(direction, &folded.text, scratch);
        let stable_f = folded.text.len();
        let mut open_f = runs.open.unwrap_or(stable_f);
        let hold = plan.tail_hold(direction);
        open_f = open_f.min(floor_char(&folded.text, stable_f.saturating_sub(hold)));
        open_f = open_f.min(stable_f - plan.keyword_tail(direction, &folded.text));
        let open = folded.span(open_f, open_f).0.min(stable);
        let settled = back_chars(text, text.len(), LOOKBEHIND)
            .min(folded.span(back_f(&folded.text, LOOKBEHIND), stable_f).0);
        let mut commit = open;
        loop {
            let before = commit;
            commit = self.settle(commit, settled);
            commit = plan.number_run_start(text, commit, self.held);
            commit = plan.token_start(text, commit, self.held);
            if commit == before {
                break;
            }
        }
        commit = safe_floor(text, commit, self.held).max(self.held);
        if text.len() - commit > plan.bound {
            commit = forced(text, text.len() - plan.bound).max(commit);
        }
        let next = self.next_start(plan, &folded, &runs.cuts, commit);
        Cut {
            commit,
            open,
            stable,
            next,
        }
    }

    /// Moves `commit` back to the start of every finding that crosses it or
    /// ends too close to the end to be settled.
    fn settle(&self, mut commit: usize, settled: usize) -> usize {
        for f in self.outcome.findings.iter().rev() {
            if f.start < commit && (f.end > commit || f.end > settled) {
                commit = f.start;
            }
        }
        commit
    }

    /// Where the next window starts, and its cut: the last cut after the
    /// current one, at or before `commit`, that no finding crosses (or,
    /// with none within [`Plan::bound`] bytes, a forced one), with
    /// [`LOOKBEHIND`] visible characters before it.
    fn next_start(
        &self,
        plan: &Plan,
        folded: &Folded<'_>,
        cuts: &[usize],
        commit: usize,
    ) -> (usize, usize) {
        let text = self.text;
        let crossed = |o: usize| {
            self.outcome
                .findings
                .iter()
                .any(|f| f.start < o && o < f.end)
        };
        let found = cuts.iter().rev().find_map(|&q| {
            let o = folded.span(q, q).0;
            let ok = o <= commit
                && o > self.anchor
                && text[o..].chars().next().is_some_and(fold_safe)
                && !(plan.whole_numbers && wordish_at(&folded.text, q))
                && !crossed(o);
            ok.then_some(o)
        });
        let cut = match found {
            Some(o) if commit - o <= plan.bound => o,
            _ if commit - self.anchor > plan.bound => forced(text, commit - plan.bound),
            _ => return (0, self.anchor),
        };
        (
            safe_floor(text, back_visible(text, cut, LOOKBEHIND), 0),
            cut,
        )
    }

    /// The masked text of `[from, to)` (original byte offsets of the
    /// window): masking writes one character per character.
    fn masked(&self, from: usize, to: usize) -> String {
        if to <= from {
            return String::new();
        }
        let masked = self.outcome.text(self.text);
        let skip = self.text[..from].chars().count();
        let take = self.text[from..to].chars().count();
        let mut at = masked
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(masked.len()));
        let start = at.nth(skip).unwrap_or(masked.len());
        let end = at.nth(take - 1).unwrap_or(masked.len());
        masked[start..end].to_string()
    }

    /// Findings that start in `[from, to)`, with stream offsets.
    fn findings(&self, from: usize, to: usize, base: usize) -> Vec<Finding> {
        self.outcome
            .findings
            .iter()
            .filter(|f| from <= f.start && f.start < to)
            .map(|f| Finding {
                start: f.start + base,
                end: f.end + base,
                ..f.clone()
            })
            .collect()
    }
}

/// Whether the folded characters on both sides of `q` are `[A-Za-z0-9-]`:
/// one token, which "numbers are whole" reads as a whole (a hex digest).
fn wordish_at(folded: &str, q: usize) -> bool {
    let wordish = |c: char| c.is_ascii_alphanumeric() || c == '-';
    folded[..q].chars().next_back().is_some_and(wordish)
        && folded[q..].chars().next().is_some_and(wordish)
}

/// A forced cut at or after `at`: the next character folding cannot join to
/// what is before it (or the next character).
fn forced(text: &str, at: usize) -> usize {
    let at = ceil_char(text, at);
    text[at..]
        .char_indices()
        .take(16)
        .find(|&(_, c)| fold_safe(c))
        .map_or(at, |(i, _)| at + i)
}

/// Where folding is final: the last character that nothing after it can
/// change (ASCII other than letters and `<=>`, with only invisible
/// characters after it) ends it, else the last character folding cannot
/// join to what is before it starts the unstable tail. Not before `floor`.
fn stable_end(text: &str, floor: usize) -> usize {
    let mut tail = text[floor..]
        .char_indices()
        .rev()
        .map(|(i, c)| (floor + i, c));
    let mut last = None;
    for (i, c) in tail.by_ref() {
        if !is_ignorable(c) {
            last = Some((i, c));
            break;
        }
    }
    let Some((i, c)) = last else {
        return text.len();
    };
    if final_at_end(c) {
        return text.len();
    }
    if fold_safe(c) {
        return i;
    }
    tail.find(|&(_, c)| fold_safe(c)).map_or(floor, |(i, _)| i)
}

/// Whether no character after `c` can change how `c` folds: ASCII that no
/// combining mark composes with.
fn final_at_end(c: char) -> bool {
    c.is_ascii() && !c.is_ascii_alphabetic() && !matches!(c, '<' | '=' | '>')
}

/// Whether folding starts a new segment at `c`: nothing before it can
/// compose with it or be reordered around it (as in `fold`).
fn fold_safe(c: char) -> bool {
    c.is_ascii() || !is_ignorable(c) && super::fold::compute_starts(c)
}

/// The position at or before `at` where a character folding cannot join to
/// its left starts (or `floor`).
fn safe_floor(text: &str, at: usize, floor: usize) -> usize {
    let mut at = floor_char(text, at);
    while at > floor && !text[at..].chars().next().is_none_or(fold_safe) {
        at = floor_char(text, at - 1);
    }
    at.max(floor)
}

/// Back from `at` past `n` characters that are not invisible (or to 0).
fn back_visible(text: &str, at: usize, n: usize) -> usize {
    let mut seen = 0;
    for (i, c) in text[..at].char_indices().rev() {
        seen += usize::from(!is_ignorable(c));
        if seen == n {
            return i;
        }
    }
    0
}

/// `n` characters back from `at` (or 0).
fn back_chars(text: &str, at: usize, n: usize) -> usize {
    text[..at]
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i)
}

/// `n` characters back from the end of `text`.
fn back_f(text: &str, n: usize) -> usize {
    back_chars(text, text.len(), n)
}

fn floor_char(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests;
