//! Ties [`crate::connections`] to Pingora's accept path.
//!
//! Pingora accepts, runs a pre-TLS callback on the raw TCP stream, does the
//! TLS handshake (with a fixed 60 s timeout), calls a handshake-complete
//! callback, then reads requests with a 60 s timeout per read and no total
//! deadline. The guard uses those hooks:
//!
//! - **pre-TLS** ([`PreTlsProcess`]): admits or refuses the connection
//!   against the caps before any TLS work, hangs a [`Tracing`] object on the
//!   stream whose `on_disconnected` (run when Pingora drops the socket) frees
//!   the slot, and starts a watchdog task for the connection;
//! - **handshake complete** ([`TlsAccept`]): starts the header deadline and
//!   puts the connection in the TLS digest, where the proxy finds it to mark
//!   requests in flight ([`connection_of`]);
//! - **the watchdog** sleeps until the connection's deadline and, if it is
//!   still pending, shuts the socket down (`shutdown(2)`, both directions):
//!   Pingora's pending read then ends and it drops the connection itself.
//!
//! The two callbacks run in the same Tokio task (the connection's), so the
//! connection is handed from one to the other keyed by task id.

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use pingora::listeners::{PreTlsProcess, TlsAccept};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::GetSocketDigest;
use pingora::proxy::Session;
use pingora::upstreams::peer::{Tracer, Tracing};

use crate::connections::{Connection, ConnectionTable, Phase, Refusal, Watch};
use crate::observe::audit::Audit;
use crate::path::Gateway;

/// Connections between accept and the end of their TLS handshake, by the
/// Tokio task that runs them.
type Pending = Mutex<HashMap<tokio::task::Id, Arc<Connection>>>;

/// The public listener's connection guard.
#[derive(Clone)]
pub struct ConnectionGuard {
    table: Arc<ConnectionTable>,
    gateway: Arc<Gateway>,
    pending: Arc<Pending>,
}

/// What the TLS digest carries: the connection a request arrived on.
struct Slot(Arc<Connection>);

impl ConnectionGuard {
    /// A guard enforcing the gateway's configured limits.
    pub fn new(gateway: Arc<Gateway>) -> Arc<Self> {
        let limits = crate::connections::ConnectionLimits::from_config(&gateway.limits);
        Arc::new(Self {
            table: ConnectionTable::new(limits),
            gateway,
            pending: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The table of open connections (the drain waits for it to empty).
    pub fn table(&self) -> Arc<ConnectionTable> {
        self.table.clone()
    }

    fn refuse(&self, ip: std::net::IpAddr, refusal: Refusal) {
        let m = &self.gateway.metrics;
        m.connections_refused
            .with_label_values(&[refusal.label()])
            .inc();
        connection_audit(ip, "refused", refusal.label());
    }
}

/// The audit line of a connection the guard refused or cut (no request
/// exists yet, so it has no route or platform).
fn connection_audit(ip: std::net::IpAddr, decision: &'static str, reason: &str) {
    let mut line = Audit::start("-", "connection");
    line.decision = decision;
    line.reason = reason.to_string();
    line.client_ip = Some(ip);
    line.emit();
}

#[async_trait]
impl PreTlsProcess for ConnectionGuard {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let Some(peer) = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
        else {
            // Not a TCP peer (Unix socket): nothing to count it against.
            return Ok(());
        };
        let exempt = self.gateway.snapshot().ip.is_trusted_proxy(peer);
        let conn = match self.table.open(peer, exempt, Instant::now()) {
            Ok(conn) => conn,
            Err(refusal) => {
                self.refuse(peer, refusal);
                return Err(pingora::Error::explain(
                    pingora::ErrorType::AcceptError,
                    refusal.to_string(),
                ));
            }
        };
        let task = tokio::task::try_id();
        stream.tracer = Some(Tracer(Box::new(Closer {
            conn: conn.clone(),
            pending: self.pending.clone(),
            task,
        })));
        if let Some(task) = task {
            lock(&self.pending).insert(task, conn.clone());
        }
        let metrics = self.gateway.metrics.clone();
        metrics.connections_open.inc();
        tokio::spawn(watchdog(conn, stream.as_raw_fd(), metrics));
        Ok(())
    }
}

#[async_trait]
impl TlsAccept for ConnectionGuard {
    async fn handshake_complete_callback(
        &self,
        _tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let task = tokio::task::try_id()?;
        let conn = lock(&self.pending).remove(&task)?;
        conn.handshake_done(Instant::now());
        Some(Arc::new(Slot(conn)))
    }
}

/// The connection a request arrived on, when the guard admitted it.
pub fn connection_of(session: &Session) -> Option<Arc<Connection>> {
    let digest = session.digest()?.ssl_digest.as_ref()?;
    digest.extension.get::<Slot>().map(|slot| slot.0.clone())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Frees the connection's slot when Pingora drops the socket.
struct Closer {
    conn: Arc<Connection>,
    pending: Arc<Pending>,
    task: Option<tokio::task::Id>,
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Closer")
            .field("peer", &self.conn.ip())
            .finish()
    }
}

impl Tracing for Closer {
    fn on_connected(&self) {}

    fn on_disconnected(&self) {
        // Runs in the socket's Drop, before the file descriptor is closed,
        // so the watchdog can never shut down a reused descriptor.
        self.conn.close();
        if let Some(task) = self.task {
            lock(&self.pending).remove(&task);
        }
    }

    fn boxed_clone(&self) -> Box<dyn Tracing> {
        Box::new(Closer {
            conn: self.conn.clone(),
            pending: self.pending.clone(),
            task: self.task,
        })
    }
}

/// Sleeps until the connection's deadline and cuts it if it is still due.
async fn watchdog(conn: Arc<Connection>, fd: RawFd, metrics: crate::observe::Metrics) {
    loop {
        match conn.watch() {
            Watch::Done => break,
            Watch::Busy => conn.changed().await,
            Watch::Until(at, _) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        let cut = conn.cut_if_expired(Instant::now(), || shut_down(fd));
                        if let Some(phase) = cut {
                            cut_audit(&conn, phase, &metrics);
                            break;
                        }
                    }
                    _ = conn.changed() => {}
                }
            }
        }
    }
    metrics.connections_open.dec();
}

fn cut_audit(conn: &Connection, phase: Phase, metrics: &crate::observe::Metrics) {
    metrics
        .connections_cut
        .with_label_values(&[phase.label()])
        .inc();
    connection_audit(conn.ip(), "cut", phase.label());
}

/// Ends both directions of the socket: the pending read returns and the
/// owner drops the connection. The descriptor stays open until then.
fn shut_down(fd: RawFd) {
    // SAFETY: `fd` is the connection's socket, still open: this runs under
    // the connection's lock, and the socket's owner marks the connection
    // closed under the same lock before it closes the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}
