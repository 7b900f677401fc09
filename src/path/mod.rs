//! The message path: every message, whatever its platform, mode or
//! channel, takes every stage, in this order.
//!
//! ```text
//! route ─▶ admit (IP) ─▶ read body ─▶ authenticate (platform verify | JWT) + parse
//!   ─▶ dedupe claim ─▶ identity ─▶ rate ─▶ confirm-reply ─▶ authorise
//!   ─▶ DLP ingress ─▶ context ─▶ dispatch (AI cluster | bot) ─▶ DLP egress ─▶ answer
//!   ─▶ finish: commit or release the claim, one audit line, one set of metrics
//! ```
//!
//! Each stage is a plain function in a module named for it, testable without
//! sockets; each returns a [`Stop`] to end a message, and [`Gateway::finish`]
//! is the one place an end is rendered, settled, audited and counted. The
//! stages are assembled in [`Gateway::run`]. The Pingora glue in `server`
//! only routes, reads bodies (the first three stages) and writes answers.

pub mod adapter_routes;
pub mod admit;
pub mod answer;
pub mod authenticate;
pub mod authorize;
pub mod claim;
pub mod confirm;
pub mod context;
pub mod egress;
pub mod exchange;
mod finish;
mod frame;
pub mod identity;
pub mod inspect;
pub mod passthrough;
pub mod rate;
pub mod reply;
pub mod routes;
pub mod stop;
pub mod streamed;
#[cfg(test)]
mod testkit;
mod tokens;

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response};

pub use answer::Done;
pub use exchange::{Exchange, IncomingRequest};
pub use finish::Ended;
pub use frame::{Frame, FrameRefusal};
pub use routes::{Route, Target, PASSTHROUGH_BODY_LIMIT};
pub use stop::{Stop, StopKind};

use crate::config::{Config, FileError, PlatformKind};
use crate::context::confirm::{self as confirm_store, ConfirmStore};
use crate::context::{ContextLimits, ContextStore};
use crate::observe::Metrics;
use crate::platform::PlatformMessage;
use crate::policy::{PolicySet, PolicyStore};
use crate::proto::v1::Envelope;
use crate::shared::Shared;
use crate::upstream::bot::BotClient;
use crate::upstream::Cluster;
use crate::writeback::Writeback;
use authorize::Grant;
use identity::Who;

/// The gateway: routes, policies, stores and metrics, and the path they form.
pub struct Gateway {
    table: routes::RouteTable,
    /// Routes that adapter files declare (rebuilt per policy set).
    adapter_routes: adapter_routes::AdapterRoutes,
    /// The live policies.
    pub policies: Arc<PolicyStore>,
    /// The metrics.
    pub metrics: Metrics,
    /// Body timeouts and cache sizes.
    pub limits: crate::config::Limits,
    /// Sends replies through platform APIs.
    pub writeback: Writeback,
    /// Conversation context.
    pub context: Arc<ContextStore>,
    /// Messages held for a second-step confirmation.
    pub confirm: ConfirmStore,
    /// The state edge nodes share (`shared:`), if configured.
    pub shared: Option<Arc<Shared>>,
    conversations: context::Conversations,
    bots: Arc<dyn BotClient>,
    /// Reversible tokenisation (`tokenize:`), if configured.
    tokenizer: Option<Arc<crate::tokenize::Tokenizer>>,
}

impl Gateway {
    /// Builds everything the config describes, with `bots` as the client for
    /// passthrough bots. Needs a Tokio runtime context (gRPC channels connect
    /// lazily), but no reachable upstream.
    pub fn build(
        config: &Config,
        metrics: Metrics,
        bots: Arc<dyn BotClient>,
    ) -> Result<Self, FileError> {
        let policies = Arc::new(PolicyStore::load(&config.policies_dir(), metrics.clone())?);
        // A weak HS secret is refused here, so by `run` and `check` alike.
        policies
            .current()
            .jwt
            .require_strong_secret(config.is_demo())?;
        let table = routes::RouteTable::build(config, &metrics)?;
        let mut route_paths: Vec<String> = table.routes.keys().cloned().collect();
        route_paths.extend(
            config
                .mqtt
                .iter()
                .map(|l| crate::mqtt::ingress::route_path(&l.name.0)),
        );
        policies.lint_against(route_paths);
        let mut limits = ContextLimits::from_config(&config.context);
        if let Some(idle) = config.context.idle {
            limits.idle = idle.0;
        }
        if let Some(max_bytes) = config.context.max_bytes {
            limits.max_bytes = max_bytes;
        }
        let shared = match &config.shared {
            Some(cfg) => Some(Arc::new(
                Shared::connect(cfg, metrics.clone())
                    .map_err(|e| FileError::at(&config.source, None, e.to_string()))?,
            )),
            None => None,
        };
        let context = Arc::new(ContextStore::with_limits(limits, metrics.clone()));
        let tokenizer = tokens::build_tokenizer(config, shared.as_ref())?;
        crate::tokenize::check_policy(tokenizer.is_some(), &policies.current().dlp)
            .map_err(|e| FileError::at(&config.source, None, e))?;
        routes::check_streamed(&table, &policies.current().dlp, &config.policies_dir())?;
        check_adapter_routes(&table, &policies.current())?;
        let adapter_routes = adapter_routes::AdapterRoutes::new(config, &table);
        Ok(Self {
            tokenizer,
            conversations: context::Conversations {
                local: context.clone(),
                shared: shared.clone(),
            },
            context,
            shared,
            confirm: ConfirmStore::new(
                config.context.confirm_ttl.0,
                confirm_store::DEFAULT_MAX_PENDING,
                confirm_store::DEFAULT_ATTEMPTS,
            ),
            table,
            adapter_routes,
            policies,
            writeback: Writeback::new(metrics.clone(), Default::default()),
            metrics,
            limits: config.limits.clone(),
            bots,
        })
    }

    /// The route for `path` under `policies`: a configured one, else one an
    /// adapter file of that policy set declares.
    pub fn route(&self, policies: &PolicySet, path: &str) -> Option<Arc<Route>> {
        match self.table.routes.get(path) {
            Some(route) => Some(route.clone()),
            None => self.adapter_routes.route(&policies.adapters, path),
        }
    }

    /// The gRPC cluster of upstream `name`, if it is one.
    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.table.clusters.get(name).cloned()
    }

    /// The gRPC clusters, for health checking.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.table.clusters.values()
    }

    /// Ready: policies are loaded (always, once built), every cluster
    /// that a route uses has a healthy node, and the shared tier answers
    /// or its failures are not refusals (`on_error` other than `deny`).
    pub fn is_ready(&self) -> bool {
        let shared = self
            .shared
            .as_ref()
            .is_none_or(|s| s.is_up() || s.on_error() != crate::config::OnError::Deny);
        self.upstreams_ready() && shared
    }

    /// Every cluster that a route uses has a healthy node.
    pub fn upstreams_ready(&self) -> bool {
        self.table.routes.values().all(|r| match &r.target {
            Target::Assistant(c) => c.is_healthy(),
            Target::Bot(_) => true,
        })
    }

    /// The policy set in force now.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.policies.current()
    }

    /// Starts a request's record on `path`. A request takes one policy
    /// snapshot here and uses it for every decision, so a reload never
    /// splits a request between two sets.
    pub fn begin(&self, path: &str) -> Exchange {
        let policies = self.policies.current();
        Exchange::new(self.route(&policies, path), policies)
    }

    /// Stage `admit`: the IP policy, before any body is read.
    pub fn admit(
        &self,
        ex: &mut Exchange,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<IpAddr, Stop> {
        let allow = ex.route.as_ref().map_or(&[][..], |r| &r.ip_allow[..]);
        let (ip, admitted) = admit::admit(&ex.policies, allow, peer, headers);
        ex.client_ip = Some(ip);
        if let Err(Stop::IpDenied { reason }) = &admitted {
            ex.decide("ip", false, *reason);
        }
        admitted.map(|()| ip)
    }

    /// Ends a request that stopped before the path ran (unknown path, wrong
    /// method, oversized or slow body, refused address).
    pub async fn refuse(&self, ex: Exchange, stop: Stop) -> Response<Bytes> {
        self.finish(ex, Err(stop)).await
    }

    /// Runs the path for a request whose body was read, and finishes it.
    pub async fn handle(&self, mut ex: Exchange, req: IncomingRequest) -> Response<Bytes> {
        let end = self.run(&mut ex, &req).await;
        self.finish(ex, end).await
    }

    /// Runs the path for a message that came on `route` by another channel
    /// than HTTP (an MQTT listener), and says how it ended.
    pub async fn handle_on(
        &self,
        route: Arc<Route>,
        req: IncomingRequest,
    ) -> (Response<Bytes>, finish::Ended) {
        let mut ex = Exchange::new(Some(route), self.policies.current());
        ex.client_ip = Some(req.client_ip);
        let end = self.run(&mut ex, &req).await;
        self.finish_ended(ex, end).await
    }

    /// The stack, top to bottom.
    async fn run(&self, ex: &mut Exchange, req: &IncomingRequest) -> Result<Done, Stop> {
        let route = ex.route.clone().ok_or(Stop::UnknownPath)?;
        let policies = ex.policies.clone();
        let shared = self.shared.as_ref();
        let msg = match authenticate::authenticate(&route, req, &policies) {
            Ok(msg) => msg,
            Err(stop) => {
                let stop = rate::unverified(&policies, shared, req.client_ip, stop).await;
                ex.record_stop(&stop);
                return Err(stop);
            }
        };
        ex.heard(&msg);
        let done_ttl = route.adapter.dedupe_ttl();
        ex.claim = claim::claim(&route.dedupe, shared, &route.path, done_ttl, &msg).await?;
        let who = identity::identify(&policies, route.platform_name(), &msg);
        rate::limit(&policies, shared, &who, &msg, req.client_ip, &route)
            .await
            .inspect_err(|stop| ex.record_stop(stop))?;
        if let Some((cluster, held)) = self.release_held(&route, &who, &msg).await? {
            return self
                .deliver_held(ex, &route, cluster, msg, &who, held)
                .await;
        }
        let access = authorize::access_request(
            route.platform_name(),
            &who,
            &msg,
            &route.path,
            req.client_ip,
        );
        let grant = authorize::authorize(&policies, &access, ex)?;
        match &route.target {
            Target::Bot(_) => self.to_bot(ex, &route, req, &msg, &who, &grant).await,
            Target::Assistant(cluster) => {
                self.to_assistant(ex, &route, cluster, msg, &who, grant)
                    .await
            }
        }
    }

    /// Translate: DLP ingress, the Envelope with its context, dispatch,
    /// replies through DLP egress.
    async fn to_assistant(
        &self,
        ex: &mut Exchange,
        route: &Route,
        cluster: &Cluster,
        mut msg: PlatformMessage,
        who: &Who,
        grant: Grant,
    ) -> Result<Done, Stop> {
        let restore = self.tokenize_ingress(ex, route, &mut msg, who).await;
        let inspection = inspect::message(&ex.policies, &mut msg);
        ex.found.extend(inspection.found.iter().cloned());
        ex.rules.extend(inspection.rules.iter().cloned());
        inspection.verdict()?;
        let env = envelope_for(route, &msg, who, &grant, inspection.text_findings);
        ex.envelope_id = env.id.clone();
        if grant.confirm {
            return Err(confirm::hold(&self.confirm, self.shared.as_deref(), who, env).await);
        }
        let env = self.conversations.attach(env).await;
        self.dispatch(ex, route, cluster, msg, env, restore).await
    }

    /// Stage confirm-reply: the Envelope a confirmation code releases, with
    /// the cluster that takes it. Only routes to the AI cluster hold
    /// messages, so a code sent to a bot's route is just a message for the bot.
    async fn release_held<'r>(
        &self,
        route: &'r Route,
        who: &Who,
        msg: &PlatformMessage,
    ) -> Result<Option<(&'r Cluster, Envelope)>, Stop> {
        let Target::Assistant(cluster) = &route.target else {
            return Ok(None);
        };
        let held = confirm::release(&self.confirm, self.shared.as_deref(), who, &msg.text).await?;
        Ok(held.map(|env| (cluster.as_ref(), env)))
    }

    /// A message released by its confirmation code goes on as the original,
    /// answered on the channel the code came from.
    async fn deliver_held(
        &self,
        ex: &mut Exchange,
        route: &Route,
        cluster: &Cluster,
        mut msg: PlatformMessage,
        who: &Who,
        held: Envelope,
    ) -> Result<Done, Stop> {
        ex.note = "confirmed";
        msg.text = held
            .content
            .as_ref()
            .map(|c| c.text.clone())
            .unwrap_or_default();
        ex.envelope_id = held.id.clone();
        // Fresh context: the conversation may have moved on while it waited.
        let env = self.conversations.attach(held).await;
        // The held text was tokenised when it came: its reply restores too.
        let restore = self.restore_for(ex, route, &msg, who);
        self.dispatch(ex, route, cluster, msg, env, restore).await
    }

    /// Sends `env` to the cluster and answers with its replies.
    async fn dispatch(
        &self,
        ex: &mut Exchange,
        route: &Route,
        cluster: &Cluster,
        msg: PlatformMessage,
        env: Envelope,
        restore: Option<tokens::Restore>,
    ) -> Result<Done, Stop> {
        let accepted = cluster.dispatch(&env).await.map_err(|e| {
            tracing::warn!(error = %e, route = %route.path, "no upstream node accepted the message");
            ex.ai_response_code = e.code();
            Stop::Unavailable {
                retry_after: e.retry_after(),
                code: e.code(),
                status: http::StatusCode::SERVICE_UNAVAILABLE,
            }
        })?;
        ex.node = accepted.node.clone();
        let replier = reply::Replier {
            policies: &ex.policies,
            adapter: &route.adapter,
            context: &self.conversations,
            writeback: &self.writeback,
            metrics: &self.metrics,
            inline_by: ex.started() + route.deadline.mul_f32(0.8),
            parts: ex.reply_parts.as_ref(),
            restore: restore.as_ref(),
            deltas: route.platform == PlatformKind::Openai,
        };
        let mut found = Vec::new();
        let (done, code) = replier.answer(msg, env, accepted, &mut found).await;
        ex.found.extend(found);
        ex.ai_response_code = code;
        Ok(done)
    }

    /// Passthrough: DLP ingress over the whole body, the bot, DLP egress
    /// over its answer.
    async fn to_bot(
        &self,
        ex: &mut Exchange,
        route: &Route,
        req: &IncomingRequest,
        msg: &PlatformMessage,
        who: &Who,
        grant: &Grant,
    ) -> Result<Done, Stop> {
        let Target::Bot(bot) = &route.target else {
            return Err(Stop::NoUpstream);
        };
        if grant.confirm {
            // A proxied request cannot be replayed later: fail closed.
            return Err(Stop::Denied {
                rule: "confirm_unsupported_in_passthrough".into(),
            });
        }
        let (replaced, known) = self.tokenize_payload(ex, route, req, msg, who).await;
        let (inspection, resealed) =
            inspect::payload(&ex.policies, route.adapter.as_ref(), req, &replaced);
        ex.found.extend(inspection.found);
        ex.rules.extend(inspection.rules);
        let resealed = resealed?;
        if resealed.is_some() {
            ex.note = "resealed";
        }
        let forward = passthrough::Forward {
            path: &route.path,
            req,
            resealed,
            adapter: route.adapter.as_ref(),
            msg,
            known,
        };
        let mut found = Vec::new();
        let sent =
            passthrough::forward(self.bots.as_ref(), bot, &ex.policies, forward, &mut found).await;
        ex.found.extend(found);
        let (peer, done) = sent?;
        ex.node = peer;
        Ok(done)
    }
}

/// Every adapter route of the loaded policy set must resolve to an upstream
/// and leave configured routes alone (at start, so `run` and `check`; a
/// reload that breaks this logs the route as not served).
fn check_adapter_routes(table: &routes::RouteTable, policies: &PolicySet) -> Result<(), FileError> {
    for adapter in policies.adapters.iter() {
        let Some(spec) = &adapter.route else {
            continue;
        };
        if table.routes.contains_key(&spec.path) {
            return Err(FileError::whole(
                &adapter.file,
                format!(
                    "route '{}' is also a route in moltgate.yaml; give the adapter another path",
                    spec.path
                ),
            ));
        }
        adapter_routes::target_of(spec, &table.clusters, &table.bots)
            .map_err(|e| FileError::whole(&adapter.file, e))?;
    }
    Ok(())
}

/// The Envelope for a message that passed every ingress stage.
fn envelope_for(
    route: &Route,
    msg: &PlatformMessage,
    who: &Who,
    grant: &Grant,
    findings: Vec<crate::proto::v1::DlpFinding>,
) -> Envelope {
    let platform = route.platform_name();
    let key = crate::context::conversation_key(platform, msg, who.person.as_deref());
    let device_type = msg
        .principal
        .as_ref()
        .map(|p| p.device_type.clone())
        .unwrap_or_default();
    let mut env = crate::envelope::build(
        platform,
        &route.path,
        key,
        msg,
        grant.roles.clone(),
        device_type,
    );
    if let Some(sender) = env.sender.as_mut() {
        sender.person_id = who.person.clone().unwrap_or_default();
    }
    env.verdict = Some(crate::proto::v1::Verdict {
        dlp_findings: findings,
        matched_rules: grant.rules.clone(),
    });
    env
}
