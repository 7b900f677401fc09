//! The `moltgate` command line: `run`, `check`, `assistant`, `dlp scan`,
//! `explain`, `certs dev` and `token`. Each subcommand is a thin shell over a
//! library function, so what it prints is what the library decides.

use crate::path::Gateway as Gw;
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
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Take the listening sockets over from the running instance (found
        /// through the pid file beside `upgrade_socket`), which is sent SIGQUIT
        /// and drains: a new binary replaces the old without dropping a request.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate the config and every policy file: print every error as file:line:col: message (exit 1), and warnings for policy rules that match no route.
    Check(ConfigArg),
    /// Run the reference demo Assistant (gRPC) on ADDR.
    Assistant {
        /// Address to listen on, e.g. 127.0.0.1:50051.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Data-loss prevention tools.
    Dlp {
        #[command(subcommand)]
        command: DlpCommand,
    },
    /// Show the ABAC/RBAC decision for a request's attributes, and the rule that decided it.
    Explain {
        /// Policies directory.
        #[arg(short = 'p', long = "policies", default_value = "policies/")]
        policies: PathBuf,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
        /// The request: {"subject":{...},"resource":"...","action":"...","environment":{"ip":"...","time":"..."}}
        request: PathBuf,
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
enum DlpCommand {
    /// Scan text, one input per line; print one JSON line per input with byte offsets and the masked text.
    Scan {
        /// Policies directory.
        #[arg(short = 'p', long = "policies", default_value = "policies/")]
        policies: PathBuf,
        /// Input file, or `-` (default) for standard input.
        #[arg(default_value = "-")]
        input: String,
        /// Show `action: tokenize` findings as the tokens the tenant's model
        /// would see (key: `tokenize.key` of the `-c` config, else
        /// `$MOLTGATE_TOKEN_KEY`). Nothing is stored.
        #[arg(long, requires = "tenant")]
        tokenize: bool,
        /// The tenant whose tokens to show (with `--tokenize`).
        #[arg(long)]
        tenant: Option<String>,
        /// Config file whose `tokenize:` key to use (with `--tokenize`).
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
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

/// Prints the value with `print` and succeeds, or prints the error and fails.
fn finish<T, E: std::fmt::Display>(result: Result<T, E>, print: impl FnOnce(T)) -> ExitCode {
    match result {
        Ok(v) => {
            print(v);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => run(&config.config, upgrade),
        Command::Check(c) => {
            let report = check(&c.config);
            for line in &report.diagnostics {
                eprintln!("{line}");
            }
            if report.failed {
                return ExitCode::FAILURE;
            }
            println!("{}", report.summary);
            ExitCode::SUCCESS
        }
        Command::Assistant { listen } => assistant(listen),
        Command::Dlp {
            command:
                DlpCommand::Scan {
                    policies,
                    input,
                    tokenize,
                    tenant,
                    config,
                },
        } => {
            let tokens = match (tokenize, tenant) {
                (true, Some(tenant)) => match scan_tokenizer(&config) {
                    Ok(t) => Some((t, tenant)),
                    Err(e) => return fail(e),
                },
                _ => None,
            };
            finish(dlp_scan_with(&policies, &input, tokens.as_ref()), |()| {})
        }
        Command::Explain {
            policies,
            json,
            request,
        } => finish(explain(&policies, &request, json), |out| print!("{out}")),
        Command::Certs {
            command: CertsCommand::Dev { dir },
        } => finish(crate::tls::create_dev_certs(&dir), |c| {
            println!(
                "created development certificates (not for production):\n  CA:     {}\n  cert:   {}\n  key:    {}",
                c.ca_cert.display(),
                c.server_cert.display(),
                c.server_key.display()
            )
        }),
        Command::Token {
            config,
            sub,
            claims,
            ttl,
        } => finish(token(&config.config, &sub, &claims, &ttl), |t| {
            println!("{t}")
        }),
    }
}

/// `moltgate run`: loads the config, starts logging, runs the gateway.
fn run(path: &ConfigArgPath, upgrade: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    crate::observe::init_logging(&config.log.format, &config.log.level);
    match crate::server::run(config, upgrade) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "moltgate cannot start");
            fail(e)
        }
    }
}

/// `moltgate assistant`: the demo Assistant until Ctrl-C or SIGTERM.
fn assistant(listen: std::net::SocketAddr) -> ExitCode {
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
    finish(
        rt.block_on(crate::assistant::serve(listen, shutdown))
            .map_err(|e| format!("assistant on {listen}: {e}")),
        |()| {},
    )
}

/// What `moltgate check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every error and warning, one `file:line:col: [warning: ]message` each,
    /// in the order found.
    pub diagnostics: Vec<String>,
    /// Whether any diagnostic is an error (`check` then exits non-zero).
    pub failed: bool,
    /// The one-line `ok: ...` summary, when nothing failed.
    pub summary: String,
}

impl CheckReport {
    fn errors(&mut self, e: crate::config::FileError) {
        self.failed = true;
        self.diagnostics
            .extend(e.split().into_iter().map(|e| e.to_string()));
    }

    fn lints(&mut self, lints: &[crate::policy::lint::Lint]) {
        self.failed |= crate::policy::lint::has_errors(lints);
        self.diagnostics.extend(lints.iter().map(|l| l.to_string()));
    }
}

/// `moltgate check`: everything `run` would refuse, without opening sockets,
/// every error of every file, plus lints: policy rules that can never apply
/// (errors) or match no configured route (warnings). See
/// [`crate::policy::lint`].
pub fn check(path: &ConfigArgPath) -> CheckReport {
    let mut report = CheckReport::default();
    let config = match load_config(path) {
        Ok(c) => c,
        Err(e) => {
            report.errors(e);
            return report;
        }
    };
    let listeners: Vec<String> = config
        .mqtt
        .iter()
        .map(|l| crate::mqtt::ingress::route_path(&l.name.0))
        .collect();
    let mut routes: Vec<&str> = config.routes.iter().map(|r| r.path.0.as_str()).collect();
    routes.extend(listeners.iter().map(String::as_str));
    let policies_loaded = match crate::policy::PolicySet::load(&config.policies_dir(), 1, None) {
        Ok(set) => {
            report.lints(&set.lint(&routes));
            check_tokenize(&config, &set.dlp, &mut report);
            let tenants = crate::policy::tenant_lint::multi_tenant_platforms(&config);
            let dir = config.policies_dir();
            report.lints(&crate::policy::tenant_lint::bare_accounts(&dir, &tenants));
            true
        }
        Err(e) => {
            report.errors(e);
            false
        }
    };
    if let Err(e) = check_tls_files(&config) {
        report.errors(e);
    }
    // Building the gateway loads the policies again: only worth it (and
    // only new errors) when they loaded.
    if !policies_loaded {
        return report;
    }
    match build_gateway(&config) {
        Ok(_) if report.failed => {}
        Ok((dir, version)) => {
            let warnings = report.diagnostics.len();
            report.summary = format!(
                "ok: {} is valid; policies in {} loaded (version {version}); {} route(s), {} upstream(s){}",
                config.source.display(),
                dir.display(),
                config.routes.len(),
                config.upstreams.len(),
                match warnings {
                    0 => String::new(),
                    n => format!("; {n} warning(s)"),
                },
            );
        }
        Err(e) => {
            report.failed = true;
            report.diagnostics.push(e);
        }
    }
    report
}

/// A DLP rule with `action: tokenize` needs a `tokenize:` block.
fn check_tokenize(config: &Config, dlp: &crate::policy::dlp::DlpPolicy, report: &mut CheckReport) {
    if let Err(msg) = crate::tokenize::check_policy(config.tokenize.is_some(), dlp) {
        let path = config.policies_dir().join(crate::policy::DLP_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let pos = dlp
            .tokenize_rules()
            .next()
            .and_then(|rule| crate::config::yaml::locate_key(&text, rule));
        report.errors(crate::config::FileError::at(&path, pos, msg));
    }
}

/// Builds the gateway as `run` would (in a throwaway runtime): the policies
/// directory and version it loaded.
fn build_gateway(config: &Config) -> Result<(PathBuf, u64), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let _ctx = rt.enter();
    let bots = std::sync::Arc::new(crate::server::bot_client::PingoraBotClient::new());
    let gateway = std::sync::Arc::new(
        Gw::build(config, crate::observe::Metrics::new(), bots).map_err(|e| e.to_string())?,
    );
    if !config.mqtt.is_empty() {
        crate::mqtt::ingress::prepare(&gateway, config).map_err(|e| e.to_string())?;
    }
    let version = gateway.policies.current().version;
    Ok((gateway.policies.dir().to_path_buf(), version))
}

/// The TLS certificate and key must exist unless they are generated on start.
fn check_tls_files(config: &Config) -> Result<(), crate::config::FileError> {
    let text = std::fs::read_to_string(&config.source).unwrap_or_default();
    let tls = &config.listen.public.tls;
    let (cert, key) = (config.resolve(&tls.cert), config.resolve(&tls.key));
    let at = |needle: &str, message: String| {
        crate::config::FileError::at(
            &config.source,
            crate::config::yaml::locate(&text, needle),
            message,
        )
    };
    // With autogenerate, two missing files are created at start; one missing
    // file is refused there too (a new certificate never meets an old key).
    if tls.dev_autogenerate && !cert.exists() && !key.exists() {
        return Ok(());
    }
    let missing: Vec<_> = [(&tls.cert, &cert), (&tls.key, &key)]
        .into_iter()
        .filter(|(_, resolved)| !resolved.is_file())
        .map(|(raw, resolved)| at(raw, format!("TLS file {} not found", resolved.display())))
        .collect();
    crate::config::FileError::check(missing)?;
    crate::tls::check_pair(&cert, &key).map_err(|e| at(&tls.key, e.to_string()))
}

/// Reads one policy file from `dir` with `compile`; a missing file is an error here.
fn load_policy<T>(
    dir: &Path,
    name: &str,
    compile: fn(&Path, &str) -> Result<T, crate::config::FileError>,
) -> Result<T, String> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    compile(&path, &text).map_err(|e| e.to_string())
}

/// `moltgate dlp scan`: one JSON line per input line, streamed.
pub fn dlp_scan(dir: &Path, input: &str) -> Result<(), String> {
    dlp_scan_with(dir, input, None)
}

/// The tokenizer of `moltgate dlp scan --tokenize`: the key of the
/// `tokenize:` block of `config`, else `$MOLTGATE_TOKEN_KEY`; checked as
/// `moltgate check` checks it. Its vault is never written.
pub fn scan_tokenizer(config: &ConfigArgPath) -> Result<crate::tokenize::Tokenizer, String> {
    use crate::config::tokenize::KEY_ENV;
    let key = match config {
        Some(_) => {
            let config = load_config(config).map_err(|e| e.to_string())?;
            let block = config
                .tokenize
                .as_ref()
                .ok_or_else(|| format!("{} has no 'tokenize:' block", config.source.display()))?;
            block.master_key()
        }
        None => crate::tokenize::MasterKey::parse(&std::env::var(KEY_ENV).unwrap_or_default()),
    }
    .map_err(|e| e.to_string())?;
    Ok(crate::tokenize::Tokenizer::in_memory(
        &key,
        std::time::Duration::from_secs(1),
        1,
    ))
}

/// `moltgate dlp scan`, with `tokens` (a tokenizer and a tenant) for
/// `--tokenize`: `masked` then shows the tokens instead of masks.
pub fn dlp_scan_with(
    dir: &Path,
    input: &str,
    tokens: Option<&(crate::tokenize::Tokenizer, String)>,
) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let policy = load_policy(
        dir,
        crate::policy::DLP_FILE,
        crate::policy::dlp::DlpPolicy::from_yaml,
    )?;
    let reader: Box<dyn BufRead> = if input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).map_err(|e| format!("{input}: {e}"))?,
        ))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{input}: line {}: {e}", i + 1))?;
        let json = crate::policy::dlp::scan_line_json_with(&policy, i + 1, &line, |s, v| {
            tokens.map(|(t, tenant)| t.token_for(tenant, &s.rule, v).to_string())
        });
        writeln!(out, "{json}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// `moltgate explain`: the decision for a request file, as text or JSON.
pub fn explain(dir: &Path, request: &Path, json: bool) -> Result<String, String> {
    use crate::policy::explain;
    let abac = load_policy(
        dir,
        crate::policy::ABAC_FILE,
        crate::policy::abac::AbacPolicy::from_yaml,
    )?;
    let perms = match std::fs::read_to_string(dir.join(crate::policy::PERMISSIONS_FILE)) {
        Ok(text) => crate::policy::rbac::Permissions::from_yaml(
            &dir.join(crate::policy::PERMISSIONS_FILE),
            &text,
        )
        .map_err(|e| e.to_string())?,
        Err(_) => Default::default(),
    };
    let text = std::fs::read_to_string(request)
        .map_err(|e| format!("{}: cannot read: {e}", request.display()))?;
    let req =
        explain::parse_request(request, &text, chrono::Utc::now()).map_err(|e| e.to_string())?;
    let x = explain::explain(&abac, &perms, req);
    Ok(if json {
        format!("{}\n", explain::render_json(&x))
    } else {
        explain::render_text(&x)
    })
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
