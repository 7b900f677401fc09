//! The message path, assembled in one readable place.
//!
//! ```text
//! IP policy (before the body) ─▶ authenticate + parse (JWT | platform verify)
//!   ─▶ dedupe ─▶ identity ─▶ rate limits ─▶ ABAC + RBAC ─▶ DLP ingress
//!   ─▶ context ─▶ forward (cluster: balance, failover, `accepted`)
//!   ─▶ replies ─▶ DLP egress ─▶ writeback (inline within the deadline, else API)
//! ```
//!
//! [`Gateway::handle`] is a plain async function from a fully read request
//! to an [`Outcome`]: the Pingora glue in `server` only reads bodies, writes
//! answers and proxies passthrough requests, so every stage here is testable
//! without sockets. Each stage either lets the message go on or ends it with
//! an answer, an audit line and a metric.

// Stages return `Err(response)` to end a message early; a Response is a few
// hundred bytes on a path that is not hot, so boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::{Config, FileError, PlatformKind, RouteConfig, RouteMode, UpstreamKind};
use crate::context::confirm::{self, ConfirmOutcome, ConfirmStore, HeldMessage};
use crate::context::{ContextLimits, ContextStore};
use crate::dedupe::{Claim, Dedupe, Seen};
use crate::envelope;
use crate::observe::{Audit, Metrics};
use crate::platform::{
    self, generic, Inbound, PlatformAdapter, PlatformMessage, WebhookRequest, WebhookResponse,
};
use crate::policy::abac::{AccessRequest, Environment, Subject};
use crate::policy::dlp::Direction;
use crate::policy::rate::RateKeys;
use crate::policy::{PolicySet, PolicyStore};
use crate::proto::v1::{DlpFinding, Envelope, Verdict};
use crate::upstream::{Accepted, Cluster, Collected, DispatchError};
use crate::writeback::Writeback;

/// What the user is told when a reply is withheld by egress DLP.
pub const WITHHELD_REPLY: &str =
    "[reply withheld: it contained data the policy does not allow to leave]";
/// What a rate-limited platform user is told (once per window).
pub const SLOW_DOWN: &str =
    "You are sending messages faster than allowed. Please wait a moment and try again.";
/// What a user is told when policy denies their message.
pub const DENIED: &str = "Sorry, this request is not allowed by policy.";

/// A request with its whole body read, as the pipeline sees it.
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    /// Method.
    pub method: Method,
    /// Raw query string, without `?`.
    pub query: Option<String>,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body (already checked against the route's limit).
    pub body: Bytes,
    /// The client's address (the socket peer, or `X-Forwarded-For` from a trusted proxy).
    pub client_ip: IpAddr,
}

impl IncomingRequest {
    /// The request as a platform adapter sees it, at time `now`.
    pub fn as_webhook(&self, now: SystemTime) -> WebhookRequest<'_> {
        WebhookRequest {
            method: &self.method,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: &self.body,
            now,
            bearer: None,
        }
    }
}

/// An HTTP bot behind a passthrough route.
pub struct HttpUpstream {
    /// `host:port` of each node.
    pub nodes: Vec<String>,
    next: AtomicUsize,
}

impl HttpUpstream {
    /// The next node, round robin.
    pub fn pick(&self) -> Option<&str> {
        let n = self.nodes.len();
        (n > 0).then(|| self.nodes[self.next.fetch_add(1, Ordering::Relaxed) % n].as_str())
    }
}

/// One configured route, resolved against its upstream and platform.
pub struct Route {
    /// The exact path.
    pub path: String,
    /// The platform it speaks.
    pub platform: PlatformKind,
    /// Translate or passthrough.
    pub mode: RouteMode,
    /// Largest accepted body.
    pub body_limit: usize,
    /// How long the platform waits for the webhook's answer.
    pub deadline: Duration,
    /// The gRPC cluster (translate mode).
    pub cluster: Option<Arc<Cluster>>,
    /// The HTTP bot (passthrough mode).
    pub http_upstream: Option<Arc<HttpUpstream>>,
    /// The platform adapter (every platform but generic).
    pub adapter: Option<Arc<dyn PlatformAdapter>>,
    /// Redelivered message ids.
    pub dedupe: Dedupe,
}

impl Route {
    /// Methods this route accepts.
    pub fn methods(&self) -> &'static [Method] {
        match &self.adapter {
            Some(a) => a.methods(),
            None => &[Method::POST],
        }
    }

    fn platform_name(&self) -> &'static str {
        self.platform.as_str()
    }
}

/// Passthrough bodies are held in memory to be re-sent; bigger ones are refused.
pub const PASSTHROUGH_BODY_LIMIT: usize = 64 * 1024;

/// What to do with a request.
pub enum Outcome {
    /// Answer it from the gateway.
    Respond(Response<Bytes>),
    /// Proxy it to a passthrough route's HTTP bot.
    Proxy(ProxyPlan),
}

/// How to proxy a passthrough request.
#[derive(Debug, Clone)]
pub struct ProxyPlan {
    /// `host:port` of the bot.
    pub peer: String,
    /// A replacement body (re-signed or re-encrypted), if policy changed it.
    pub body: Option<Bytes>,
    /// Headers to set on the proxied request (new signature, timestamp).
    pub headers: Vec<(String, String)>,
    /// A replacement query string (WeCom signs in the query).
    pub query: Option<String>,
}

/// The gateway: routes, clusters, policies, caches and metrics.
pub struct Gateway {
    routes: HashMap<String, Arc<Route>>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// The live policies.
    pub policies: Arc<PolicyStore>,
    /// The metrics.
    pub metrics: Metrics,
    /// Header and body timeouts.
    pub limits: crate::config::Limits,
    /// Sends replies through platform APIs.
    pub writeback: Writeback,
    /// Conversation context.
    pub context: Arc<ContextStore>,
    /// Messages held for a second-step confirmation.
    pub confirm: ConfirmStore,
}

/// A verified message moving down the path, with what the stages learnt.
struct Message {
    platform: &'static str,
    msg: PlatformMessage,
    roles: Vec<String>,
    device_type: String,
    claims: std::collections::BTreeMap<String, serde_json::Value>,
    person: Option<String>,
    client_ip: IpAddr,
    audit: Audit,
    verdict: Verdict,
    /// Who answers a confirmation: `person:<id>` when linked, else `platform:sender`.
    who: String,
}

impl Gateway {
    /// Builds everything the config describes. Needs a Tokio runtime context
    /// (gRPC channels connect lazily), but no reachable upstream.
    pub fn build(config: &Config, metrics: Metrics) -> Result<Self, FileError> {
        let policies = Arc::new(PolicyStore::load(&config.policies_dir(), metrics.clone())?);
        let mut clusters = HashMap::new();
        let mut http_upstreams = HashMap::new();
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
                    http_upstreams.insert(
                        name.clone(),
                        Arc::new(HttpUpstream {
                            nodes: up.nodes.iter().map(|n| n.0.clone()).collect(),
                            next: AtomicUsize::new(0),
                        }),
                    );
                }
            }
        }
        let mut routes = HashMap::new();
        for rc in &config.routes {
            let adapter = build_adapter(rc).map_err(|e| {
                FileError::whole(&config.source, format!("route '{}': {e}", rc.path))
            })?;
            let body_limit = match rc.mode {
                RouteMode::Passthrough => config.body_limit(rc).min(PASSTHROUGH_BODY_LIMIT),
                RouteMode::Translate => config.body_limit(rc),
            };
            let dedupe_ttl = adapter
                .as_ref()
                .map_or(Duration::from_secs(3600), |a| a.dedupe_ttl());
            let deadline = rc
                .deadline
                .map(|d| d.0)
                .or_else(|| adapter.as_ref().map(|a| a.default_deadline()))
                .unwrap_or(Duration::from_secs(3));
            let route = Route {
                path: rc.path.0.clone(),
                platform: rc.platform,
                mode: rc.mode,
                body_limit,
                deadline,
                cluster: clusters.get(&rc.upstream.0).cloned(),
                http_upstream: http_upstreams.get(&rc.upstream.0).cloned(),
                adapter,
                dedupe: Dedupe::new(config.limits.dedupe_capacity, dedupe_ttl),
            };
            routes.insert(route.path.clone(), Arc::new(route));
        }
        let mut limits = ContextLimits::from_config(&config.context);
        if let Some(idle) = config.context.idle {
            limits.idle = idle.0;
        }
        if let Some(max_bytes) = config.context.max_bytes {
            limits.max_bytes = max_bytes;
        }
        Ok(Self {
            context: Arc::new(ContextStore::with_limits(limits, metrics.clone())),
            confirm: ConfirmStore::new(
                config.context.confirm_ttl.0,
                confirm::DEFAULT_MAX_PENDING,
                confirm::DEFAULT_ATTEMPTS,
            ),
            routes,
            clusters,
            policies,
            writeback: Writeback::new(metrics.clone(), Default::default()),
            metrics,
            limits: config.limits.clone(),
        })
    }

    /// The route for `path`, if any.
    pub fn route(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.get(path)
    }

    /// The gRPC clusters, for health checking.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }

    /// Ready: policies are loaded (always, once built) and every cluster
    /// that a route uses has a healthy node.
    pub fn is_ready(&self) -> bool {
        self.routes
            .values()
            .filter_map(|r| r.cluster.as_ref())
            .all(|c| c.is_healthy())
    }

    /// The IP policy, before any body is read: the client's address (socket
    /// peer, or `X-Forwarded-For` from a trusted proxy) if admitted, else a 403.
    pub fn admit(
        &self,
        policies: &PolicySet,
        route: &str,
        platform: &'static str,
        peer: IpAddr,
        headers: &HeaderMap,
    ) -> Result<IpAddr, Response<Bytes>> {
        let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let ip = policies.ip.client_ip(peer, xff);
        match policies.ip.check(ip) {
            crate::policy::ip::IpDecision::Allowed => Ok(ip),
            crate::policy::ip::IpDecision::Denied { reason } => {
                self.metrics
                    .policy_decisions
                    .with_label_values(&["ip", "deny", reason.as_str()])
                    .inc();
                Err(self.refuse(
                    route,
                    platform,
                    StatusCode::FORBIDDEN,
                    reason.as_str(),
                    "your address is not allowed",
                ))
            }
        }
    }

    /// Refuses a request before the pipeline runs (unknown path, wrong
    /// method, oversized or slow body): audit line, metric, clear answer.
    pub fn refuse(
        &self,
        route: &str,
        platform: &'static str,
        status: StatusCode,
        reason: &'static str,
        message: &str,
    ) -> Response<Bytes> {
        let mut audit = Audit::start(route, platform);
        self.finish_refusal(&mut audit, status, reason, message)
    }

    fn finish_refusal(
        &self,
        audit: &mut Audit,
        status: StatusCode,
        reason: &str,
        message: &str,
    ) -> Response<Bytes> {
        audit.decision = "rejected";
        audit.reason = reason.to_string();
        audit.status = status.as_u16();
        audit.emit();
        self.metrics
            .rejections
            .with_label_values(&[&audit.route, reason])
            .inc();
        self.count(audit, "rejected");
        json_error(status, reason, message)
    }

    fn count(&self, audit: &Audit, outcome: &str) {
        self.metrics
            .requests
            .with_label_values(&[&audit.route, audit.platform, outcome])
            .inc();
    }

    /// The policy set in force now. A request takes one snapshot and uses it
    /// for every decision, so a reload never splits a request between sets.
    pub fn snapshot(&self) -> Arc<PolicySet> {
        self.policies.current()
    }

    /// Handles one request on `route`, decided entirely by `policies`.
    pub async fn handle(
        &self,
        route: &Route,
        req: IncomingRequest,
        policies: Arc<PolicySet>,
    ) -> Outcome {
        let (message, claim) = match self.authenticate(route, &req, &policies) {
            Ok(m) => m,
            Err(resp) => return Outcome::Respond(resp),
        };
        self.process(route, &req, policies, message, claim).await
    }

    /// Stage 1: who is this, and what did they say? JWT + JSON for the
    /// generic API; the platform adapter's verification for webhooks. Then
    /// dedupe, so a redelivery stops here.
    fn authenticate(
        &self,
        route: &Route,
        req: &IncomingRequest,
        policies: &PolicySet,
    ) -> Result<(Message, Option<Claim>), Response<Bytes>> {
        let platform = route.platform_name();
        let mut audit = Audit::start(&route.path, platform);
        let Some(adapter) = &route.adapter else {
            return self
                .authenticate_generic(req, audit, policies)
                .map(|m| (m, None));
        };
        let wreq = req.as_webhook(SystemTime::now());
        let msg = match adapter.receive(&wreq) {
            Ok(Inbound::Message(m)) => *m,
            Ok(Inbound::Answer { response, event }) => {
                audit.decision = "answered";
                audit.reason = event.to_string();
                audit.status = response.status.as_u16();
                audit.emit();
                self.count(&audit, "challenge");
                return Err(webhook_response(response));
            }
            Ok(Inbound::Skip { response, reason }) => {
                audit.decision = "ignored";
                audit.reason = reason.to_string();
                audit.status = response.status.as_u16();
                audit.emit();
                self.metrics
                    .ignored_events
                    .with_label_values(&[platform, reason])
                    .inc();
                self.count(&audit, "ignored");
                return Err(webhook_response(response));
            }
            Err(rejection) => {
                return Err(self.finish_refusal(
                    &mut audit,
                    rejection.status(),
                    rejection.kind(),
                    &rejection.to_string(),
                ));
            }
        };
        audit.sender_id = msg.sender_id.clone();
        audit.thread_id = msg.thread_id.clone();
        let claim = if msg.message_id.is_empty() {
            None
        } else {
            match route.dedupe.check(&msg.message_id) {
                (Seen::New, claim) => claim,
                (Seen::Done, _) => {
                    audit.decision = "duplicate";
                    audit.status = 200;
                    audit.emit();
                    self.metrics.duplicates.with_label_values(&[platform]).inc();
                    self.count(&audit, "duplicate");
                    return Err(webhook_response(adapter.ack(&msg)));
                }
                (Seen::InFlight, _) => {
                    // The first delivery is still being handled; if it fails
                    // the platform must be able to deliver again.
                    audit.decision = "duplicate_in_flight";
                    audit.status = 503;
                    audit.emit();
                    self.metrics.duplicates.with_label_values(&[platform]).inc();
                    self.count(&audit, "duplicate");
                    let mut resp = json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "in_flight",
                        "an earlier delivery of this message is still being processed",
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(1));
                    return Err(resp);
                }
            }
        };
        Ok((
            Message {
                platform,
                msg,
                roles: Vec::new(),
                device_type: String::new(),
                claims: Default::default(),
                person: None,
                client_ip: req.client_ip,
                audit,
                verdict: Verdict::default(),
                who: String::new(),
            },
            claim,
        ))
    }

    fn authenticate_generic(
        &self,
        req: &IncomingRequest,
        mut audit: Audit,
        policies: &PolicySet,
    ) -> Result<Message, Response<Bytes>> {
        let auth = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let subject = match policies.jwt.verify(auth) {
            Ok(s) => s,
            Err(e) => {
                let mut resp = self.finish_refusal(
                    &mut audit,
                    StatusCode::UNAUTHORIZED,
                    e.kind(),
                    &e.to_string(),
                );
                if let Ok(v) = HeaderValue::from_str(&e.www_authenticate()) {
                    resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
                return Err(resp);
            }
        };
        audit.sender_id = subject.id.clone();
        let body = match generic::parse(&req.body) {
            Ok(m) => m,
            Err(e) => {
                return Err(self.finish_refusal(
                    &mut audit,
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    &e.to_string(),
                ))
            }
        };
        let msg = generic::to_platform_message(body, &subject);
        audit.thread_id = msg.thread_id.clone();
        Ok(Message {
            platform: "generic",
            msg,
            roles: subject.roles,
            device_type: subject.device_type,
            claims: subject
                .claims
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
            person: None,
            client_ip: req.client_ip,
            audit,
            verdict: Verdict::default(),
            who: String::new(),
        })
    }

    /// Stages 2 and on: identity, rate limits, ABAC/RBAC, DLP, forward, reply.
    async fn process(
        &self,
        route: &Route,
        req: &IncomingRequest,
        policies: Arc<PolicySet>,
        mut m: Message,
        claim: Option<Claim>,
    ) -> Outcome {
        // Identity: which person, which roles.
        m.person = policies
            .identities
            .person_of(m.platform, &m.msg.sender_id)
            .map(str::to_string);
        let user_key = format!("{}:{}", m.platform, m.msg.sender_id);
        m.who = match &m.person {
            Some(p) => format!("person:{p}"),
            None => user_key.clone(),
        };

        // Rate limits.
        let keys = RateKeys {
            ip: m.client_ip,
            user: Some(user_key.as_str()),
            tenant: Some(m.msg.tenant.as_str()).filter(|t| !t.is_empty()),
            route: &route.path,
        };
        if let Err(limited) = policies.rate.check(&keys, Instant::now()) {
            self.metrics
                .policy_decisions
                .with_label_values(&["rate", "deny", limited.scope])
                .inc();
            m.audit.rules.push(format!("rate:{}", limited.scope));
            commit(claim);
            if route.adapter.is_none() {
                m.audit.decision = "rate_limited";
                let mut resp = self.end(
                    &mut m,
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests; slow down",
                );
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(limited.retry_after_secs()),
                );
                return Outcome::Respond(resp);
            }
            // Webhooks get 200 so the platform does not redeliver into a
            // storm; the user hears about it once per window.
            let notify = policies.rate.should_notify(&user_key, Instant::now());
            return Outcome::Respond(self.tell_platform_user(
                route,
                &mut m,
                "rate_limited",
                notify.then_some(SLOW_DOWN),
            ));
        }

        // A reply to a second-step confirmation (from the same person, on any
        // linked platform) releases, rejects or expires the held message.
        if confirm::is_code_shaped(&m.msg.text) {
            match self.confirm.respond(&m.who, &m.msg.text, Instant::now()) {
                ConfirmOutcome::NotPending => {}
                ConfirmOutcome::Forward(held) => {
                    m.audit.reason = "confirmed".into();
                    m.msg.text = held
                        .envelope
                        .content
                        .as_ref()
                        .map(|c| c.text.clone())
                        .unwrap_or_default();
                    let mut env = held.envelope;
                    // Fresh context: the conversation may have moved on while it waited.
                    env.context = env
                        .conversation
                        .as_ref()
                        .map(|c| self.context.snapshot(&c.id));
                    return self.forward(route, policies, m, env, claim).await;
                }
                outcome => {
                    commit(claim);
                    let (decision, status, code, text) = match outcome {
                        ConfirmOutcome::Wrong { remaining: 0 } => (
                            "confirm_rejected",
                            StatusCode::FORBIDDEN,
                            "confirmation_rejected",
                            "That code is wrong; the request was cancelled.".to_string(),
                        ),
                        ConfirmOutcome::Wrong { remaining } => (
                            "confirm_wrong_code",
                            StatusCode::FORBIDDEN,
                            "confirmation_wrong_code",
                            format!("That code is wrong; {remaining} tries left."),
                        ),
                        _ => (
                            "confirm_expired",
                            StatusCode::GONE,
                            "confirmation_expired",
                            "That code has expired; the request was not sent.".to_string(),
                        ),
                    };
                    m.audit.reason = code.into();
                    return Outcome::Respond(match route.adapter {
                        None => {
                            m.audit.decision = decision;
                            self.end(&mut m, status, code, &text)
                        }
                        Some(_) => self.tell_platform_user(route, &mut m, decision, Some(&text)),
                    });
                }
            }
        }

        // ABAC + RBAC: forward, and the command if the text starts with one.
        let command = envelope::command(&m.msg);
        let mut access = AccessRequest {
            subject: Subject {
                id: m.msg.sender_id.clone(),
                person: m.person.clone(),
                roles: m.roles.clone(),
                tenant: Some(m.msg.tenant.clone()).filter(|t| !t.is_empty()),
                device_type: Some(m.device_type.clone()).filter(|t| !t.is_empty()),
                platform: Some(m.platform.to_string()),
                claims: m.claims.clone(),
            },
            resource: route.path.clone(),
            action: "forward".into(),
            chat_type: Some(m.msg.chat_type.as_str().to_string()),
            command: Some(command.clone()).filter(|c| !c.is_empty()),
            environment: Environment {
                ip: Some(m.client_ip),
                time: chrono::Utc::now(),
            },
        };
        let mut actions = vec!["forward".to_string()];
        if !command.is_empty() {
            actions.push(format!("command:{command}"));
        }
        let mut needs_confirm = false;
        for action in actions {
            access.action = action;
            let decision = policies.abac.decide(&access, &policies.permissions);
            needs_confirm |= decision.confirm;
            let label = decision.decided_by.metric_label().to_string();
            self.metrics
                .policy_decisions
                .with_label_values(&[
                    "abac",
                    if decision.allowed { "allow" } else { "deny" },
                    &label,
                ])
                .inc();
            m.audit.rules.push(decision.decided_by.to_string());
            m.verdict
                .matched_rules
                .push(decision.decided_by.to_string());
            if !decision.allowed {
                commit(claim);
                m.audit.reason = decision.decided_by.to_string();
                return Outcome::Respond(match route.adapter {
                    None => {
                        m.audit.decision = "denied";
                        self.end(
                            &mut m,
                            StatusCode::FORBIDDEN,
                            "forbidden",
                            "denied by policy",
                        )
                    }
                    Some(_) => self.tell_platform_user(route, &mut m, "denied", Some(DENIED)),
                });
            }
        }
        m.roles = policies.permissions.effective_roles(&access.subject);

        // DLP on the way in.
        let original_text = m.msg.text.clone();
        let scan = policies.dlp.scan(&m.msg.text, Direction::Ingress);
        for f in &scan.findings {
            self.metrics
                .dlp_findings
                .with_label_values(&[&f.rule, f.action.as_str(), "ingress"])
                .inc();
            m.audit
                .rules
                .push(format!("dlp:{}:{}", f.rule, f.action.as_str()));
            m.verdict.dlp_findings.push(DlpFinding {
                r#type: f.rule.to_string(),
                start: f.start as u32,
                end: f.end as u32,
                action: f.action.as_str().into(),
            });
        }
        if let Some(rule) = &scan.blocked_by {
            commit(claim);
            m.audit.reason = format!("dlp:{rule}");
            let notice = format!(
                "Your message was not sent: it contains data that must not be shared ({rule})."
            );
            return Outcome::Respond(match route.adapter {
                None => {
                    m.audit.decision = "blocked";
                    self.end(
                        &mut m,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "dlp_blocked",
                        &notice,
                    )
                }
                Some(_) => self.tell_platform_user(route, &mut m, "blocked", Some(&notice)),
            });
        }
        if let Some(masked) = scan.masked {
            m.msg.text = masked;
        }

        if route.mode == RouteMode::Passthrough {
            if needs_confirm {
                // A proxied request cannot be replayed later: fail closed.
                commit(claim);
                m.audit.decision = "denied";
                m.audit.reason = "confirm_unsupported_in_passthrough".into();
                return Outcome::Respond(self.tell_platform_user(
                    route,
                    &mut m,
                    "denied",
                    Some(DENIED),
                ));
            }
            return self.passthrough(route, req, m, claim, original_text);
        }

        let mut env = self.envelope(route, &m);
        if needs_confirm {
            return Outcome::Respond(self.hold_for_confirmation(route, m, env, claim));
        }
        env.context = env
            .conversation
            .as_ref()
            .map(|c| self.context.snapshot(&c.id));
        self.forward(route, policies, m, env, claim).await
    }

    /// Holds a message whose rule says `confirm: true` and sends the person
    /// a one-time code; the message goes on only when they send it back.
    fn hold_for_confirmation(
        &self,
        route: &Route,
        mut m: Message,
        env: Envelope,
        claim: Option<Claim>,
    ) -> Response<Bytes> {
        commit(claim);
        m.audit.envelope_id = env.id.clone();
        m.audit.reason = "confirm_required".into();
        let ttl = self.confirm.ttl().as_secs();
        let code = self.confirm.hold(
            &m.who,
            HeldMessage {
                envelope: env,
                reply: serde_json::Value::Null,
            },
            Instant::now(),
        );
        let notice = format!("This request needs confirmation. Reply with the code {code} within {ttl} seconds to go ahead.");
        match route.adapter {
            None => {
                m.audit.decision = "confirm_required";
                m.audit.status = 202;
                m.audit.emit();
                self.count(&m.audit, "confirm_required");
                json_response(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"status": "confirmation_required", "code": code, "expires_in": ttl, "message": notice}),
                )
            }
            Some(_) => self.tell_platform_user(route, &mut m, "confirm_required", Some(&notice)),
        }
    }

    /// Sends `env` to the route's cluster and answers with its replies.
    async fn forward(
        &self,
        route: &Route,
        policies: Arc<PolicySet>,
        mut m: Message,
        env: Envelope,
        claim: Option<Claim>,
    ) -> Outcome {
        m.audit.envelope_id = env.id.clone();
        let Some(cluster) = &route.cluster else {
            return Outcome::Respond(self.end(
                &mut m,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_upstream",
                "route has no assistant upstream",
            ));
        };
        let accepted = match cluster.dispatch(&env).await {
            Ok(a) => a,
            // The claim is released on drop: the redelivery will be processed.
            Err(e) => return Outcome::Respond(self.unavailable(&mut m.audit, &e)),
        };
        commit(claim);
        m.audit.node = accepted.node.clone();
        match route.adapter.clone() {
            None => Outcome::Respond(self.answer_generic(&policies, m, env, accepted).await),
            Some(adapter) => Outcome::Respond(
                self.answer_platform(route, policies.clone(), adapter, m, &env, accepted)
                    .await,
            ),
        }
    }

    fn envelope(&self, route: &Route, m: &Message) -> Envelope {
        let key = crate::context::conversation_key(
            m.platform,
            m.msg.chat_type,
            &m.msg.room_id,
            &m.msg.thread_id,
            &m.msg.sender_id,
            m.person.as_deref(),
        );
        let mut env = envelope::build(
            m.platform,
            &route.path,
            key,
            &m.msg,
            m.roles.clone(),
            m.device_type.clone(),
        );
        if let Some(sender) = env.sender.as_mut() {
            sender.person_id = m.person.clone().unwrap_or_default();
        }
        env.verdict = Some(m.verdict.clone());
        env
    }

    /// Egress DLP on one reply: masked text, or the withheld notice.
    fn egress(&self, policies: &PolicySet, text: &str) -> String {
        egress_with(policies, &self.metrics, text)
    }

    async fn answer_generic(
        &self,
        policies: &PolicySet,
        mut m: Message,
        env: Envelope,
        accepted: Accepted,
    ) -> Response<Bytes> {
        let collected = accepted.collect().await;
        m.audit.ai_response_code = collected.code;
        let replies: Vec<String> = collected
            .texts
            .iter()
            .map(|t| self.egress(policies, t))
            .collect();
        record(&self.context, &env, &m.msg.text, &replies, &collected.state);
        let body = serde_json::json!({
            "envelope_id": env.id,
            "replies": replies.iter().map(|t| serde_json::json!({"text": t})).collect::<Vec<_>>(),
            "complete": collected.code == 0,
        });
        self.answered(&mut m, 200);
        json_response(StatusCode::OK, &body)
    }

    /// Waits for the assistant until the platform's deadline: a complete
    /// answer goes inline when the platform allows it; otherwise the webhook
    /// is acknowledged now and the reply follows through the platform's API.
    async fn answer_platform(
        &self,
        route: &Route,
        policies: Arc<PolicySet>,
        adapter: Arc<dyn PlatformAdapter>,
        mut m: Message,
        env: &Envelope,
        accepted: Accepted,
    ) -> Response<Bytes> {
        // Leave a margin for writing the answer before the platform gives up.
        let inline_by = (m.audit.started() + route.deadline.mul_f32(0.8)).min(accepted.deadline);
        let Accepted {
            node,
            mut replies,
            deadline,
            ..
        } = accepted;
        let mut early = Collected::default();
        let mut complete = false;
        loop {
            // Replies that are already waiting must not sneak in after the deadline.
            if Instant::now() >= inline_by {
                break;
            }
            match tokio::time::timeout_at(inline_by.into(), replies.next()).await {
                Err(_) => break,
                Ok(None) => {
                    complete = true;
                    break;
                }
                Ok(Some(Err(status))) => {
                    early.code = status.code() as i32;
                    complete = true;
                    break;
                }
                Ok(Some(Ok(r))) => match r.kind {
                    Some(crate::proto::v1::reply::Kind::Text(t)) => early.texts.push(t.text),
                    Some(crate::proto::v1::reply::Kind::Final(f)) => {
                        early.state = f.state;
                        complete = true;
                        break;
                    }
                    _ => {}
                },
            }
        }
        if complete {
            m.audit.ai_response_code = early.code;
            let text = self.egress(&policies, &early.texts.join("\n"));
            record(
                &self.context,
                env,
                &m.msg.text,
                std::slice::from_ref(&text),
                &early.state,
            );
            if !text.is_empty() {
                if let Some(resp) = adapter.inline_reply(&m.msg, &text, SystemTime::now()) {
                    m.audit.reason = "inline_reply".into();
                    self.answered(&mut m, resp.status.as_u16());
                    return webhook_response(resp);
                }
                self.send_reply(adapter.as_ref(), m.platform, &m.msg, &text);
            }
            m.audit.reason = "api_reply".into();
            let ack = adapter.ack(&m.msg);
            self.answered(&mut m, ack.status.as_u16());
            return webhook_response(ack);
        }
        // Past the deadline: acknowledge now, reply when the assistant is done.
        let rest = Accepted::new(node, replies, deadline);
        let ack = adapter.ack(&m.msg);
        m.audit.reason = "deferred_reply".into();
        self.answered(&mut m, ack.status.as_u16());
        let writeback = self.writeback.clone();
        let request_policies = policies.clone();
        let context = self.context.clone();
        let env = env.clone();
        let metrics = self.metrics.clone();
        let platform = m.platform;
        let msg = m.msg;
        tokio::spawn(async move {
            let more = rest.collect().await;
            let mut texts = early.texts;
            texts.extend(more.texts);
            let text = egress_with(&request_policies, &metrics, &texts.join("\n"));
            let mut state = early.state;
            state.extend(more.state);
            record(
                &context,
                &env,
                &msg.text,
                std::slice::from_ref(&text),
                &state,
            );
            if text.is_empty() {
                return;
            }
            match adapter.reply_calls(&msg, &text) {
                Ok(calls) => {
                    let _ = writeback.send(platform, calls).await;
                }
                Err(e) => {
                    metrics
                        .writebacks
                        .with_label_values(&[platform, "failed"])
                        .inc();
                    tracing::error!(platform, error = %e, "cannot build the reply call; the reply is dropped");
                }
            }
        });
        webhook_response(ack)
    }

    /// Sends `text` to the user through the platform API, in the background.
    fn send_reply(
        &self,
        adapter: &dyn PlatformAdapter,
        platform: &'static str,
        msg: &PlatformMessage,
        text: &str,
    ) {
        match adapter.reply_calls(msg, text) {
            Ok(calls) => {
                let writeback = self.writeback.clone();
                tokio::spawn(async move {
                    let _ = writeback.send(platform, calls).await;
                });
            }
            Err(e) => {
                self.metrics
                    .writebacks
                    .with_label_values(&[platform, "failed"])
                    .inc();
                tracing::error!(platform, error = %e, "cannot build the reply call; the reply is dropped");
            }
        }
    }

    /// A webhook message that stops here (denied, blocked, rate limited):
    /// the platform gets 200, the user gets `notice` (inline or by API).
    fn tell_platform_user(
        &self,
        route: &Route,
        m: &mut Message,
        decision: &'static str,
        notice: Option<&str>,
    ) -> Response<Bytes> {
        m.audit.decision = decision;
        m.audit.status = 200;
        m.audit.emit();
        self.count(&m.audit, decision);
        let Some(adapter) = &route.adapter else {
            return json_error(StatusCode::FORBIDDEN, decision, "refused by policy");
        };
        if let Some(text) = notice {
            if let Some(resp) = adapter.inline_reply(&m.msg, text, SystemTime::now()) {
                return webhook_response(resp);
            }
            self.send_reply(adapter.as_ref(), m.platform, &m.msg, text);
        }
        webhook_response(adapter.ack(&m.msg))
    }

    /// Passthrough: policies passed; proxy the original request, re-sealed
    /// if DLP changed the text, refused if the platform cannot be re-sealed.
    fn passthrough(
        &self,
        route: &Route,
        req: &IncomingRequest,
        mut m: Message,
        claim: Option<Claim>,
        original_text: String,
    ) -> Outcome {
        let Some(peer) = route
            .http_upstream
            .as_ref()
            .and_then(|u| u.pick())
            .map(str::to_string)
        else {
            return Outcome::Respond(self.end(
                &mut m,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_upstream",
                "route has no HTTP upstream",
            ));
        };
        let mut plan = ProxyPlan {
            peer,
            body: None,
            headers: Vec::new(),
            query: None,
        };
        if m.msg.text != original_text {
            let Some(adapter) = &route.adapter else {
                return Outcome::Respond(self.end(
                    &mut m,
                    StatusCode::FORBIDDEN,
                    "cannot_reseal",
                    "masked content cannot be re-signed",
                ));
            };
            let wreq = req.as_webhook(SystemTime::now());
            match adapter.reseal(&wreq, &m.msg, &m.msg.text) {
                Some(sealed) => {
                    plan.body = Some(sealed.body);
                    plan.headers = sealed.headers;
                    plan.query = sealed.query;
                    m.audit.reason = "resealed".into();
                }
                None => {
                    commit(claim);
                    m.audit.decision = "refused";
                    return Outcome::Respond(self.end(
                        &mut m,
                        StatusCode::FORBIDDEN,
                        "cannot_reseal",
                        "this platform's signature cannot be renewed, so masked content is refused rather than passed on unmasked",
                    ));
                }
            }
        }
        commit(claim);
        m.audit.decision = "proxied";
        m.audit.node = plan.peer.clone();
        m.audit.status = 0;
        m.audit.emit();
        self.count(&m.audit, "proxied");
        Outcome::Proxy(plan)
    }

    /// Ends a message with a JSON answer (API) and its audit line.
    fn end(&self, m: &mut Message, status: StatusCode, code: &str, text: &str) -> Response<Bytes> {
        if m.audit.decision == "rejected" {
            m.audit.decision = "refused";
        }
        if m.audit.reason.is_empty() {
            m.audit.reason = code.to_string();
        }
        m.audit.status = status.as_u16();
        m.audit.emit();
        self.count(&m.audit, m.audit.decision);
        json_error(status, code, text)
    }

    fn answered(&self, m: &mut Message, status: u16) {
        m.audit.decision = "answered";
        m.audit.status = status;
        self.metrics
            .message_latency
            .with_label_values(&[m.platform])
            .observe(m.audit.elapsed_secs());
        self.count(&m.audit, "answered");
        m.audit.emit();
    }

    /// 503 with `Retry-After`: no node accepted, so nothing was acknowledged
    /// and the client (or platform) must retry.
    fn unavailable(&self, audit: &mut Audit, e: &DispatchError) -> Response<Bytes> {
        tracing::warn!(error = %e, route = %audit.route, "no upstream node accepted the message");
        audit.ai_response_code = e.code();
        audit.decision = "unavailable";
        audit.reason = "no_node_accepted".into();
        audit.status = 503;
        audit.emit();
        self.count(audit, "unavailable");
        let mut resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            "no assistant node accepted the message; retry later",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(e.retry_after()));
        resp
    }
}

/// Egress DLP outside a request (deferred replies).
fn egress_with(policies: &PolicySet, metrics: &Metrics, text: &str) -> String {
    let scan = policies.dlp.scan(text, Direction::Egress);
    for f in &scan.findings {
        metrics
            .dlp_findings
            .with_label_values(&[&f.rule, f.action.as_str(), "egress"])
            .inc();
    }
    if scan.is_blocked() {
        return WITHHELD_REPLY.to_string();
    }
    scan.masked.unwrap_or_else(|| text.to_string())
}

/// Appends one exchange to the conversation's context: the user's text as
/// the assistant saw it (masked) and the replies as the user saw them.
fn record(
    context: &ContextStore,
    env: &Envelope,
    user_text: &str,
    replies: &[String],
    state: &std::collections::HashMap<String, String>,
) {
    if let Some(conversation) = &env.conversation {
        context.record_exchange(
            &conversation.id,
            user_text,
            replies,
            state.iter(),
            &env.platform,
            envelope::now_millis(),
        );
    }
}

fn commit(claim: Option<Claim>) {
    if let Some(c) = claim {
        c.commit();
    }
}

/// Builds the adapter for a route's platform from its secrets (`None` for
/// the generic API, which this pipeline authenticates itself).
pub fn build_adapter(rc: &RouteConfig) -> Result<Option<Arc<dyn PlatformAdapter>>, String> {
    if rc.platform == PlatformKind::Generic {
        return Ok(None);
    }
    let api = rc.api_base.as_ref().map(|s| s.0.as_str());
    platform::build(rc.platform, &rc.secrets.to_map(), api)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// An adapter's answer as an HTTP response.
pub fn webhook_response(r: WebhookResponse) -> Response<Bytes> {
    let mut resp = Response::new(r.body);
    *resp.status_mut() = r.status;
    if !r.content_type.is_empty() {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(r.content_type),
        );
    }
    resp
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error: `{"error": "<code>", "message": "<explanation>"}`.
pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    json_response(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
