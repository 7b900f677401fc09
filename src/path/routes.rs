//! The routing table: each configured path resolved, once at start, to its
//! platform adapter and its target, so that the message path never asks
//! "API or webhook?" or "translate or passthrough?" of a config string.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::config::{Config, FileError, PlatformKind, RouteConfig, RouteMode, UpstreamKind};
use crate::dedupe::Dedupe;
use crate::observe::Metrics;
use crate::platform::PlatformAdapter;
use crate::upstream::Cluster;

/// Passthrough bodies are held in memory to be inspected and re-sent;
/// bigger ones are refused with 413.
pub const PASSTHROUGH_BODY_LIMIT: usize = 64 * 1024;

/// An HTTP bot behind a passthrough route.
pub struct HttpUpstream {
    /// The upstream's name in `moltgate.yaml`.
    pub name: String,
    /// `host:port` of each node.
    pub nodes: Vec<String>,
    /// How long one call to the bot may take.
    pub timeout: Duration,
    next: AtomicUsize,
}

impl HttpUpstream {
    /// A bot upstream with `nodes` (`host:port`).
    pub fn new(name: &str, nodes: Vec<String>, timeout: Duration) -> Self {
        Self {
            name: name.to_string(),
            nodes,
            timeout,
            next: AtomicUsize::new(0),
        }
    }

    /// The next node, round robin.
    pub fn pick(&self) -> Option<&str> {
        let n = self.nodes.len();
        (n > 0).then(|| self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % n].as_str())
    }
}

/// Where a route's messages go.
pub enum Target {
    /// Translate into an Envelope for the AI cluster (gRPC).
    Assistant(Arc<Cluster>),
    /// Proxy the (inspected) request to an existing bot (HTTP).
    Bot(Arc<HttpUpstream>),
}

/// One configured route, resolved against its upstream and platform.
pub struct Route {
    /// The exact path.
    pub path: String,
    /// The platform it speaks.
    pub platform: PlatformKind,
    /// Largest accepted body.
    pub body_limit: usize,
    /// How long the platform waits for the webhook's answer.
    pub deadline: Duration,
    /// Where its messages go.
    pub target: Target,
    /// The platform adapter (the generic API is one too).
    pub adapter: Arc<dyn PlatformAdapter>,
    /// Redelivered message ids.
    pub dedupe: Dedupe,
    /// WebSocket settings (defaults unless `platform: websocket`).
    pub websocket: crate::config::WebSocketSettings,
    /// Networks allowed to call this route, on top of the IP policy; empty:
    /// any (an adapter file's `route.ip_allow`).
    pub ip_allow: Vec<ipnet::IpNet>,
}

impl Route {
    /// The platform's name in metrics, audit lines, envelopes, identities
    /// and conversation keys: the adapter file's `name` for a declarative
    /// platform.
    pub fn platform_name(&self) -> &'static str {
        match self.platform {
            PlatformKind::Declarative => self.adapter.platform(),
            kind => kind.as_str(),
        }
    }

    /// Methods this route accepts.
    pub fn methods(&self) -> &'static [Method] {
        self.adapter.methods()
    }

    /// Whether the route's replies reach the client as a stream (SSE
    /// deltas, WebSocket frames), masked by `StreamMasker` as they pass.
    pub fn streams(&self) -> bool {
        matches!(
            self.platform,
            PlatformKind::Openai | PlatformKind::Websocket
        )
    }

    /// Whether the route proxies to a bot.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.target, Target::Bot(_))
    }
}

/// Every route and cluster a config describes.
pub struct RouteTable {
    /// Routes by exact path.
    pub routes: HashMap<String, Arc<Route>>,
    /// gRPC clusters by upstream name, for health checking.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// HTTP bots by upstream name.
    pub bots: HashMap<String, Arc<HttpUpstream>>,
}

impl RouteTable {
    /// Resolves every route of `config`. Needs a Tokio runtime context
    /// (gRPC channels connect lazily), but no reachable upstream.
    pub fn build(config: &Config, metrics: &Metrics) -> Result<Self, FileError> {
        let mut clusters = HashMap::new();
        let mut bots = HashMap::new();
        for (name, up) in &config.upstreams {
            match up.kind {
                UpstreamKind::Grpc => {
                    let cluster = Cluster::new(
                        name,
                        up,
                        &config.source,
                        |p| config.resolve(p),
                        metrics.clone(),
                    )?;
                    clusters.insert(name.clone(), Arc::new(cluster));
                }
                UpstreamKind::Http => {
                    let nodes = up.nodes.iter().map(|n| n.0.clone()).collect();
                    let bot = HttpUpstream::new(name, nodes, up.timeout.0);
                    bots.insert(name.clone(), Arc::new(bot));
                }
            }
        }
        let mut routes = HashMap::new();
        for rc in &config.routes {
            let route = resolve(config, rc, &clusters, &bots)?;
            routes.insert(route.path.clone(), Arc::new(route));
        }
        Ok(Self {
            routes,
            clusters,
            bots,
        })
    }
}

/// Refuses egress DLP patterns without a maximum length when a route
/// streams: streaming masking holds back only the tail that could still
/// become a match, which needs a bound (a longer match could leak its
/// start). The error is placed at the first such rule in `dlp.yaml`.
pub fn check_streamed(
    table: &RouteTable,
    dlp: &crate::policy::dlp::DlpPolicy,
    policies_dir: &std::path::Path,
) -> Result<(), FileError> {
    let Some(route) = table.routes.values().find(|r| r.streams()) else {
        return Ok(());
    };
    let unbounded = dlp.unbounded_rules(crate::policy::dlp::Direction::Egress);
    let Some(first) = unbounded.first() else {
        return Ok(());
    };
    let path = policies_dir.join(crate::policy::DLP_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let pos = crate::config::yaml::locate_key(&text, first);
    Err(FileError::at(
        &path,
        pos,
        format!(
            "pattern of rule{} '{}' has no maximum length (`+`, `*` or `{{n,}}`), but route '{}' streams replies; give {} a bound such as `{{1,64}}`",
            if unbounded.len() > 1 { "s" } else { "" },
            unbounded.join("', '"),
            route.path,
            if unbounded.len() > 1 { "them" } else { "it" },
        ),
    ))
}

fn resolve(
    config: &Config,
    rc: &RouteConfig,
    clusters: &HashMap<String, Arc<Cluster>>,
    bots: &HashMap<String, Arc<HttpUpstream>>,
) -> Result<Route, FileError> {
    let err = |msg: String| FileError::whole(&config.source, format!("route '{}': {msg}", rc.path));
    let adapter = crate::platform::build(
        rc.platform,
        &rc.secrets.to_map(),
        rc.api_base.as_ref().map(|s| s.0.as_str()),
    )
    .map_err(|e| err(e.to_string()))?;
    let upstream = &rc.upstream.0;
    let target = match rc.mode {
        RouteMode::Translate => clusters.get(upstream).cloned().map(Target::Assistant),
        RouteMode::Passthrough => bots.get(upstream).cloned().map(Target::Bot),
    }
    .ok_or_else(|| {
        err(format!(
            "upstream '{upstream}' does not fit {:?} mode",
            rc.mode
        ))
    })?;
    let body_limit = match target {
        // A chat-completions request carries the whole conversation (an
        // OpenClaw turn's system prompt alone is about 50 KB): the route's
        // own limit, not a webhook's.
        Target::Bot(_) if rc.platform == PlatformKind::Openai => config.body_limit(rc),
        Target::Bot(_) => config.body_limit(rc).min(PASSTHROUGH_BODY_LIMIT),
        Target::Assistant(_) => config.body_limit(rc),
    };
    Ok(Route {
        path: rc.path.0.clone(),
        platform: rc.platform,
        body_limit,
        deadline: rc
            .deadline
            .map_or_else(|| adapter.default_deadline(), |d| d.0),
        target,
        dedupe: Dedupe::new(config.limits.dedupe_capacity, adapter.dedupe_ttl()),
        websocket: rc.websocket.clone().unwrap_or_default(),
        ip_allow: Vec::new(),
        adapter,
    })
}
