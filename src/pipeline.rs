//! The message path, assembled in one readable place.
//!
//! ```text
//! route ─▶ method/limits ─▶ authenticate (JWT | platform verify) ─▶ parse
//!       ─▶ Envelope ─▶ forward (cluster: balance, failover, accepted) ─▶ replies
//! ```
//!
//! [`Gateway::handle`] is a plain async function from a fully read request
//! to a response: the Pingora glue in `server` only reads bodies and writes
//! answers, so every stage here is testable without sockets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::{Config, FileError, PlatformKind, RouteMode, UpstreamKind};
use crate::envelope;
use crate::observe::{Audit, Metrics};
use crate::platform::generic;
use crate::policy::PolicyStore;
use crate::upstream::{Cluster, DispatchError};

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
    /// The socket peer's address.
    pub peer: IpAddr,
}

/// One configured route, resolved against its upstream.
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
}

impl Route {
    /// Methods this route accepts.
    pub fn methods(&self) -> &'static [Method] {
        &[Method::POST]
    }
}

/// The gateway: routes, clusters, policies and metrics.
pub struct Gateway {
    routes: HashMap<String, Arc<Route>>,
    clusters: HashMap<String, Arc<Cluster>>,
    /// The live policies.
    pub policies: Arc<PolicyStore>,
    /// The metrics.
    pub metrics: Metrics,
    /// Header and body timeouts.
    pub limits: crate::config::Limits,
}

impl Gateway {
    /// Builds everything the config describes. Needs a Tokio runtime context
    /// (gRPC channels connect lazily), but no reachable upstream.
    pub fn build(config: &Config, metrics: Metrics) -> Result<Self, FileError> {
        let policies = Arc::new(PolicyStore::load(&config.policies_dir(), metrics.clone())?);
        let mut clusters = HashMap::new();
        for (name, up) in &config.upstreams {
            if up.kind == UpstreamKind::Grpc {
                let cluster = Cluster::new(
                    name,
                    up,
                    &config.source,
                    |p| config.resolve(p),
                    metrics.clone(),
                )?;
                clusters.insert(name.clone(), Arc::new(cluster));
            }
        }
        let mut routes = HashMap::new();
        for rc in &config.routes {
            let route = Route {
                path: rc.path.0.clone(),
                platform: rc.platform,
                mode: rc.mode,
                body_limit: config.body_limit(rc),
                deadline: rc.deadline.map(|d| d.0).unwrap_or(Duration::from_secs(3)),
                cluster: clusters.get(&rc.upstream.0).cloned(),
            };
            routes.insert(route.path.clone(), Arc::new(route));
        }
        Ok(Self {
            routes,
            clusters,
            policies,
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
        audit.reason = reason.to_string();
        self.finish_refusal(&mut audit, status, reason, message)
    }

    fn finish_refusal(
        &self,
        audit: &mut Audit,
        status: StatusCode,
        reason: &'static str,
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
        self.metrics
            .requests
            .with_label_values(&[&audit.route, audit.platform, "rejected"])
            .inc();
        json_error(status, reason, message)
    }

    /// Handles one request on `route`.
    pub async fn handle(&self, route: &Route, req: IncomingRequest) -> Response<Bytes> {
        match route.platform {
            PlatformKind::Generic => self.handle_generic(route, req).await,
            other => self.refuse(
                &route.path,
                other.as_str(),
                StatusCode::NOT_IMPLEMENTED,
                "platform_not_enabled",
                "this platform is not enabled in this build",
            ),
        }
    }

    async fn handle_generic(&self, route: &Route, req: IncomingRequest) -> Response<Bytes> {
        let mut audit = Audit::start(&route.path, "generic");
        let policies = self.policies.current();
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
                return resp;
            }
        };
        audit.sender_id = subject.id.clone();
        let msg = match generic::parse(&req.body) {
            Ok(m) => m,
            Err(e) => {
                return self.finish_refusal(
                    &mut audit,
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    &e.to_string(),
                )
            }
        };
        let msg = generic::to_platform_message(msg, &subject);
        let env = envelope::build(
            "generic",
            &route.path,
            &msg,
            subject.roles.clone(),
            subject.device_type.clone(),
        );
        audit.envelope_id = env.id.clone();
        audit.thread_id = msg.thread_id.clone();

        let Some(cluster) = &route.cluster else {
            return self.finish_refusal(
                &mut audit,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_upstream",
                "route has no assistant upstream",
            );
        };
        let accepted = match cluster.dispatch(&env).await {
            Ok(a) => a,
            Err(e) => return self.unavailable(&mut audit, &e),
        };
        audit.node = accepted.node.clone();
        let collected = accepted.collect().await;
        audit.ai_response_code = collected.code;
        audit.decision = "answered";
        audit.status = 200;
        let body = serde_json::json!({
            "envelope_id": env.id,
            "replies": collected.texts.iter().map(|t| serde_json::json!({"text": t})).collect::<Vec<_>>(),
            "complete": collected.code == 0,
        });
        self.metrics
            .message_latency
            .with_label_values(&["generic"])
            .observe(audit.elapsed_secs());
        self.metrics
            .requests
            .with_label_values(&[&route.path, "generic", "answered"])
            .inc();
        audit.emit();
        json_response(StatusCode::OK, &body)
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
        self.metrics
            .requests
            .with_label_values(&[&audit.route, audit.platform, "unavailable"])
            .inc();
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
