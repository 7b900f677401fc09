//! `moltgate.yaml`: what the gateway listens on, where its policies live,
//! which AI clusters it forwards to, and which routes it serves.
//!
//! The schema is strict (unknown keys are errors) because a typo in an edge
//! gateway's config is a security hole, not a style issue. Everything is
//! checked at load time, so `moltgate check` and `moltgate run` refuse the
//! same files with the same `file:line:col` messages, every problem of the
//! file at once (a YAML syntax or schema error stops the reading, so it is
//! reported alone).

pub mod admin;
pub mod mqtt;
pub mod route;
pub mod shared;
pub mod token_key;
pub mod tokenize;
pub mod websocket;
pub mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use admin::{AdminListener, AdminToken, ADMIN_TOKEN_MIN_LEN};
pub use route::{PlatformKind, RouteConfig, RouteMode, Secrets};
pub use shared::{OnError, SharedConfig};
pub use tokenize::TokenizeConfig;
pub use websocket::{WebSocketProfile, WebSocketSettings};
pub use yaml::{EnvString, FileError, HumanDuration};

/// The embedded demo config: what `moltgate run` uses with no `-c` and no
/// `moltgate.yaml` in the working directory.
pub const DEMO_CONFIG: &str = include_str!("../../moltgate.yaml");

/// The node name that runs the demo assistant inside the gateway process.
pub const EMBEDDED_NODE: &str = "embedded";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners.
    pub listen: Listen,
    /// The watched policies directory.
    #[serde(default = "default_policies")]
    pub policies: EnvString,
    /// Conversation context cache bounds.
    #[serde(default)]
    pub context: ContextConfig,
    /// Named upstreams (AI clusters or legacy HTTP bots).
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, matched by exact path.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Limits that protect the gateway from slow or greedy clients.
    #[serde(default)]
    pub limits: Limits,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Shutdown behaviour.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The Redis that edge nodes share state through; absent: in memory.
    #[serde(default)]
    pub shared: Option<SharedConfig>,
    /// Reversible tokenisation (DLP `action: tokenize`): the SM4 key and
    /// TTL; absent: a `tokenize` rule is refused by `moltgate check`.
    #[serde(default)]
    pub tokenize: Option<TokenizeConfig>,
    /// MQTT listeners: topics on a broker as a message source (issue 16).
    #[serde(default)]
    pub mqtt: Vec<mqtt::MqttListenerConfig>,
    /// Worker threads for the public listener (default: number of CPUs).
    #[serde(default)]
    pub threads: Option<usize>,
    /// The socket `moltgate run --upgrade` takes the listeners over through. Default:
    /// `upgrade.sock` in the runtime directory, the same for every process of a user:
    /// `$RUNTIME_DIRECTORY` (systemd), else `/run/moltgate` if writable (the container's
    /// volume), else `$TMPDIR/moltgate-<uid>` (`server::upgrade::socket_path`).
    #[serde(default)]
    pub upgrade_socket: Option<EnvString>,
    /// The directory relative paths are resolved against (the config file's
    /// directory). Not read from YAML.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where this config came from, for messages. Not read from YAML.
    #[serde(skip)]
    pub source: PathBuf,
    /// Whether the text is the shipped demo config, byte for byte (see
    /// [`Config::is_demo`]). Not read from YAML.
    #[serde(skip)]
    demo: bool,
}

fn default_policies() -> EnvString {
    EnvString("policies/".into())
}

/// Listener addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The TLS 1.3 listener platforms and clients talk to.
    pub public: PublicListener,
    /// Plain-HTTP admin listener (health, metrics, reload); keep it on loopback.
    pub admin: AdminListener,
}

/// The public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicListener {
    /// `host:port`.
    pub address: EnvString,
    /// Certificate and key (PEM).
    pub tls: TlsFiles,
}

/// Certificate and key files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: EnvString,
    /// PEM private key.
    pub key: EnvString,
    /// Create development certificates here if the files are missing.
    #[serde(default)]
    pub dev_autogenerate: bool,
}

/// Bounds of the conversation context cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {
    /// Most conversations kept.
    #[serde(default = "default_max_conversations")]
    pub max_conversations: u64,
    /// How long a conversation is kept after it started.
    #[serde(default = "default_ttl")]
    pub ttl: HumanDuration,
    /// Turns (user and assistant) kept per conversation.
    #[serde(default = "default_turns")]
    pub turns: usize,
    /// A conversation is dropped this long after its last exchange
    /// (default: the smaller of `ttl` and 2h).
    #[serde(default)]
    pub idle: Option<HumanDuration>,
    /// Upper bound of the cache's weighed size in bytes (default: derived
    /// from `max_conversations` and `turns`).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// How long a one-time confirmation code stays valid.
    #[serde(default = "default_confirm_ttl")]
    pub confirm_ttl: HumanDuration,
}

fn default_confirm_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_max_conversations() -> u64 {
    100_000
}
fn default_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_turns() -> usize {
    20
}

impl Default for ContextConfig {
    fn default() -> Self {
        Self {
            max_conversations: default_max_conversations(),
            ttl: default_ttl(),
            turns: default_turns(),
            idle: None,
            max_bytes: None,
            confirm_ttl: default_confirm_ttl(),
        }
    }
}

/// What kind of upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamKind {
    /// An AI cluster speaking `moltgate.v1.Assistant` over gRPC.
    Grpc,
    /// An existing bot reached over HTTP (passthrough routes).
    Http,
}

/// How a cluster picks a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Consistent hash on the conversation, so it stays on a warm node.
    #[default]
    Conversation,
    /// Each call goes to the next node.
    RoundRobin,
}

/// One upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `grpc` or `http`.
    pub kind: UpstreamKind,
    /// `host:port` of each node, or `embedded` for the in-process demo assistant.
    pub nodes: Vec<EnvString>,
    /// Node selection.
    #[serde(default)]
    pub balance: Balance,
    /// Per-call timeout, from sending to the last reply part.
    #[serde(default = "default_call_timeout")]
    pub timeout: HumanDuration,
    /// How long a node has to answer `accepted` before the next is tried.
    #[serde(default = "default_accept_timeout")]
    pub accept_timeout: HumanDuration,
    /// TLS to the nodes; plain h2c when absent.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Active health checks.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Seconds put in `Retry-After` when no node accepts.
    #[serde(default = "default_retry_after")]
    pub retry_after: u32,
}

fn default_call_timeout() -> HumanDuration {
    // Also why `shared.claim_ttl` defaults to 60 s: it must outlast this.
    HumanDuration(Duration::from_secs(30))
}
fn default_accept_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_retry_after() -> u32 {
    5
}

/// TLS to an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA bundle that signs the nodes' certificates.
    pub ca: EnvString,
    /// Name to verify in the nodes' certificates (default: the node host).
    #[serde(default)]
    pub domain: Option<EnvString>,
}

/// Active health checks (gRPC `grpc.health.v1.Health/Check`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Time between checks of one node.
    #[serde(default = "default_hc_interval")]
    pub interval: HumanDuration,
    /// Time a check may take.
    #[serde(default = "default_hc_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive failures that mark a node down.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
}

fn default_hc_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_hc_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_unhealthy_after() -> u32 {
    1
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: default_hc_interval(),
            timeout: default_hc_timeout(),
            unhealthy_after: default_unhealthy_after(),
        }
    }
}

/// Limits against slow or greedy clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Default body limit per route, in bytes.
    #[serde(default = "default_body_limit")]
    pub body: usize,
    /// Time allowed for the whole body to arrive.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: HumanDuration,
    /// Message ids remembered per route to recognise redeliveries.
    #[serde(default = "default_dedupe_capacity")]
    pub dedupe_capacity: u64,
    /// Time allowed from accept until the TLS handshake completes.
    #[serde(default = "default_connection_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Time allowed for a whole request header to arrive, counted from the
    /// handshake or from the end of the previous request on the connection
    /// (so it is also how long an idle keep-alive connection is kept).
    #[serde(default = "default_connection_timeout")]
    pub header_timeout: HumanDuration,
    /// Connections open on the public listener at once, in total.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client address (trusted proxies
    /// are exempt: many clients share their address).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_connection_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    256
}

fn default_dedupe_capacity() -> u64 {
    200_000
}

fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body: default_body_limit(),
            body_timeout: default_body_timeout(),
            dedupe_capacity: default_dedupe_capacity(),
            handshake_timeout: default_connection_timeout(),
            header_timeout: default_connection_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (default) or `text`.
    #[serde(default = "default_log_format")]
    pub format: EnvString,
    /// A tracing filter, e.g. `info` or `moltgate=debug`.
    #[serde(default = "default_log_level")]
    pub level: EnvString,
}

fn default_log_format() -> EnvString {
    EnvString("json".into())
}
fn default_log_level() -> EnvString {
    EnvString("info".into())
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// Graceful-shutdown timing (SIGTERM). SIGINT stops at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM or an upgrade's hand-over: still accepting and answering,
    /// with `Connection: close` (h2: GOAWAY) and `/readyz` 503.
    #[serde(default = "default_grace")]
    pub grace_period: HumanDuration,
    /// Then, listeners closed: how long open connections have to finish.
    #[serde(default = "default_grace")]
    pub timeout: HumanDuration,
}

fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: default_grace(),
            timeout: default_grace(),
        }
    }
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, FileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FileError::whole(path, format!("cannot read: {e}")))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_str_at(path, &text, base)
    }

    /// Loads the embedded demo config, resolving paths against `base_dir`.
    pub fn demo(base_dir: &Path) -> Result<Config, FileError> {
        Self::from_str_at(
            Path::new("<embedded demo moltgate.yaml>"),
            DEMO_CONFIG,
            base_dir.to_path_buf(),
        )
    }

    /// Parses and validates config `text` that was read from `path`.
    pub fn from_str_at(path: &Path, text: &str, base_dir: PathBuf) -> Result<Config, FileError> {
        let mut config: Config = yaml::parse_str(path, text)?;
        config.base_dir = base_dir;
        config.source = path.to_path_buf();
        config.demo = text == DEMO_CONFIG;
        config.validate(text)?;
        Ok(config)
    }

    /// Whether this is the shipped demo: the embedded config, or a file with
    /// exactly its text (the repository's `moltgate.yaml`, which `scripts/run.sh`
    /// starts), serving on a loopback address. Only the demo may start with a
    /// weak JWT secret (the shipped policies' published default); any edit to
    /// the file, or a public address, makes it a real deployment.
    pub fn is_demo(&self) -> bool {
        self.demo
            && self
                .public_addr()
                .is_ok_and(|a| a.ip().to_canonical().is_loopback())
    }

    /// The admin token, when one is set (an empty one is none).
    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.listen.admin.token()
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() || self.base_dir.as_os_str().is_empty() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The policies directory, resolved.
    pub fn policies_dir(&self) -> PathBuf {
        self.resolve(&self.policies)
    }

    /// The public listener's address, parsed.
    pub fn public_addr(&self) -> Result<SocketAddr, FileError> {
        self.parse_addr(&self.listen.public.address)
    }

    /// The admin listener's address, parsed.
    pub fn admin_addr(&self) -> Result<SocketAddr, FileError> {
        self.parse_addr(&self.listen.admin.address)
    }

    fn parse_addr(&self, raw: &str) -> Result<SocketAddr, FileError> {
        raw.parse().map_err(|_| {
            FileError::whole(
                &self.source,
                format!("invalid listen address '{raw}'; expected host:port, like 127.0.0.1:8443"),
            )
        })
    }

    /// The body limit that applies to `route`.
    pub fn body_limit(&self, route: &RouteConfig) -> usize {
        route.body_limit.unwrap_or(self.limits.body)
    }

    /// Checks what types cannot: references, addresses, platform secrets.
    /// Every problem is reported, not only the first.
    fn validate(&self, text: &str) -> Result<(), FileError> {
        let at = |needle: &str, msg: String| {
            FileError::at(&self.source, yaml::locate(text, needle), msg)
        };
        let mut errors = Vec::new();
        for raw in [&self.listen.public.address, &self.listen.admin.address] {
            if raw.parse::<SocketAddr>().is_err() {
                errors.push(at(
                    raw,
                    format!(
                        "invalid listen address '{raw}'; expected host:port, like 127.0.0.1:8443"
                    ),
                ));
            }
        }
        errors.extend(admin::check(&self.listen.admin, &self.source, text));
        if let Some(p) = &self.upgrade_socket {
            let n = self.resolve(p).as_os_str().len();
            if p.is_empty() || p.ends_with('/') || n > 107 {
                let msg = format!("upgrade_socket '{p}' must name a socket file of at most 107 bytes once resolved (a Unix socket path limit); it resolves to {n}");
                let pos = yaml::locate_key(text, "upgrade_socket");
                errors.push(FileError::at(&self.source, pos, msg));
            }
        }
        errors.extend(self.check_limits(text));
        if let Some(shared) = &self.shared {
            errors.extend(shared::check(
                shared,
                self.longest_claimed_call(),
                &self.source,
                text,
            ));
        }
        if let Some(tokenize) = &self.tokenize {
            errors.extend(tokenize::check(tokenize, &self.source, text));
        }
        let resolve = |p: &str| self.resolve(p);
        errors.extend(mqtt::check(
            &self.mqtt,
            &self.upstreams,
            &resolve,
            &self.source,
            text,
        ));
        for (name, up) in &self.upstreams {
            errors.extend(check_upstream(name, up).into_iter().map(|(node, msg)| {
                let pos = match node {
                    Some(node) => yaml::locate_after_key(text, name, &node),
                    None => yaml::locate_key(text, name),
                };
                FileError::at(&self.source, pos, msg)
            }));
        }
        let mut seen: Vec<&str> = Vec::new();
        for route in &self.routes {
            let path = route.path.0.as_str();
            let n = seen.iter().filter(|p| **p == path).count();
            seen.push(path);
            if n > 0 {
                let pos = yaml::locate_nth(text, path, n + 1).or_else(|| yaml::locate(text, path));
                let msg = format!("route path '{path}' is defined twice");
                errors.push(FileError::at(&self.source, pos, msg));
                continue;
            }
            errors.extend(
                self.check_route(route)
                    .map(|(needle, msg)| at(&needle, msg)),
            );
        }
        FileError::sort_by_position(&mut errors);
        FileError::check(errors)
    }

    /// The longest a message with a platform id (so a dedupe claim) can be
    /// in flight: the `timeout` of the upstreams that platform routes use,
    /// with the upstream that sets it.
    fn longest_claimed_call(&self) -> Option<(Duration, String)> {
        self.routes
            .iter()
            .filter(|r| !matches!(r.platform, PlatformKind::Generic | PlatformKind::Websocket))
            .filter_map(|r| {
                let up = self.upstreams.get(&r.upstream.0)?;
                Some((up.timeout.0, format!("upstream '{}' timeout", r.upstream)))
            })
            .max_by_key(|(d, _)| *d)
    }

    /// Connection limits that would refuse or cut every connection.
    fn check_limits(&self, text: &str) -> Vec<FileError> {
        let l = &self.limits;
        let checks = [
            ("handshake_timeout", l.handshake_timeout.0.is_zero()),
            ("header_timeout", l.header_timeout.0.is_zero()),
            ("max_connections", l.max_connections == 0),
            ("max_connections_per_ip", l.max_connections_per_ip == 0),
        ];
        checks
            .into_iter()
            .filter(|(_, zero)| *zero)
            .map(|(key, _)| {
                FileError::at(
                    &self.source,
                    yaml::locate_key(text, key),
                    format!("limits.{key} must be above zero: zero would refuse every connection"),
                )
            })
            .collect()
    }

    /// A route's own problems, as (text to locate, message).
    fn check_route(&self, route: &RouteConfig) -> Option<(String, String)> {
        let path = &route.path.0;
        if !path.starts_with('/') {
            return Some((
                path.clone(),
                format!("route path '{path}' must start with '/'"),
            ));
        }
        let Some(up) = self.upstreams.get(&route.upstream.0) else {
            let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
            let hint = yaml::did_you_mean(&route.upstream, known.iter().copied())
                .map(|s| format!(" (did you mean '{s}'?)"))
                .unwrap_or_default();
            return Some((
                route.upstream.0.clone(),
                format!(
                    "route '{path}' names unknown upstream '{}'{hint}; defined: {}",
                    route.upstream,
                    known.join(", ")
                ),
            ));
        };
        let want = match route.mode {
            RouteMode::Translate => UpstreamKind::Grpc,
            RouteMode::Passthrough => UpstreamKind::Http,
        };
        if up.kind != want {
            return Some((
                path.clone(),
                format!(
                    "route '{path}' in {:?} mode needs a {:?} upstream, but '{}' is {:?}",
                    route.mode, want, route.upstream, up.kind
                )
                .to_lowercase(),
            ));
        }
        if route.mode == RouteMode::Passthrough && route.platform == PlatformKind::Generic {
            return Some((
                path.clone(),
                format!("route '{path}': passthrough needs a chat platform, not generic"),
            ));
        }
        websocket::check_route(route).map(|msg| (path.clone(), msg))
    }
}

/// An upstream's problems, as (the node at fault, if one; message): it needs
/// nodes, each `host:port` or (for gRPC) `embedded`.
fn check_upstream(name: &str, up: &UpstreamConfig) -> Vec<(Option<String>, String)> {
    if up.nodes.is_empty() {
        return vec![(None, format!("upstream '{name}' has no nodes"))];
    }
    let mut out = Vec::new();
    for node in &up.nodes {
        let embedded = node.0 == EMBEDDED_NODE;
        if embedded && up.kind == UpstreamKind::Http {
            out.push((
                Some(node.0.clone()),
                format!(
                    "upstream '{name}': node 'embedded' is a gRPC assistant; kind must be grpc"
                ),
            ));
        }
        if !embedded
            && node
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
        {
            out.push((
                Some(node.0.clone()),
                format!("upstream '{name}': node '{node}' must be host:port or 'embedded'"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
