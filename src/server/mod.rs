//! The Pingora glue, all in one place: listeners, services, signals.
//!
//! Pingora owns the sockets (TLS 1.3 public listener, plain admin listener)
//! and the request lifecycle; everything else runs on the gateway's own
//! "core" Tokio runtime (gRPC channels, health checks, the policy watcher),
//! which outlives Pingora's per-service runtimes for the whole process.
//! How the process starts, stops and hands its sockets to a new binary is
//! in [`lifecycle`] (drain) and [`upgrade`] (`moltgate run --upgrade`); the
//! listeners themselves are wrapped in [`listener`].

pub mod admin;
pub mod bot_client;
pub mod guard;
pub mod lifecycle;
pub mod listener;
pub mod openai;
pub mod proxy;
pub mod respond;
pub mod upgrade;
pub mod websocket;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

use crate::config::{Config, FileError};
use crate::observe::Metrics;
use crate::path::Gateway;
use lifecycle::{Lifecycle, Signals};
use listener::{DrainingApp, Listener};
use upgrade::{Held, Paths, PidFile};

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config or a policy file is invalid.
    #[error("{0}")]
    Config(#[from] FileError),
    /// The TLS 1.3-only provider could not be installed.
    #[error("cannot enforce TLS 1.3 only: another rustls CryptoProvider was installed first")]
    Tls13,
    /// A listener or TLS file problem, or a listener that failed.
    #[error("{0}")]
    Listener(String),
    /// `--upgrade` found nothing to take over, or the hand-over failed.
    #[error("{0}")]
    Upgrade(String),
    /// The core runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Builds and runs the gateway until a signal stops it. With `upgrade`, it
/// first takes the listening sockets over from the running instance
/// ([`upgrade`]). Fails (exit status 1) when a listener cannot listen or
/// dies, even after the start.
pub fn run(config: Config, upgrade: bool) -> Result<(), StartError> {
    if !crate::tls::install_tls13_only_provider() {
        return Err(StartError::Tls13);
    }
    let (cert, key) = certificates(&config)?;
    let addrs = Addrs {
        public: config.public_addr()?.to_string(),
        admin: config.admin_addr()?.to_string(),
    };
    let paths = Paths::of(&config);
    // Before any slow work: an upgrade needs a running instance.
    let old = match upgrade {
        true => Some(upgrade::running_instance(&paths).map_err(StartError::Upgrade)?),
        false => None,
    };

    let core = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("moltgate-core")
        .enable_all()
        .build()?;
    let gateway = {
        let _ctx = core.enter();
        let bots = Arc::new(bot_client::PingoraBotClient::new());
        Arc::new(Gateway::build(&config, Metrics::new(), bots)?)
    };
    let _watcher = start_background(&core, &gateway);
    let (life, events) = Lifecycle::new();
    lifecycle::watch_signals(&core, &life)?;
    start_mqtt(&core, &gateway, &config, &life)?;

    let mut server =
        Server::new_with_opt_and_conf(Some(Opt::default()), server_conf(&config, &paths));
    server.bootstrap();
    let guard = guard::ConnectionGuard::new(gateway.clone());
    let connections = guard.table();
    let tls = tls_settings(&cert, &key, &guard)?;
    add_services(&mut server, &gateway, &config, &life, (guard, tls), &addrs);
    // Last, so that an upgrade's old process stops accepting as late as
    // possible: everything above is ready when its sockets arrive.
    let can_hand_over = take_listeners(&life, &paths, old, &addrs)?;

    tracing::info!(public = %addrs.public, admin = %addrs.admin, admin_token = config.admin_token().is_some(), policies = %gateway.policies.dir().display(), upgrade_socket = %paths.socket.display(), "moltgate starting (TLS 1.3 only on public)");
    let timing = (config.shutdown.grace_period.0, config.shutdown.timeout.0);
    let signals = Signals::new(
        life.clone(),
        events,
        connections,
        timing,
        can_hand_over.then(|| paths.socket.clone()),
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    life.remove_pid_file();
    core.shutdown_background();
    match life.failure() {
        Some(why) => Err(StartError::Listener(why)),
        None => {
            tracing::info!("moltgate stopped");
            Ok(())
        }
    }
}

/// The two listening addresses, as Pingora keys its socket table.
struct Addrs {
    public: String,
    admin: String,
}

/// The public proxy (under the drain) and the admin app, each in a
/// [`Listener`].
fn add_services(
    server: &mut Server,
    gateway: &Arc<Gateway>,
    config: &Config,
    life: &Arc<Lifecycle>,
    (guard, tls): (
        Arc<guard::ConnectionGuard>,
        pingora::listeners::tls::TlsSettings,
    ),
    addrs: &Addrs,
) {
    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        proxy::PublicProxy {
            gateway: gateway.clone(),
            life: life.clone(),
        },
    );
    let mut public = Service::new(
        "moltgate public".to_string(),
        DrainingApp::new(proxy, life.clone()),
    );
    public.endpoints().set_pre_tls_callback(guard);
    public.add_tls_with_settings(&addrs.public, None, tls);
    let mut admin = Service::new(
        "moltgate admin".to_string(),
        admin::AdminApp::new(
            gateway.clone(),
            config.admin_token(),
            config.listen.admin.reload_interval.0,
            life.clone(),
        ),
    );
    admin.add_tcp(&addrs.admin);
    server.add_service(Listener::new(
        public,
        addrs.public.clone(),
        true,
        life.clone(),
    ));
    server.add_service(Listener::new(
        admin,
        addrs.admin.clone(),
        false,
        life.clone(),
    ));
}

/// With `old` (an upgrade): receives its listening sockets, and takes the
/// pid file once it lets go. Without: takes the pid file, so that a later
/// `--upgrade` finds this process (a warning if it cannot: the gateway
/// serves anyway). Returns whether this process may hand its sockets over
/// on SIGQUIT: not when the upgrade socket's directory is not private.
fn take_listeners(
    life: &Arc<Lifecycle>,
    paths: &Paths,
    old: Option<u32>,
    addrs: &Addrs,
) -> Result<bool, StartError> {
    let Some(pid) = old else {
        if let Err(e) = paths.prepare() {
            tracing::warn!(error = %e, "`moltgate run --upgrade` cannot replace this process, and SIGQUIT will not hand its sockets over");
            return Ok(false);
        }
        match PidFile::try_claim(&paths.pid) {
            Ok(pid_file) => life.hold_pid_file(pid_file),
            Err(Held::By(pid)) => {
                tracing::warn!(pid, pid_file = %paths.pid.display(), "another moltgate serves with this upgrade socket: `moltgate run --upgrade` would replace that one, not this one; give this one its own upgrade_socket")
            }
            Err(e) => {
                tracing::warn!(error = %e, "`moltgate run --upgrade` will not find this process")
            }
        }
        return Ok(true);
    };
    paths.prepare().map_err(StartError::Upgrade)?;
    let started = Instant::now();
    tracing::info!(pid, socket = %paths.socket.display(), "--upgrade: taking the listening sockets over from the running instance");
    let mut fds = upgrade::take_over(paths, pid).map_err(StartError::Upgrade)?;
    upgrade::close_unclaimed(&mut fds, &[addrs.public.clone(), addrs.admin.clone()]);
    life.inherit(&fds);
    tracing::info!(
        pid,
        ms = started.elapsed().as_millis() as u64,
        "--upgrade: listening sockets received; the old process drains"
    );
    let (life, pid_path) = (life.clone(), paths.pid.clone());
    std::thread::spawn(move || match PidFile::claim_when_free(&pid_path) {
        Ok(pid_file) => life.hold_pid_file(pid_file),
        Err(e) => {
            tracing::warn!(error = %e, pid_file = %pid_path.display(), "cannot take the pid file: a later --upgrade will not find this process")
        }
    });
    Ok(true)
}

/// TLS for the public listener: the certificate, HTTP/2 and HTTP/1.1, and the
/// connection guard's handshake hook.
fn tls_settings(
    cert: &Path,
    key: &Path,
    guard: &Arc<guard::ConnectionGuard>,
) -> Result<pingora::listeners::tls::TlsSettings, StartError> {
    let loading = |e: pingora::BError| {
        StartError::Listener(format!(
            "loading {} / {}: {e}",
            cert.display(),
            key.display()
        ))
    };
    let mut tls =
        pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(guard.as_ref().clone()))
            .map_err(loading)?;
    tls.set_certificate_chain_file(&cert.display().to_string())
        .map_err(loading)?;
    tls.set_private_key_file(&key.display().to_string())
        .map_err(loading)?;
    tls.enable_h2();
    Ok(tls)
}

/// The public listener's certificate and key: created (or renewed) for
/// development when the config asks for it, and checked to load and match,
/// so a bad pair stops the start here instead of killing the listener
/// thread after "listening" was logged.
fn certificates(config: &Config) -> Result<(PathBuf, PathBuf), StartError> {
    let cert = config.resolve(&config.listen.public.tls.cert);
    let key = config.resolve(&config.listen.public.tls.key);
    let located = |msg: String| StartError::Listener(format!("{}: {msg}", config.source.display()));
    if config.listen.public.tls.dev_autogenerate {
        let action =
            crate::tls::ensure_dev_certs(&cert, &key).map_err(|e| located(e.to_string()))?;
        if action != crate::tls::DevCertAction::Kept {
            tracing::warn!(
                cert = %cert.display(),
                ?action,
                "DEVELOPMENT certificates (self-signed CA, 90 days): for local use only, never in production"
            );
        }
    }
    for (what, p) in [("certificate", &cert), ("key", &key)] {
        if !p.is_file() {
            return Err(located(format!(
                "TLS {what} file {} not found (run `moltgate certs dev` for development certificates)",
                p.display()
            )));
        }
    }
    crate::tls::check_pair(&cert, &key).map_err(|e| located(e.to_string()))?;
    Ok((cert, key))
}

/// Health checks, reload on SIGHUP and on file changes, cache upkeep: on
/// the core runtime. Returns the watcher, which must live as long as the server.
fn start_background(
    core: &tokio::runtime::Runtime,
    gateway: &Arc<Gateway>,
) -> Option<notify::RecommendedWatcher> {
    for cluster in gateway.clusters() {
        core.spawn(crate::upstream::health::run(cluster.clone()));
    }
    if let Some(shared) = &gateway.shared {
        core.spawn(shared.clone().run_probes());
    }
    core.spawn(crate::policy::reload::reload_on_sighup(
        gateway.policies.clone(),
    ));
    // Caches expire and evict lazily as they are used; a quiet gateway still
    // owes its metrics an up-to-date count.
    let context = gateway.context.clone();
    core.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            context.run_pending_tasks();
        }
    });
    match crate::policy::reload::watch(gateway.policies.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policies directory; reload with SIGHUP or POST /reload");
            None
        }
    }
}

/// The `mqtt:` listeners, on the core runtime. They stop taking messages
/// when the drain begins (the message in hand is finished and
/// acknowledged; the broker keeps the rest for the next process).
fn start_mqtt(
    core: &tokio::runtime::Runtime,
    gateway: &Arc<Gateway>,
    config: &Config,
    life: &Arc<Lifecycle>,
) -> Result<(), StartError> {
    if config.mqtt.is_empty() {
        return Ok(());
    }
    let (ingress, listeners) = crate::mqtt::ingress::prepare(gateway, config)?;
    for listener in listeners {
        core.spawn(listener.run(ingress.clone(), life.drain_signal()));
    }
    Ok(())
}

/// Pingora's settings from `moltgate.yaml`. The drain is moltgate's own
/// ([`lifecycle`]): when Pingora is told to stop, it is over, so Pingora's
/// grace period is zero and its runtimes get 1 s for blocking tasks.
fn server_conf(config: &Config, paths: &Paths) -> ServerConf {
    ServerConf {
        threads: config.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: paths.pid.display().to_string(),
        upgrade_sock: paths.socket.display().to_string(),
        ..ServerConf::default()
    }
}
