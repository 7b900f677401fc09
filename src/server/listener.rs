//! The two listeners as Pingora services, wrapped so that the process knows
//! whether it serves, and decides itself when they stop.
//!
//! [`Listener`] wraps a Pingora listening service:
//!
//! - it puts the listening socket into Pingora's socket table before the
//!   service starts: the one received from the old process of an upgrade,
//!   else one it binds itself. Pingora's own bind retries an address in
//!   use for 30 s and then panics in the service's task
//!   (pingora-core 0.9.1, `listeners/l4.rs:243-288`,
//!   `services/listening.rs:293`), which left a process that answered
//!   `/healthz` 200 with no public listener. Here the error is reported at
//!   once and the process exits 1 ([`Lifecycle::fail`]);
//! - it runs the service in its own task and reports a panic or an early
//!   end the same way;
//! - it gives the service [`Lifecycle::stop_watch`] as its shutdown watch,
//!   so the listeners close when the drain says so, not when Pingora's
//!   main thread does.
//!
//! [`DrainingApp`] wraps the public proxy: its connections see
//! [`Lifecycle::connection_watch`] as their shutdown (so HTTP/1.1 answers
//! carry `Connection: close` and HTTP/2 connections get a GOAWAY from the
//! drain on), and Pingora's clean-up, which closes the HTTP/1.1 connections
//! that wait for a next request, runs only once the drain is over.

use std::net::TcpListener;
use std::os::fd::IntoRawFd;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service;

use super::lifecycle::Lifecycle;

/// A Pingora listening service with one address (see the module docs).
pub struct Listener<A> {
    inner: Option<Service<A>>,
    addr: String,
    /// The config key of the address, for messages.
    key: &'static str,
    public: bool,
    life: Arc<Lifecycle>,
    name: String,
}

impl<A> Listener<A> {
    /// `inner` listens on `addr` only (the key `listen.public.address` or
    /// `listen.admin.address` names it in messages).
    pub fn new(inner: Service<A>, addr: String, public: bool, life: Arc<Lifecycle>) -> Self {
        let key = if public {
            "listen.public.address"
        } else {
            "listen.admin.address"
        };
        Self {
            name: format!("moltgate {}", if public { "public" } else { "admin" }),
            inner: Some(inner),
            addr,
            key,
            public,
            life,
        }
    }

    /// Puts the socket for the address into Pingora's table: the old
    /// process's, else a new one. Returns how it was obtained.
    fn claim(&self, fds: &ListenFds) -> std::io::Result<&'static str> {
        if fds.lock().get(&self.addr).is_some() {
            return Ok("already open");
        }
        if let Some(fd) = self.life.take_inherited(&self.addr) {
            fds.lock().add(self.addr.clone(), fd);
            return Ok("taken over from the old process");
        }
        // std sets SO_REUSEADDR, as Pingora's own bind does; tokio needs the
        // socket non-blocking.
        let socket = TcpListener::bind(&self.addr)?;
        socket.set_nonblocking(true)?;
        fds.lock().add(self.addr.clone(), socket.into_raw_fd());
        Ok("bound")
    }

    fn fail(&self, what: String) {
        self.life
            .fail(format!("{} {}: {what}", self.key, self.addr));
    }
}

/// The message of a task's panic.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into()),
        Err(e) => e.to_string(),
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> pingora::services::Service for Listener<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        _shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let (Some(fds), Some(mut inner)) = (fds, self.inner.take()) else {
            return self.fail("Pingora gave the listener no socket table".into());
        };
        self.life.keep_fds(&fds);
        match self.claim(&fds) {
            Ok(how) => {
                // The socket listens (the kernel queues connections) from here on.
                tracing::info!(listener = %self.name, address = %self.addr, how, "listening");
                self.life.listening(self.public);
            }
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (another process listens there; to replace a running moltgate without dropping requests, use `moltgate run --upgrade`)"
                } else {
                    ""
                };
                return self.fail(format!("cannot listen: {e}{hint}"));
            }
        }
        let stop = self.life.stop_watch();
        let task = tokio::spawn(async move {
            pingora::services::Service::start_service(&mut inner, Some(fds), stop, listeners_per_fd)
                .await
        });
        match task.await {
            Ok(()) if self.life.stopping() => {}
            Ok(()) => self.fail("the listener stopped on its own".into()),
            Err(e) => self.fail(format!("the listener died: {}", panic_message(e))),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.clone()])
    }
}

/// The public proxy with the drain's shutdown watch (see the module docs).
pub struct DrainingApp<A> {
    inner: Arc<A>,
    life: Arc<Lifecycle>,
}

impl<A> DrainingApp<A> {
    /// `inner` (the HTTP proxy) under `life`'s drain.
    pub fn new(inner: A, life: Arc<Lifecycle>) -> Self {
        Self {
            inner: Arc::new(inner),
            life,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for DrainingApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _listener_stopped: &ShutdownWatch,
    ) -> Option<Stream> {
        ServerApp::process_new(&self.inner, stream, self.life.connection_watch()).await
    }

    async fn cleanup(&self) {
        self.life.closing().await;
        self.inner.cleanup().await;
    }
}
