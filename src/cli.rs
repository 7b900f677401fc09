//! The `moltgate` command line: `run`, `check`, `assistant`, `certs dev` and
//! `token`. Each subcommand is a thin shell over a library function.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// moltgate: the TLS 1.3 security gateway in front of chat bots and AI assistants.
#[derive(Debug, Parser)]
#[command(name = "moltgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Config file. Without it, ./moltgate.yaml, else the embedded demo config.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the gateway.
    Run(ConfigArg),
    /// Validate the config and every policy file; print file:line:col on errors.
    Check(ConfigArg),
    /// Run the reference demo Assistant (gRPC) on ADDR.
    Assistant {
        /// Address to listen on, e.g. 127.0.0.1:50051.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Mint an HS256 development token with the configured JWT secret.
    Token {
        #[command(flatten)]
        config: ConfigArg,
        /// The `sub` claim.
        #[arg(long)]
        sub: String,
        /// Extra claims, `k=v`; `roles=a,b` becomes a list; JSON values are kept typed.
        #[arg(long = "claim", value_name = "K=V")]
        claims: Vec<String>,
        /// Lifetime, like 1h or 15m.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a development CA and a server certificate for localhost, 127.0.0.1 and ::1.
    Dev {
        /// Output directory.
        #[arg(default_value = "certs/dev")]
        dir: PathBuf,
    },
}

/// Loads the config named by `-c`, else `./moltgate.yaml`, else the embedded demo.
pub fn load_config(arg: &ConfigArgPath) -> Result<Config, crate::config::FileError> {
    match arg {
        Some(p) => Config::load(p),
        None if Path::new("moltgate.yaml").is_file() => Config::load(Path::new("moltgate.yaml")),
        None => Config::demo(Path::new(".")),
    }
}

/// The optional config path given on the command line.
pub type ConfigArgPath = Option<PathBuf>;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(c) => {
            let config = match load_config(&c.config) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            crate::observe::init_logging(&config.log.format, &config.log.level);
            match crate::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "moltgate cannot start");
                    fail(e)
                }
            }
        }
        Command::Check(c) => match check(&c.config) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Assistant { listen } => {
            crate::observe::init_logging("json", "info");
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => return fail(e),
            };
            tracing::info!(%listen, "demo assistant listening");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let shutdown = async move {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    if let Ok(mut term) = signal(SignalKind::terminate()) {
                        tokio::select! { _ = term.recv() => {}, _ = shutdown => {} }
                        return;
                    }
                }
                shutdown.await
            };
            match rt.block_on(crate::assistant::serve(listen, shutdown)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("assistant on {listen}: {e}")),
            }
        }
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => match crate::tls::create_dev_certs(&dir) {
            Ok(c) => {
                println!(
                    "created development certificates (not for production):\n  CA:     {}\n  cert:   {}\n  key:    {}",
                    c.ca_cert.display(),
                    c.server_cert.display(),
                    c.server_key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Token {
            config,
            sub,
            claims,
            ttl,
        } => match token(&config.config, &sub, &claims, &ttl) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// `moltgate check`: everything `run` would refuse, without opening sockets.
pub fn check(path: &ConfigArgPath) -> Result<String, String> {
    let config = load_config(path).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _ctx = rt.enter();
    let gateway = crate::pipeline::Gateway::build(&config, crate::observe::Metrics::new())
        .map_err(|e| e.to_string())?;
    if !config.listen.public.tls.dev_autogenerate {
        for p in [
            &config.listen.public.tls.cert,
            &config.listen.public.tls.key,
        ] {
            let resolved = config.resolve(p);
            if !resolved.is_file() {
                let pos = crate::config::yaml::locate(
                    &std::fs::read_to_string(&config.source).unwrap_or_default(),
                    p,
                );
                return Err(crate::config::FileError::at(
                    &config.source,
                    pos,
                    format!("TLS file {} not found", resolved.display()),
                )
                .to_string());
            }
        }
    }
    Ok(format!(
        "ok: {} is valid; policies in {} loaded (version {}); {} route(s), {} upstream(s)",
        config.source.display(),
        gateway.policies.dir().display(),
        gateway.policies.current().version,
        config.routes.len(),
        config.upstreams.len()
    ))
}

/// `moltgate token`: an HS256 token for `sub` with the configured secret.
pub fn token(
    path: &ConfigArgPath,
    sub: &str,
    claims: &[String],
    ttl: &str,
) -> Result<String, String> {
    let config = load_config(path).map_err(|e| e.to_string())?;
    let ttl = crate::config::yaml::parse_duration(ttl)?;
    let set = crate::policy::PolicySet::load(&config.policies_dir(), 0, None)
        .map_err(|e| e.to_string())?;
    let mut extra = BTreeMap::new();
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c:?}: expected k=v"))?;
        let value = if k == "roles" && !v.starts_with('[') {
            serde_json::Value::Array(
                v.split(',')
                    .map(|r| serde_json::Value::String(r.trim().into()))
                    .collect(),
            )
        } else {
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()))
        };
        extra.insert(k.to_string(), value);
    }
    set.jwt.mint(sub, &extra, ttl.as_secs())
}
