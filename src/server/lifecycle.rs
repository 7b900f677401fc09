//! How the process starts serving, stops, and hands over to its successor,
//! without dropping a request on a connection it accepted.
//!
//! Pingora 0.9, left alone, stops like this (pingora-core 0.9.1): its
//! shutdown watch makes every listener stop accepting, and then, at once,
//! `HttpProxy::http_cleanup` wakes every HTTP/1.1 connection parked between
//! two requests, which returns and is closed (pingora-proxy 0.9.1,
//! `lib.rs:333-337` and `lib.rs:1598-1602`); a request already on the wire
//! on such a connection is lost. The main thread then sleeps
//! `grace_period_seconds` whatever is left, and drops the runtimes
//! (`server/mod.rs:800-851`), which cancels every task still running.
//!
//! moltgate stops in three steps instead, all of them decided here
//! (Pingora's own grace period is set to zero):
//!
//! 1. **drain**: `/readyz` answers 503, every HTTP/1.1 answer carries
//!    `Connection: close`, and every HTTP/2 connection open at that moment
//!    gets a GOAWAY. On SIGTERM the listeners still accept for
//!    `shutdown.grace_period` (a load balancer may still send traffic while
//!    it learns of the 503); a connection accepted then answers with
//!    `Connection: close` too, and over HTTP/2 gets its GOAWAY when the
//!    listeners close (one sent at once would cancel the requests an
//!    HTTP/2 client queued on a connection it has just opened, and
//!    hyper-util 0.1 retries a canceled request only on a reused connection:
//!    `client/legacy/client.rs:257`). On SIGQUIT the sockets are handed over first, and
//!    this process stops accepting at once: the new one accepts on the same
//!    sockets, and the kernel queues what arrives meanwhile;
//! 2. **close the listeners**, then wait while the open connections finish
//!    (`shutdown.timeout` after SIGTERM, `grace_period + timeout` after
//!    SIGQUIT, or until no connection is left): a request that arrives on
//!    one is answered, with `Connection: close`;
//! 3. **close** what is left: HTTP/1.1 connections that stayed idle since
//!    the drain began; then Pingora stops the runtimes.
//!
//! SIGINT stops at once, in any step. A listener that cannot listen, or
//! whose task dies, stops the process the same way, and `run` exits 1.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{Fds, ListenFds, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use tokio::sync::{mpsc, watch};

use super::upgrade::{self, PidFile};
use crate::connections::ConnectionTable;

/// What the signal task and the listeners tell [`Signals`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM: drain, then stop.
    Terminate,
    /// SIGQUIT: hand the listening sockets over, drain, then stop.
    Quit,
    /// SIGINT: stop at once.
    Interrupt,
    /// A listener failed ([`Lifecycle::fail`]): stop at once, exit 1.
    Failed,
}

/// Where the process is, as `/healthz` and `/readyz` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// A listener is not listening yet.
    Starting,
    /// Both listeners accept.
    Serving,
    /// Stopping (or handing over): still answering, not taking new work.
    Draining,
    /// A listener failed; the process is exiting with status 1.
    Failed(String),
}

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// The process's serving state, shared by the listeners, the admin
/// endpoints, the proxy and [`Signals`].
pub struct Lifecycle {
    phase: AtomicU8,
    public_up: AtomicBool,
    admin_up: AtomicBool,
    failure: Mutex<Option<String>>,
    events: mpsc::UnboundedSender<Event>,
    /// true from the drain on: `Connection: close`, GOAWAY.
    drain: watch::Sender<bool>,
    drain_rx: watch::Receiver<bool>,
    /// true once the listeners must stop accepting.
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    /// true once the connections still open are closed.
    closing: watch::Sender<bool>,
    /// Pingora's table of listening sockets (what an upgrade hands over).
    fds: OnceLock<ListenFds>,
    /// Sockets received from the old process, not yet claimed, by address.
    inherited: Mutex<HashMap<String, RawFd>>,
    pid_file: Mutex<Option<PidFile>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lifecycle {
    /// A process about to start; the receiver is [`Signals`]'s.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        // The receivers kept here never mark a value seen, so each clone
        // (one per HTTP/2 connection) sees the change, even one made
        // before the clone.
        let (drain, drain_rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let life = Self {
            phase: AtomicU8::new(STARTING),
            public_up: AtomicBool::new(false),
            admin_up: AtomicBool::new(false),
            failure: Mutex::new(None),
            events,
            drain,
            drain_rx,
            stop,
            stop_rx,
            closing: watch::channel(false).0,
            fds: OnceLock::new(),
            inherited: Mutex::new(HashMap::new()),
            pid_file: Mutex::new(None),
        };
        (Arc::new(life), rx)
    }

    /// What `/healthz` and `/readyz` report.
    pub fn health(&self) -> Health {
        if let Some(why) = lock(&self.failure).clone() {
            return Health::Failed(why);
        }
        match self.phase.load(Ordering::Acquire) {
            DRAINING => Health::Draining,
            SERVING => Health::Serving,
            _ => Health::Starting,
        }
    }

    /// Becomes true when the drain begins (SIGTERM, SIGQUIT): background
    /// channels that take messages (MQTT) stop taking new ones.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_rx.clone()
    }

    /// Whether answers must close their connection.
    pub fn draining(&self) -> bool {
        self.phase.load(Ordering::Acquire) == DRAINING
    }

    /// A listener accepts; both do: serving.
    pub fn listening(&self, public: bool) {
        let flag = if public {
            &self.public_up
        } else {
            &self.admin_up
        };
        flag.store(true, Ordering::Release);
        if self.public_up.load(Ordering::Acquire) && self.admin_up.load(Ordering::Acquire) {
            let _ =
                self.phase
                    .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// A listener failed: `/healthz` answers 503 and the process exits 1.
    pub fn fail(&self, why: String) {
        tracing::error!(error = %why, "a listener failed; stopping (exit status 1)");
        lock(&self.failure).get_or_insert(why);
        let _ = self.events.send(Event::Failed);
    }

    /// Why a listener failed, if one did.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// The events sender (the signal task's).
    pub fn events(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone()
    }

    /// The shutdown watch of a public connection accepted now: true from
    /// the drain on for one accepted before it, and from the listeners'
    /// close for one accepted during it (see the module docs on HTTP/2).
    pub fn connection_watch(&self) -> &ShutdownWatch {
        if self.draining() {
            &self.stop_rx
        } else {
            &self.drain_rx
        }
    }

    /// The watch the listeners take as their shutdown: true once they stop.
    pub fn stop_watch(&self) -> ShutdownWatch {
        self.stop_rx.clone()
    }

    /// Whether the listeners were told to stop.
    pub fn stopping(&self) -> bool {
        *self.stop_rx.borrow()
    }

    /// Waits until the connections still open are to be closed.
    pub async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|closing| *closing).await;
    }

    fn start_draining(&self) {
        self.phase.store(DRAINING, Ordering::Release);
        self.drain.send_replace(true);
    }

    fn stop_listening(&self) {
        self.stop.send_replace(true);
    }

    fn close_connections(&self) {
        self.closing.send_replace(true);
    }

    /// Keeps Pingora's socket table (the same for every service).
    pub fn keep_fds(&self, fds: &ListenFds) {
        let _ = self.fds.set(fds.clone());
    }

    /// The sockets received from the old process of an upgrade.
    pub fn inherit(&self, fds: &Fds) {
        let (addrs, fds) = fds.serialize();
        lock(&self.inherited).extend(addrs.into_iter().zip(fds));
    }

    /// The received socket for `addr`, if any (each is claimed once).
    pub fn take_inherited(&self, addr: &str) -> Option<RawFd> {
        lock(&self.inherited).remove(addr)
    }

    /// Holds the pid file while this process serves.
    pub fn hold_pid_file(&self, pid_file: PidFile) {
        *lock(&self.pid_file) = Some(pid_file);
    }

    /// Lets the pid file go (to the new process of an upgrade).
    fn release_pid_file(&self) {
        lock(&self.pid_file).take();
    }

    /// At a clean exit: removes the pid file if this process still holds it.
    pub fn remove_pid_file(&self) {
        if let Some(pid_file) = lock(&self.pid_file).take() {
            pid_file.remove();
        }
    }
}

/// Registers the signal handlers now (before Pingora starts, so SIGTERM
/// and SIGQUIT never meet their default action) on the core runtime, which
/// forwards them to [`Signals`].
pub fn watch_signals(core: &tokio::runtime::Runtime, life: &Lifecycle) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let _ctx = core.enter();
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut int = signal(SignalKind::interrupt())?;
    let events = life.events();
    core.spawn(async move {
        loop {
            let event = tokio::select! {
                Some(()) = term.recv() => Event::Terminate,
                Some(()) = quit.recv() => Event::Quit,
                Some(()) = int.recv() => Event::Interrupt,
                else => return,
            };
            if events.send(event).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Pingora's shutdown watcher: runs the drain and the hand-over described
/// in the module documentation, and only then tells Pingora to stop.
pub struct Signals {
    life: Arc<Lifecycle>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
    connections: Arc<ConnectionTable>,
    grace: Duration,
    timeout: Duration,
    /// The upgrade socket; `None`: SIGQUIT hands nothing over.
    socket: Option<PathBuf>,
}

impl Signals {
    /// The watcher of `life`, draining `connections` for `grace` then at
    /// most `timeout`, handing over through `socket` on SIGQUIT (if any).
    pub fn new(
        life: Arc<Lifecycle>,
        events: mpsc::UnboundedReceiver<Event>,
        connections: Arc<ConnectionTable>,
        (grace, timeout): (Duration, Duration),
        socket: Option<PathBuf>,
    ) -> Self {
        Self {
            life,
            events: tokio::sync::Mutex::new(events),
            connections,
            grace,
            timeout,
            socket,
        }
    }

    /// SIGQUIT: hands the sockets over; false (and still serving) if no
    /// process took them.
    async fn hand_over(&self) -> bool {
        let Some(socket) = self.socket.clone() else {
            tracing::error!("SIGQUIT: no hand-over, the upgrade socket's directory is not usable (see the warning at start); still serving");
            return false;
        };
        let Some(fds) = self.life.fds.get().cloned() else {
            tracing::warn!("SIGQUIT before the listeners started: nothing to hand over yet");
            return false;
        };
        tracing::info!(socket = %socket.display(), "SIGQUIT: handing the listening sockets over");
        let started = Instant::now();
        let sent = tokio::task::spawn_blocking(move || upgrade::hand_over(&fds, &socket))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        match sent {
            Ok(()) => {
                self.life.release_pid_file();
                tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "SIGQUIT: listening sockets handed over to the new process; draining"
                );
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGQUIT: hand-over failed; still serving. Start the new process with `moltgate run --upgrade`, which sends SIGQUIT itself");
                false
            }
        }
    }

    /// Steps 1 to 3 of the module documentation; `Fast` if SIGINT (or a
    /// failure) cuts them short. `accepting`: the listeners accept during
    /// the grace period (SIGTERM), else they close at once (SIGQUIT).
    async fn drain(
        &self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        accepting: bool,
    ) -> ShutdownSignal {
        self.life.start_draining();
        tracing::info!(
            grace_ms = self.grace.as_millis() as u64,
            timeout_ms = self.timeout.as_millis() as u64,
            connections = self.connections.open_count(),
            accepting,
            "draining: /readyz 503, answers close their connections"
        );
        let mut wait = self.timeout;
        if !accepting {
            wait += self.grace;
        } else if interrupted(events, Instant::now() + self.grace).await {
            return ShutdownSignal::FastShutdown;
        }
        self.life.stop_listening();
        let deadline = Instant::now() + wait;
        while self.connections.open_count() > 0 && Instant::now() < deadline {
            let tick = (Instant::now() + Duration::from_millis(20)).min(deadline);
            if interrupted(events, tick).await {
                return ShutdownSignal::FastShutdown;
            }
        }
        let left = self.connections.open_count();
        tracing::info!(
            connections_left = left,
            "listeners closed; open connections finished or timed out: stopping"
        );
        self.life.close_connections();
        ShutdownSignal::GracefulTerminate
    }
}

/// Waits until `deadline`; true if SIGINT, a failure or the end of the
/// signal task came first. Other signals are ignored (already stopping).
async fn interrupted(events: &mut mpsc::UnboundedReceiver<Event>, deadline: Instant) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => return false,
            event = events.recv() => match event {
                Some(Event::Terminate | Event::Quit) => {
                    tracing::info!(?event, "already stopping; ignored");
                }
                _ => return true,
            },
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut events = self.events.lock().await;
        loop {
            match events.recv().await {
                Some(Event::Terminate) => {
                    tracing::info!("SIGTERM: graceful shutdown");
                    return self.drain(&mut events, true).await;
                }
                Some(Event::Quit) => {
                    if self.hand_over().await {
                        return self.drain(&mut events, false).await;
                    }
                }
                Some(Event::Interrupt) => {
                    tracing::info!("SIGINT: fast shutdown");
                    return ShutdownSignal::FastShutdown;
                }
                Some(Event::Failed) | None => return ShutdownSignal::FastShutdown,
            }
        }
    }
}
