//! The routes adapter files declare (`<policies>/adapters/*.yaml` with a
//! `route:`), resolved against `moltgate.yaml`'s upstreams.
//!
//! The adapter set is part of the policy set, so it changes with a reload;
//! the routes are rebuilt the first time a request sees a new set, and a
//! request resolves its route from the same snapshot it takes every other
//! decision from. What must outlive a reload does: each route's dedupe
//! table is kept by adapter name and path, so a redelivery that arrives
//! just after a reload is still recognised. A route whose upstream does not
//! exist, or does not fit its mode, is not served (an error in the log;
//! `moltgate check` reports it at the file), and a configured route with
//! the same path always wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::routes::{HttpUpstream, Route, RouteTable, Target, PASSTHROUGH_BODY_LIMIT};
use crate::adapters::{AdapterSet, CompiledAdapter, RouteSpec};
use crate::config::{Config, PlatformKind, RouteMode};
use crate::dedupe::Dedupe;
use crate::platform::PlatformAdapter;
use crate::upstream::Cluster;

/// The routes of one adapter set.
struct Built {
    set: Arc<AdapterSet>,
    routes: HashMap<String, Arc<Route>>,
}

/// Adapter routes, rebuilt per adapter set.
pub struct AdapterRoutes {
    built: ArcSwap<Built>,
    /// Dedupe tables by `name path`, kept across rebuilds.
    dedupes: Mutex<HashMap<String, Dedupe>>,
    rebuilding: Mutex<()>,
    clusters: HashMap<String, Arc<Cluster>>,
    bots: HashMap<String, Arc<HttpUpstream>>,
    body_limit: usize,
    dedupe_capacity: u64,
}

impl AdapterRoutes {
    /// Adapter routes over `table`'s upstreams, with `config`'s limits.
    pub fn new(config: &Config, table: &RouteTable) -> Self {
        Self {
            built: ArcSwap::from_pointee(Built {
                set: Arc::new(AdapterSet::empty()),
                routes: HashMap::new(),
            }),
            dedupes: Mutex::new(HashMap::new()),
            rebuilding: Mutex::new(()),
            clusters: table.clusters.clone(),
            bots: table.bots.clone(),
            body_limit: config.limits.body,
            dedupe_capacity: config.limits.dedupe_capacity,
        }
    }

    /// The route `set` declares at `path`, if any.
    pub fn route(&self, set: &Arc<AdapterSet>, path: &str) -> Option<Arc<Route>> {
        if set.is_empty() {
            return None;
        }
        let built = self.built.load();
        if Arc::ptr_eq(&built.set, set) {
            return built.routes.get(path).cloned();
        }
        drop(built);
        self.rebuild(set).routes.get(path).cloned()
    }

    fn rebuild(&self, set: &Arc<AdapterSet>) -> Arc<Built> {
        let _one = self.rebuilding.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.built.load_full();
        if Arc::ptr_eq(&current.set, set) {
            return current;
        }
        let mut routes = HashMap::new();
        for adapter in set.iter() {
            let Some(spec) = &adapter.route else {
                continue;
            };
            match self.resolve(adapter, spec) {
                Ok(route) => {
                    routes.insert(spec.path.clone(), Arc::new(route));
                }
                Err(e) => tracing::error!(
                    adapter = adapter.name,
                    file = %adapter.file.display(),
                    error = %e,
                    "adapter route not served"
                ),
            }
        }
        let built = Arc::new(Built {
            set: set.clone(),
            routes,
        });
        self.built.store(built.clone());
        built
    }

    fn resolve(&self, adapter: &CompiledAdapter, spec: &RouteSpec) -> Result<Route, String> {
        let target = target_of(spec, &self.clusters, &self.bots)?;
        let platform: Arc<dyn PlatformAdapter> = adapter.adapter.clone();
        let limit = spec.body_limit.unwrap_or(self.body_limit);
        let body_limit = match target {
            Target::Bot(_) => limit.min(PASSTHROUGH_BODY_LIMIT),
            Target::Assistant(_) => limit,
        };
        let dedupe = {
            let mut tables = self.dedupes.lock().unwrap_or_else(|p| p.into_inner());
            tables
                .entry(format!("{} {}", adapter.name, spec.path))
                .or_insert_with(|| Dedupe::new(self.dedupe_capacity, platform.dedupe_ttl()))
                .clone()
        };
        Ok(Route {
            path: spec.path.clone(),
            platform: PlatformKind::Declarative,
            body_limit,
            deadline: spec.deadline.unwrap_or_else(|| platform.default_deadline()),
            target,
            dedupe,
            websocket: Default::default(),
            ip_allow: spec.ip_allow.clone(),
            adapter: platform,
        })
    }
}

/// Where an adapter route's messages go, or why it cannot be served.
pub fn target_of(
    spec: &RouteSpec,
    clusters: &HashMap<String, Arc<Cluster>>,
    bots: &HashMap<String, Arc<HttpUpstream>>,
) -> Result<Target, String> {
    let found = match spec.mode {
        RouteMode::Translate => clusters.get(&spec.upstream).cloned().map(Target::Assistant),
        RouteMode::Passthrough => bots.get(&spec.upstream).cloned().map(Target::Bot),
    };
    found.ok_or_else(|| {
        let kind = match spec.mode {
            RouteMode::Translate => "a `kind: grpc`",
            RouteMode::Passthrough => "a `kind: http`",
        };
        format!(
            "route '{}': upstream '{}' is not {kind} upstream in moltgate.yaml ({:?} mode needs one)",
            spec.path, spec.upstream, spec.mode
        )
    })
}
