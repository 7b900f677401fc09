//! Second-step confirmation: a message a policy marks `confirm: true` is
//! held until its sender answers with a one-time code.
//!
//! It exists so that a risky action (a command, a message to a sensitive
//! route) needs a deliberate second step by the same person, and so that a
//! held message is never lost silently: held messages live in their own
//! bounded cache, separate from the conversation context, and every
//! transition is an audit line.
//!
//! ```text
//! INIT ──hold──▶ AWAIT_CONFIRM ──right code, in time──▶ FORWARDED
//!                      │ ├──────code after ttl────────▶ EXPIRED
//!                      │ ├──────never answered────────▶ EXPIRED   (swept by the cache)
//!                      │ ├──────wrong code × attempts─▶ REJECTED
//!                      │ └──────new hold / capacity───▶ REJECTED  (superseded | capacity)
//! ```
//!
//! - A code is 6 decimal digits from the OS CSPRNG, compared in constant
//!   time, and works once: a forwarded entry is removed atomically.
//! - Entries are keyed by `who`: the linked person id when the sender is in
//!   `identities.yaml`, else `platform:sender_id`. A code sent by anyone else
//!   finds their own (empty) slot, so it never releases this person's
//!   message; a linked person may answer from any of their accounts.
//! - A reply that is not code-shaped (after trimming, exactly 6 ASCII
//!   digits) is not an answer: [`ConfirmOutcome::NotPending`], the text is a
//!   normal message and the held message stays pending.
//! - A wrong code costs one of `attempts` tries (default 3); the last one
//!   rejects and drops the held message.
//! - One held message per `who`: holding another rejects the previous one.
//!
//! Audit lines (target `moltgate::audit`) carry `service`, `decision`
//! (`confirm_await`, `confirm_forwarded`, `confirm_wrong`,
//! `confirm_rejected`, `confirm_expired`), `sender_id` (the `who`),
//! `envelope_id` and `reason`; never the code or the message text.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use rand::Rng;
use subtle::ConstantTimeEq;

use crate::proto::v1::Envelope;

/// Digits in a confirmation code.
pub const CODE_DIGITS: usize = 6;
/// Default tries before a held message is rejected.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Default validity of a code (suggested default for a `confirm_ttl` setting).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// Default number of messages held at once.
pub const DEFAULT_MAX_PENDING: u64 = 10_000;

/// A message waiting for confirmation.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldMessage {
    /// The envelope to forward once confirmed (already masked).
    pub envelope: Envelope,
    /// Whatever the caller needs to answer on the platform afterwards
    /// (route, reply address…); opaque here.
    pub reply: serde_json::Value,
}

/// What a reply from `who` means.
#[derive(Debug, PartialEq)]
pub enum ConfirmOutcome {
    /// The right code, in time: forward this message (state FORWARDED).
    Forward(Box<HeldMessage>),
    /// A wrong code. `remaining` tries are left; at 0 the held message was
    /// rejected and dropped (state REJECTED).
    Wrong {
        /// Tries left before the held message is rejected.
        remaining: u32,
    },
    /// A code after the ttl: the held message was dropped (state EXPIRED).
    Expired,
    /// Nothing is held for `who`, or the text is not code-shaped: handle the
    /// text as a normal message.
    NotPending,
}

/// What `respond` decided inside the atomic per-key update.
enum Step {
    Nothing,
    Forward,
    Expired,
    Wrong(u32),
    Rejected,
}

/// One held message. The message sits in a `Mutex<Option<_>>` so whoever
/// removes the entry can take it out even if moka still holds a clone of
/// the `Arc`.
struct Pending {
    code: [u8; CODE_DIGITS],
    expires_at: Instant,
    envelope_id: String,
    attempts_left: u32,
    held: Mutex<Option<Box<HeldMessage>>>,
}

impl Pending {
    fn take(&self) -> Option<Box<HeldMessage>> {
        match self.held.lock() {
            Ok(mut held) => held.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// Held messages awaiting their code, bounded in number and time.
pub struct ConfirmStore {
    cache: Cache<String, Arc<Pending>>,
    ttl: Duration,
    attempts: u32,
}

impl std::fmt::Debug for ConfirmStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmStore")
            .field("ttl", &self.ttl)
            .field("attempts", &self.attempts)
            .field("pending", &self.cache.entry_count())
            .finish()
    }
}

/// One confirmation audit line (also written by the Redis tier, so both
/// stores say the same things).
pub(crate) fn audit(decision: &'static str, who: &str, envelope_id: &str, reason: &str) {
    tracing::info!(
        target: "moltgate::audit",
        service = "moltgate",
        decision,
        sender_id = %who,
        envelope_id = %envelope_id,
        reason,
        "confirm"
    );
}

/// A fresh code: 6 decimal digits from the OS CSPRNG.
pub(crate) fn new_code() -> String {
    let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
    format!("{n:06}")
}

/// How long past its ttl a held message is kept, so that a late code is
/// answered "expired" rather than taken for a new message.
pub(crate) fn grace(ttl: Duration) -> Duration {
    ttl.max(Duration::from_secs(60))
}

/// True for a reply that looks like a code (6 ASCII digits after trimming).
pub fn is_code_shaped(text: &str) -> bool {
    let t = text.trim();
    t.len() == CODE_DIGITS && t.bytes().all(|b| b.is_ascii_digit())
}

impl ConfirmStore {
    /// A store whose codes are valid for `ttl`, holding at most `max_pending`
    /// messages, allowing `attempts` tries (at least 1) per code.
    pub fn new(ttl: Duration, max_pending: u64, attempts: u32) -> Self {
        // The cache keeps entries past `ttl` (by a grace period) so a late
        // code is answered `Expired` rather than treated as a new message.
        Self::with_grace(ttl, max_pending, attempts, grace(ttl))
    }

    fn with_grace(ttl: Duration, max_pending: u64, attempts: u32, grace: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_pending.max(1))
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(ttl.saturating_add(grace))
            .eviction_listener(|who: Arc<String>, pending: Arc<Pending>, cause| {
                let reason = match cause {
                    RemovalCause::Explicit => return,
                    RemovalCause::Replaced => "superseded",
                    RemovalCause::Size => "capacity",
                    RemovalCause::Expired => "",
                };
                // Only a message still held is news; one taken out was
                // already audited by `respond`.
                if pending.take().is_some() {
                    if cause == RemovalCause::Expired {
                        audit("confirm_expired", &who, &pending.envelope_id, "unanswered");
                    } else {
                        audit("confirm_rejected", &who, &pending.envelope_id, reason);
                    }
                }
            })
            .build();
        Self {
            cache,
            ttl,
            attempts: attempts.max(1),
        }
    }

    /// How long a code is valid.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Tries a code gets.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Holds `held` for `who` (person id, else `platform:sender_id`) and
    /// returns the one-time code to send them. A message already held for
    /// `who` is rejected (superseded).
    pub fn hold(&self, who: &str, held: HeldMessage, now: Instant) -> String {
        let code = new_code();
        let mut digits = [0u8; CODE_DIGITS];
        digits.copy_from_slice(code.as_bytes());
        let envelope_id = held.envelope.id.clone();
        let pending = Pending {
            code: digits,
            expires_at: now + self.ttl,
            envelope_id: envelope_id.clone(),
            attempts_left: self.attempts,
            held: Mutex::new(Some(Box::new(held))),
        };
        self.cache.insert(who.to_string(), Arc::new(pending));
        audit("confirm_await", who, &envelope_id, "");
        code
    }

    /// Interprets `text` from `who` as an answer to a held message.
    pub fn respond(&self, who: &str, text: &str, now: Instant) -> ConfirmOutcome {
        if !is_code_shaped(text) {
            return ConfirmOutcome::NotPending;
        }
        let answer = text.trim().as_bytes();
        let attempts = self.attempts;
        let mut step = Step::Nothing;
        let result = self.cache.entry_by_ref(who).and_compute_with(|entry| {
            let Some(entry) = entry else {
                return Op::Nop;
            };
            let pending = entry.into_value();
            if now >= pending.expires_at {
                step = Step::Expired;
                return Op::Remove;
            }
            if bool::from(pending.code.ct_eq(answer)) {
                step = Step::Forward;
                return Op::Remove;
            }
            let remaining = pending.attempts_left.saturating_sub(1).min(attempts);
            if remaining == 0 {
                step = Step::Rejected;
                return Op::Remove;
            }
            step = Step::Wrong(remaining);
            // Keep the held message (moved, not copied) with one try less.
            Op::Put(Arc::new(Pending {
                code: pending.code,
                expires_at: pending.expires_at,
                envelope_id: pending.envelope_id.clone(),
                attempts_left: remaining,
                held: Mutex::new(pending.take()),
            }))
        });
        let pending = match &result {
            CompResult::Removed(e) | CompResult::ReplacedWith(e) => e.value().clone(),
            _ => return ConfirmOutcome::NotPending,
        };
        let id = pending.envelope_id.as_str();
        match step {
            Step::Nothing => ConfirmOutcome::NotPending,
            Step::Forward => match pending.take() {
                Some(held) => {
                    audit("confirm_forwarded", who, id, "");
                    ConfirmOutcome::Forward(held)
                }
                // Already taken: never forward twice.
                None => ConfirmOutcome::NotPending,
            },
            Step::Expired => {
                pending.take();
                audit("confirm_expired", who, id, "late_code");
                ConfirmOutcome::Expired
            }
            Step::Wrong(remaining) => {
                audit("confirm_wrong", who, id, "wrong_code");
                ConfirmOutcome::Wrong { remaining }
            }
            Step::Rejected => {
                pending.take();
                audit("confirm_rejected", who, id, "wrong_code");
                ConfirmOutcome::Wrong { remaining: 0 }
            }
        }
    }

    /// Whether a message is held for `who`.
    pub fn is_pending(&self, who: &str, now: Instant) -> bool {
        self.cache.get(who).is_some_and(|p| now < p.expires_at)
    }

    /// Messages held (approximate until pending maintenance runs).
    pub fn pending(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs the cache's pending maintenance (expiry sweeps, counts) now.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TTL: Duration = Duration::from_secs(300);

    fn held(id: &str) -> HeldMessage {
        HeldMessage {
            envelope: Envelope {
                id: id.into(),
                ..Envelope::default()
            },
            reply: serde_json::json!({"chat": 1}),
        }
    }

    fn wrong(code: &str) -> String {
        let n: u32 = code.parse().unwrap();
        format!("{:06}", (n + 1) % 1_000_000)
    }

    #[test]
    fn right_code_forwards_once() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        let code = s.hold("zhangsan", held("e1"), now);
        assert!(is_code_shaped(&code));
        assert!(s.is_pending("zhangsan", now));
        let out = s.respond(
            "zhangsan",
            &format!(" {code}\n"),
            now + Duration::from_secs(10),
        );
        assert_eq!(out, ConfirmOutcome::Forward(Box::new(held("e1"))));
        assert!(!s.is_pending("zhangsan", now));
        // Used twice: nothing is held any more, so it is an ordinary message.
        assert_eq!(
            s.respond("zhangsan", &code, now),
            ConfirmOutcome::NotPending
        );
    }

    #[test]
    fn wrong_codes_use_up_attempts_then_reject() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        let code = s.hold("u", held("e1"), now);
        let bad = wrong(&code);
        assert_eq!(
            s.respond("u", &bad, now),
            ConfirmOutcome::Wrong { remaining: 2 }
        );
        assert_eq!(
            s.respond("u", &bad, now),
            ConfirmOutcome::Wrong { remaining: 1 }
        );
        assert_eq!(
            s.respond("u", &bad, now),
            ConfirmOutcome::Wrong { remaining: 0 }
        );
        // Rejected and dropped: even the right code no longer releases it.
        assert_eq!(s.respond("u", &code, now), ConfirmOutcome::NotPending);
    }

    #[test]
    fn a_typo_then_the_right_code_forwards() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        let code = s.hold("u", held("e1"), now);
        assert_eq!(
            s.respond("u", &wrong(&code), now),
            ConfirmOutcome::Wrong { remaining: 2 }
        );
        assert_eq!(
            s.respond("u", &code, now),
            ConfirmOutcome::Forward(Box::new(held("e1")))
        );
    }

    #[test]
    fn single_attempt_store_rejects_at_once() {
        let s = ConfirmStore::new(TTL, 100, 0);
        let now = Instant::now();
        let code = s.hold("u", held("e1"), now);
        assert_eq!(
            s.respond("u", &wrong(&code), now),
            ConfirmOutcome::Wrong { remaining: 0 }
        );
        assert_eq!(s.respond("u", &code, now), ConfirmOutcome::NotPending);
    }

    #[test]
    fn expired_code() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        let code = s.hold("u", held("e1"), now);
        assert_eq!(s.respond("u", &code, now + TTL), ConfirmOutcome::Expired);
        assert!(!s.is_pending("u", now));
        assert_eq!(s.respond("u", &code, now), ConfirmOutcome::NotPending);
        // Just inside the ttl still works.
        let code = s.hold("u", held("e2"), now);
        let just = now + TTL - Duration::from_millis(1);
        assert_eq!(
            s.respond("u", &code, just),
            ConfirmOutcome::Forward(Box::new(held("e2")))
        );
    }

    #[test]
    fn a_late_code_is_expired_not_a_new_message() {
        let s = ConfirmStore::new(Duration::ZERO, 100, 3);
        let now = Instant::now();
        s.hold("u", held("e1"), now);
        assert!(!s.is_pending("u", now));
        // The cache keeps it for a grace period so a late code says Expired.
        let code = s.hold("v", held("e2"), now);
        assert_eq!(s.respond("v", &code, now), ConfirmOutcome::Expired);
    }

    #[test]
    fn a_code_from_another_person_never_matches() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        let code = s.hold("zhangsan", held("e1"), now);
        assert_eq!(s.respond("lisi", &code, now), ConfirmOutcome::NotPending);
        assert_eq!(
            s.respond("telegram:555", &code, now),
            ConfirmOutcome::NotPending
        );
        // It cost zhangsan nothing.
        assert_eq!(
            s.respond("zhangsan", &code, now),
            ConfirmOutcome::Forward(Box::new(held("e1")))
        );
    }

    #[test]
    fn other_text_is_a_normal_message_and_the_hold_stays() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        assert_eq!(s.respond("u", "123456", now), ConfirmOutcome::NotPending);
        let code = s.hold("u", held("e1"), now);
        for text in ["hello", "12345", "1234567", "12 3456", "１２３４５６", ""] {
            assert_eq!(
                s.respond("u", text, now),
                ConfirmOutcome::NotPending,
                "{text:?}"
            );
        }
        assert_eq!(
            s.respond("u", &code, now),
            ConfirmOutcome::Forward(Box::new(held("e1")))
        );
    }

    #[test]
    fn a_new_hold_supersedes_the_old() {
        let s = ConfirmStore::new(TTL, 100, 3);
        let now = Instant::now();
        let first = s.hold("u", held("e1"), now);
        let mut second = s.hold("u", held("e2"), now);
        while second == first {
            second = s.hold("u", held("e2"), now);
        }
        assert_eq!(
            s.respond("u", &first, now),
            ConfirmOutcome::Wrong { remaining: 2 }
        );
        assert_eq!(
            s.respond("u", &second, now),
            ConfirmOutcome::Forward(Box::new(held("e2")))
        );
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let s = ConfirmStore::new(TTL, 1000, 3);
        let now = Instant::now();
        let codes: std::collections::HashSet<String> = (0..200)
            .map(|i| s.hold(&format!("u{i}"), held("e"), now))
            .collect();
        assert!(codes.iter().all(|c| is_code_shaped(c)));
        assert!(codes.len() > 190, "{}", codes.len());
    }

    #[test]
    fn capacity_is_bounded() {
        let s = ConfirmStore::new(TTL, 2, 3);
        let now = Instant::now();
        for i in 0..5 {
            s.hold(&format!("u{i}"), held("e"), now);
        }
        s.run_pending_tasks();
        assert!(s.pending() <= 2, "{}", s.pending());
    }

    /// Collects log output for one test.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Other tests hit the audit callsites on threads with no subscriber, and
    /// tracing may cache "nobody is interested" for them. A global sink that
    /// is interested in INFO keeps the interest up, so the scoped subscriber
    /// below reliably sees every event.
    fn interested_global_sink() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let sink = tracing_subscriber::fmt()
                .with_writer(std::io::sink)
                .finish();
            let _ = tracing::subscriber::set_global_default(sink);
        });
    }

    #[test]
    fn every_transition_is_audited_without_code_or_text() {
        interested_global_sink();
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .without_time()
            .with_ansi(false)
            .finish();
        let mut codes = Vec::new();
        tracing::subscriber::with_default(subscriber, || {
            let s = ConfirmStore::new(TTL, 100, 1);
            let now = Instant::now();
            let mut m = held("env-1");
            m.envelope.content = Some(crate::proto::v1::Content {
                text: "transfer all the money".into(),
                ..Default::default()
            });
            let c = s.hold("zhangsan", m.clone(), now);
            assert!(matches!(
                s.respond("zhangsan", &c, now),
                ConfirmOutcome::Forward(_)
            ));
            codes.push(c);
            let c = s.hold("lisi", m.clone(), now);
            s.respond("lisi", &wrong(&c), now);
            codes.push(c);
            let c = s.hold("wangwu", m.clone(), now);
            s.respond("wangwu", &c, now + TTL);
            codes.push(c);
            codes.push(s.hold("zhaoliu", m.clone(), now));
            codes.push(s.hold("zhaoliu", m, now));
            s.run_pending_tasks();
        });
        // An unanswered hold is swept by the cache, and audited.
        let sweep = Buf::default();
        let writer = sweep.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .without_time()
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let s = ConfirmStore::with_grace(Duration::ZERO, 100, 3, Duration::from_millis(20));
            s.hold("zhouqi", held("env-2"), Instant::now());
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.pending() > 0 || s.cache.contains_key("zhouqi") {
                assert!(Instant::now() < deadline, "never swept");
                std::thread::sleep(Duration::from_millis(10));
                s.run_pending_tasks();
            }
        });
        let swept = String::from_utf8(sweep.0.lock().unwrap().clone()).unwrap();
        assert!(
            swept.contains(
                "decision=\"confirm_expired\" sender_id=zhouqi envelope_id=env-2 reason=\"unanswered\""
            ),
            "{swept}"
        );

        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        for needle in [
            "moltgate::audit",
            "service=\"moltgate\"",
            "decision=\"confirm_await\" sender_id=zhangsan envelope_id=env-1",
            "decision=\"confirm_forwarded\" sender_id=zhangsan",
            "decision=\"confirm_rejected\" sender_id=lisi envelope_id=env-1 reason=\"wrong_code\"",
            "decision=\"confirm_expired\" sender_id=wangwu",
            "decision=\"confirm_rejected\" sender_id=zhaoliu envelope_id=env-1 reason=\"superseded\"",
        ] {
            assert!(log.contains(needle), "missing {needle:?} in\n{log}");
        }
        assert!(!log.contains("money"), "{log}");
        for c in codes {
            assert!(!log.contains(&c), "code {c} in\n{log}");
        }
    }
}
