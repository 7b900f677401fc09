//! The Pingora glue, all in one place: listeners, services, signals.
//!
//! Pingora owns the sockets (TLS 1.3 public listener, plain admin listener)
//! and the request lifecycle; everything else runs on the gateway's own
//! "core" Tokio runtime (gRPC channels, health checks, the policy watcher),
//! which outlives Pingora's per-service runtimes for the whole process.

pub mod admin;
pub mod bot_client;
pub mod guard;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::listening::Service;

use crate::config::{Config, FileError};
use crate::observe::Metrics;
use crate::path::Gateway;

/// Errors that stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config or a policy file is invalid.
    #[error("{0}")]
    Config(#[from] FileError),
    /// The TLS 1.3-only provider could not be installed.
    #[error("cannot enforce TLS 1.3 only: another rustls CryptoProvider was installed first")]
    Tls13,
    /// A listener or TLS file problem.
    #[error("{0}")]
    Listener(String),
    /// The core runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Maps SIGTERM to a graceful stop and SIGINT to a fast one (SIGQUIT is
/// Pingora's graceful upgrade).
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: graceful shutdown");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: fast shutdown");
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: graceful upgrade");
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// Builds and runs the gateway until a signal stops it.
pub fn run(config: Config) -> Result<(), StartError> {
    if !crate::tls::install_tls13_only_provider() {
        return Err(StartError::Tls13);
    }
    let (cert, key) = certificates(&config)?;
    let public_addr = config.public_addr()?;
    let admin_addr = config.admin_addr()?;

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

    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), server_conf(&config));
    server.bootstrap();
    let mut public = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        proxy::PublicProxy {
            gateway: gateway.clone(),
        },
        "moltgate public",
    );
    let guard = guard::ConnectionGuard::new(gateway.clone());
    let tls = tls_settings(&cert, &key, &guard)?;
    public.endpoints().set_pre_tls_callback(guard);
    public.add_tls_with_settings(&public_addr.to_string(), None, tls);
    let mut admin = Service::new(
        "moltgate admin".to_string(),
        admin::AdminApp::new(
            gateway.clone(),
            config.admin_token(),
            config.listen.admin.reload_interval.0,
        ),
    );
    admin.add_tcp(&admin_addr.to_string());
    server.add_service(public);
    server.add_service(admin);

    tracing::info!(public = %public_addr, admin = %admin_addr, admin_token = config.admin_token().is_some(), policies = %gateway.policies.dir().display(), "moltgate listening (TLS 1.3 only on public)");
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    tracing::info!("moltgate stopped");
    core.shutdown_background();
    Ok(())
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

/// Pingora's settings from `moltgate.yaml`.
fn server_conf(config: &Config) -> ServerConf {
    let mut conf = ServerConf {
        threads: config.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }),
        grace_period_seconds: Some(config.shutdown.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.shutdown.timeout.0.as_secs()),
        ..ServerConf::default()
    };
    let run_dir = std::env::temp_dir().join(format!("moltgate-{}", std::process::id()));
    conf.pid_file = run_dir.join("moltgate.pid").display().to_string();
    conf.upgrade_sock = run_dir.join("upgrade.sock").display().to_string();
    conf
}
