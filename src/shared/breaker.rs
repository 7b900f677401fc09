//! The circuit breaker in front of Redis: while Redis is down, requests
//! must not each pay `shared.redis.timeout` to find out.
//!
//! It is deliberately simple. One failed command (a timeout, a refused
//! connection, an error reply) opens it; while open, every command is
//! skipped at once and the caller's `on_error` decides. Only the
//! background probe ([`super::Shared::probe`], a round trip every
//! [`super::PROBE_INTERVAL`]) closes it again, so a Redis that comes back
//! is noticed within one interval, and a Redis that is still down costs one
//! probe per interval rather than one timeout per request.

use std::sync::atomic::{AtomicBool, Ordering};

/// Open or closed; shared by every request of a node.
#[derive(Debug, Default)]
pub struct Breaker {
    open: AtomicBool,
}

impl Breaker {
    /// A closed breaker: Redis is assumed reachable until a command fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether commands may be sent now.
    pub fn allows(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// A command failed: skip Redis until a probe succeeds. Returns whether
    /// this call opened it (so the transition is logged once).
    pub fn trip(&self) -> bool {
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// A probe succeeded: send commands again. Returns whether this call
    /// closed it.
    pub fn close(&self) -> bool {
        self.open.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_opens_and_only_a_probe_closes() {
        let b = Breaker::new();
        assert!(b.allows());
        assert!(b.trip(), "the first failure opens it");
        assert!(!b.trip(), "further failures change nothing");
        assert!(!b.allows());
        assert!(b.close(), "a successful probe closes it");
        assert!(!b.close());
        assert!(b.allows());
    }
}
