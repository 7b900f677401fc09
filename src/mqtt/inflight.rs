//! Which received messages are still held, by packet id: the bookkeeping
//! that lets the event loop recognise a redelivery after a reconnect (see
//! the module docs of `mqtt`). Shared by the event loop (`session.rs`) and
//! the worker (`worker.rs`); a plain type, tested without a broker.

use std::collections::HashMap;
use std::sync::Mutex;

/// The packet ids of messages handed to the worker and not yet acknowledged
/// on the wire, so that a redelivery after a reconnect is recognised. Shared
/// by the event loop and the worker.
#[derive(Debug, Default)]
pub(super) struct Inflight {
    /// Bumped when the broker lost the session: acknowledgements of an
    /// older session must not be sent (the ids may be reused).
    epoch: u64,
    /// Packet id → whether its PUBACK was decided (and requested).
    held: HashMap<u16, bool>,
}

/// What to do with a message the broker sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// New: hand it to the worker (in this session epoch).
    New(u64),
    /// A redelivery of a message still being handled: drop it.
    Handling,
    /// A redelivery of a message whose PUBACK was lost with the old
    /// connection: acknowledge it again.
    Settled,
}

impl Inflight {
    pub(super) fn arrive(&mut self, pkid: u16) -> Arrival {
        match self.held.get(&pkid) {
            Some(false) => Arrival::Handling,
            Some(true) => Arrival::Settled,
            None => {
                self.held.insert(pkid, false);
                Arrival::New(self.epoch)
            }
        }
    }

    /// The worker decided to acknowledge `pkid` of session `epoch`: whether
    /// the acknowledgement may be sent.
    pub(super) fn settle(&mut self, pkid: u16, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        self.held.insert(pkid, true);
        true
    }

    /// The worker gave up on `pkid` (shutdown) without acknowledging it.
    pub(super) fn release(&mut self, pkid: u16, epoch: u64) {
        if epoch == self.epoch {
            self.held.remove(&pkid);
        }
    }

    pub(super) fn acked_on_wire(&mut self, pkid: u16) {
        if self.held.get(&pkid) == Some(&true) {
            self.held.remove(&pkid);
        }
    }

    pub(super) fn session_lost(&mut self) {
        self.epoch += 1;
        self.held.clear();
    }
}

/// The table, even if a thread panicked while holding it (it stays consistent:
/// every change is one map operation).
pub(super) fn lock(m: &Mutex<Inflight>) -> std::sync::MutexGuard<'_, Inflight> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_are_recognised() {
        let mut t = Inflight::default();
        assert_eq!(t.arrive(7), Arrival::New(0));
        // Resent while the worker still has it.
        assert_eq!(t.arrive(7), Arrival::Handling);
        assert!(t.settle(7, 0));
        // Resent after the PUBACK was decided but before it was written.
        assert_eq!(t.arrive(7), Arrival::Settled);
        t.acked_on_wire(7);
        // Once written, the id may carry a new message.
        assert_eq!(t.arrive(7), Arrival::New(0));
    }

    #[test]
    fn a_lost_session_voids_old_acks() {
        let mut t = Inflight::default();
        assert_eq!(t.arrive(3), Arrival::New(0));
        t.session_lost();
        assert!(!t.settle(3, 0), "the new session may reuse id 3");
        assert_eq!(t.arrive(3), Arrival::New(1));
        t.release(3, 1);
        assert_eq!(t.arrive(3), Arrival::New(1));
    }
}
