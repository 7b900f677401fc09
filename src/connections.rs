//! Who may hold a connection to the public listener, and for how long: the
//! gateway's answer to slowloris.
//!
//! A request costs nothing until its header is complete, so an attacker can
//! hold thousands of sockets open by trickling a TLS handshake or a header
//! one byte at a time, each read well inside any per-read timeout. Three
//! limits stop that:
//!
//! - **caps**: at most `max_connections` open in total and
//!   `max_connections_per_ip` from one address (trusted proxies are exempt
//!   from the per-address cap, since every client behind them shares it);
//! - **a handshake deadline**: the TLS handshake completes within
//!   `handshake_timeout` of accept;
//! - **a header deadline**: a connection with no request in flight delivers
//!   a whole request header within `header_timeout`, counted from the
//!   handshake or from the end of its previous request. An idle keep-alive
//!   connection is therefore closed after `header_timeout` too.
//!
//! This module is the bookkeeping only, a plain type testable without
//! sockets: [`ConnectionTable::open`] admits or refuses, [`Connection`]
//! tracks the phase and says when it must be cut. `server::guard` ties it to
//! Pingora's accept path and does the cutting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The limits, from `moltgate.yaml` `limits`.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once, in total.
    pub max_total: usize,
    /// Connections open at once from one client address.
    pub max_per_ip: usize,
    /// From accept until the TLS handshake completes.
    pub handshake_timeout: Duration,
    /// From the handshake, or the end of the previous request, until a whole
    /// request header has arrived.
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits configured in `limits`.
    pub fn from_config(limits: &crate::config::Limits) -> Self {
        Self {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            handshake_timeout: limits.handshake_timeout.0,
            header_timeout: limits.header_timeout.0,
        }
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The listener already holds `limit` connections.
    #[error("{limit} connections are open in total (limits.max_connections)")]
    Total {
        /// The configured cap.
        limit: usize,
    },
    /// The client's address already holds `limit` connections.
    #[error("{limit} connections are open from this address (limits.max_connections_per_ip)")]
    PerIp {
        /// The configured cap.
        limit: usize,
    },
}

impl Refusal {
    /// The metric and audit label of the limit that refused.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Total { .. } => "max_connections",
            Refusal::PerIp { .. } => "max_connections_per_ip",
        }
    }
}

/// The deadline a connection missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The TLS handshake did not complete in time.
    Handshake,
    /// No whole request header arrived in time.
    Header,
}

impl Phase {
    /// The metric and audit label.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Handshake => "handshake_timeout",
            Phase::Header => "header_timeout",
        }
    }
}

/// What the watchdog of a connection waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Cut the connection at this instant unless its state changes first.
    Until(Instant, Phase),
    /// A request is in flight: no deadline until it ends.
    Busy,
    /// The connection is closed (or already cut): nothing left to watch.
    Done,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The open connections of the public listener.
#[derive(Debug)]
pub struct ConnectionTable {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

/// A lock that survives a panic elsewhere: the counts stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ConnectionTable {
    /// An empty table enforcing `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The limits this table enforces.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Admits a connection from `ip` accepted at `now`, or refuses it.
    /// `exempt` (a trusted proxy) skips the per-address cap.
    pub fn open(
        self: &Arc<Self>,
        ip: IpAddr,
        exempt: bool,
        now: Instant,
    ) -> Result<Arc<Connection>, Refusal> {
        let ip = ip.to_canonical();
        {
            let mut counts = lock(&self.counts);
            if counts.total >= self.limits.max_total {
                return Err(Refusal::Total {
                    limit: self.limits.max_total,
                });
            }
            let from_ip = counts.per_ip.get(&ip).copied().unwrap_or(0);
            if !exempt && from_ip >= self.limits.max_per_ip {
                return Err(Refusal::PerIp {
                    limit: self.limits.max_per_ip,
                });
            }
            counts.total += 1;
            counts.per_ip.insert(ip, from_ip + 1);
        }
        Ok(Arc::new(Connection {
            table: self.clone(),
            ip,
            state: Mutex::new(State {
                handshaken: false,
                in_flight: 0,
                since: now,
                closed: false,
            }),
            changed: Notify::new(),
        }))
    }

    /// Connections open in total.
    pub fn open_count(&self) -> usize {
        lock(&self.counts).total
    }

    /// Connections open from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let counts = lock(&self.counts);
        counts.per_ip.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&ip);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    handshaken: bool,
    in_flight: u32,
    /// When the current phase (handshake, or waiting for a header) began.
    since: Instant,
    closed: bool,
}

/// One admitted connection: its phase and its deadline.
#[derive(Debug)]
pub struct Connection {
    table: Arc<ConnectionTable>,
    ip: IpAddr,
    state: Mutex<State>,
    changed: Notify,
}

impl Connection {
    /// The client address (the TCP peer).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The TLS handshake completed at `now`: the header deadline starts.
    pub fn handshake_done(&self, now: Instant) {
        let mut s = lock(&self.state);
        s.handshaken = true;
        s.since = now;
        drop(s);
        self.changed.notify_one();
    }

    /// A request's header has arrived; the returned guard ends the request
    /// (and restarts the header deadline) when dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestInFlight {
        lock(&self.state).in_flight += 1;
        self.changed.notify_one();
        RequestInFlight { conn: self.clone() }
    }

    /// What to wait for next.
    pub fn watch(&self) -> Watch {
        let s = lock(&self.state);
        let limits = self.table.limits;
        if s.closed {
            Watch::Done
        } else if !s.handshaken {
            Watch::Until(s.since + limits.handshake_timeout, Phase::Handshake)
        } else if s.in_flight > 0 {
            Watch::Busy
        } else {
            Watch::Until(s.since + limits.header_timeout, Phase::Header)
        }
    }

    /// Waits until the state changes (handshake done, request started or
    /// ended, closed). A change that happened since the last wait counts.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// If the connection is still open and its deadline has passed at `now`,
    /// runs `cut` (which must make the socket unusable) and returns the
    /// phase it missed. `cut` runs under the connection's lock, so it never
    /// races [`Connection::close`]: a socket reported closed is never cut.
    pub fn cut_if_expired(&self, now: Instant, cut: impl FnOnce()) -> Option<Phase> {
        let mut s = lock(&self.state);
        if s.closed {
            return None;
        }
        let limits = self.table.limits;
        let (deadline, phase) = if !s.handshaken {
            (s.since + limits.handshake_timeout, Phase::Handshake)
        } else if s.in_flight == 0 {
            (s.since + limits.header_timeout, Phase::Header)
        } else {
            return None;
        };
        if now < deadline {
            return None;
        }
        cut();
        s.closed = true;
        drop(s);
        self.table.release(self.ip);
        self.changed.notify_one();
        Some(phase)
    }

    /// The socket is closing: the connection no longer counts against the
    /// caps. Idempotent.
    pub fn close(&self) {
        let mut s = lock(&self.state);
        if s.closed {
            return;
        }
        s.closed = true;
        drop(s);
        self.table.release(self.ip);
        self.changed.notify_one();
    }
}

impl Drop for Connection {
    /// A safety net: a connection nobody holds any more is not open.
    fn drop(&mut self) {
        self.close();
    }
}

/// A request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
pub struct RequestInFlight {
    conn: Arc<Connection>,
}

impl Drop for RequestInFlight {
    fn drop(&mut self) {
        let mut s = lock(&self.conn.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.since = Instant::now();
        }
        drop(s);
        self.conn.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn table(max_total: usize, max_per_ip: usize) -> Arc<ConnectionTable> {
        ConnectionTable::new(ConnectionLimits {
            max_total,
            max_per_ip,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
        })
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_free_on_close() {
        let t = table(3, 2);
        let now = Instant::now();
        let a1 = t.open(A, false, now).unwrap();
        let _a2 = t.open(A, false, now).unwrap();
        assert_eq!(
            t.open(A, false, now).unwrap_err(),
            Refusal::PerIp { limit: 2 }
        );
        let _b1 = t.open(B, false, now).unwrap();
        assert_eq!(
            t.open(B, false, now).unwrap_err(),
            Refusal::Total { limit: 3 }
        );
        assert_eq!((t.open_count(), t.open_from(A)), (3, 2));
        a1.close();
        a1.close(); // idempotent
        assert_eq!((t.open_count(), t.open_from(A)), (2, 1));
        assert!(t.open(A, false, now).is_ok());
    }

    #[test]
    fn trusted_proxies_skip_the_address_cap_but_not_the_total() {
        let t = table(3, 1);
        let now = Instant::now();
        let held: Vec<_> = (0..3).map(|_| t.open(A, true, now).unwrap()).collect();
        assert_eq!(
            t.open(A, true, now).unwrap_err(),
            Refusal::Total { limit: 3 }
        );
        assert_eq!(t.open_from(A), 3);
        drop(held);
        // The last handle gone is a closed connection, even without close().
        assert_eq!(t.open_count(), 0);
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let t = table(10, 1);
        let now = Instant::now();
        let _a = t.open(A, false, now).unwrap();
        let mapped = IpAddr::V6("::ffff:192.0.2.1".parse().unwrap());
        assert!(t.open(mapped, false, now).is_err());
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let t = table(10, 10);
        // A minute ago, so that "now" (when a request ends) is well after t1.
        let t0 = Instant::now() - Duration::from_secs(60);
        let c = t.open(A, false, t0).unwrap();
        assert_eq!(
            c.watch(),
            Watch::Until(t0 + Duration::from_secs(5), Phase::Handshake)
        );
        let t1 = t0 + Duration::from_secs(1);
        c.handshake_done(t1);
        assert_eq!(
            c.watch(),
            Watch::Until(t1 + Duration::from_secs(10), Phase::Header)
        );
        let req = c.request_started();
        assert_eq!(c.watch(), Watch::Busy);
        // A long request is never cut for its header deadline.
        assert_eq!(
            c.cut_if_expired(t1 + Duration::from_secs(60), || panic!()),
            None
        );
        drop(req);
        match c.watch() {
            // Restarted from the request's end, not from the handshake.
            Watch::Until(at, Phase::Header) => assert!(at >= t0 + Duration::from_secs(70)),
            other => panic!("{other:?}"),
        }
        c.close();
        assert_eq!(c.watch(), Watch::Done);
    }

    #[test]
    fn a_missed_deadline_cuts_once_and_frees_the_slot() {
        let t = table(10, 1);
        let t0 = Instant::now();
        let c = t.open(A, false, t0).unwrap();
        let mut cuts = 0;
        assert_eq!(
            c.cut_if_expired(t0 + Duration::from_secs(4), || cuts += 1),
            None
        );
        assert_eq!(
            c.cut_if_expired(t0 + Duration::from_secs(5), || cuts += 1),
            Some(Phase::Handshake)
        );
        assert_eq!(
            c.cut_if_expired(t0 + Duration::from_secs(9), || cuts += 1),
            None
        );
        assert_eq!(cuts, 1);
        assert_eq!(t.open_count(), 0);
        c.close(); // the socket's own close after a cut releases nothing twice
        assert_eq!(t.open_count(), 0);
        assert!(t.open(A, false, t0).is_ok());
    }

    #[test]
    fn a_closed_connection_is_never_cut() {
        let t = table(10, 10);
        let t0 = Instant::now();
        let c = t.open(A, false, t0).unwrap();
        c.close();
        assert_eq!(
            c.cut_if_expired(t0 + Duration::from_secs(60), || panic!()),
            None
        );
    }
}
