//! The gateway side of MQTT ingress: each message a listener receives goes
//! through its declarative adapter and then the whole message path, like a
//! webhook would (`Gateway::handle_on`): the adapter's verification and
//! fields, dedupe by its id, identities, rate limits, ABAC/RBAC, DLP, the
//! context store, the AI cluster, egress DLP. How the message ended becomes
//! the transport's verdict, which decides the PUBACK:
//!
//! | ended | verdict |
//! |---|---|
//! | answered (the cluster accepted it), a handshake, ignored, a duplicate | `Accepted`: PUBACK, the reply published |
//! | a refusal (forged, malformed) or a policy decision (denied, blocked, rate limited) | `Refused`: PUBACK, nothing published |
//! | no AI node accepted it, the shared tier is down | `Retry`: no PUBACK; asked again after a backoff |
//!
//! The reply is the adapter's inline reply (`reply.inline`), rendered with
//! the assistant's text, within the cluster's timeout. A rate-limited
//! message is refused, not retried: redelivering a flood would defeat the
//! limit.
//!
//! Each listener is a route of its own, `/mqtt/<name>`: ABAC resources,
//! metrics and audit lines name it so. The adapter is looked up by name in
//! each message's policy snapshot, so a reloaded adapter file applies to
//! the next message; a listener whose adapter disappeared keeps its
//! messages at the broker (Retry) and says so in the log.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::{MqttSink, Received, TransportEvent, Verdict};
use crate::config::mqtt::{MqttIdentity, MqttListenerConfig};
use crate::config::{Config, FileError, PlatformKind};
use crate::dedupe::Dedupe;
use crate::path::{Ended, Gateway, IncomingRequest, Route, StopKind, Target};
use crate::platform::PlatformAdapter;

mod identity;

use identity::ClientIdentity;

/// One listener's side of the path.
struct ListenerRoute {
    path: String,
    adapter: String,
    target: Arc<crate::upstream::Cluster>,
    deadline: Duration,
    max_payload: usize,
    /// The sender of every message (`identity: client`), else the adapter's.
    client: Option<String>,
    dedupe: Dedupe,
}

/// Hands MQTT messages to the message path.
pub struct Ingress {
    gateway: Arc<Gateway>,
    listeners: HashMap<String, ListenerRoute>,
}

impl Ingress {
    /// The message path for every `mqtt:` listener of `config`. Each one's
    /// upstream must be a gRPC cluster and its adapter must exist in the
    /// policies loaded now (a located error otherwise).
    pub fn new(gateway: Arc<Gateway>, config: &Config) -> Result<Self, FileError> {
        let policies = gateway.snapshot();
        let mut listeners = HashMap::new();
        for l in &config.mqtt {
            let name = l.name.0.clone();
            let err = |msg: String| {
                FileError::whole(&config.source, format!("mqtt listener '{name}': {msg}"))
            };
            let target = gateway.cluster(&l.upstream.0).ok_or_else(|| {
                err(format!(
                    "upstream '{}' is not a kind: grpc upstream",
                    l.upstream.0
                ))
            })?;
            if policies.adapters.by_name(&l.adapter.0).is_none() {
                return Err(err(format!(
                    "no adapter named '{}' in {}/{}/",
                    l.adapter.0,
                    config.policies_dir().display(),
                    crate::adapters::DIR
                )));
            }
            let timeout = config
                .upstreams
                .get(&l.upstream.0)
                .map_or(Duration::from_secs(30), |u| u.timeout.0);
            let route = ListenerRoute {
                path: route_path(&name),
                adapter: l.adapter.0.clone(),
                target,
                deadline: timeout,
                max_payload: l.max_payload,
                client: client_of(l),
                dedupe: Dedupe::new(
                    config.limits.dedupe_capacity,
                    Duration::from_secs(24 * 3600),
                ),
            };
            listeners.insert(name, route);
        }
        Ok(Self { gateway, listeners })
    }

    /// The route one message takes, with the adapter of the current set.
    fn route(&self, l: &ListenerRoute) -> Option<Arc<Route>> {
        let policies = self.gateway.snapshot();
        let compiled = policies.adapters.by_name(&l.adapter)?;
        let declared: Arc<dyn PlatformAdapter> = compiled.adapter.clone();
        let adapter: Arc<dyn PlatformAdapter> = match &l.client {
            Some(sender) => Arc::new(ClientIdentity::new(declared, sender.clone())),
            None => declared,
        };
        Some(Arc::new(Route {
            path: l.path.clone(),
            platform: PlatformKind::Declarative,
            body_limit: l.max_payload,
            // Within the cluster's timeout, the reply comes inline: published.
            deadline: l.deadline.mul_f32(1.25),
            target: Target::Assistant(l.target.clone()),
            adapter,
            dedupe: l.dedupe.clone(),
            websocket: Default::default(),
            ip_allow: Vec::new(),
        }))
    }
}

/// Everything `mqtt:` needs to start: the sink and each listener, checked
/// (the adapter and upstream of each, the broker's TLS settings). Empty
/// when no listener is configured.
pub fn prepare(
    gateway: &Arc<Gateway>,
    config: &Config,
) -> Result<(Arc<Ingress>, Vec<super::Listener>), FileError> {
    let ingress = Arc::new(Ingress::new(gateway.clone(), config)?);
    let listeners = super::Listener::all(config)
        .map_err(|e| FileError::whole(&config.source, e.to_string()))?;
    Ok((ingress, listeners))
}

/// The route of listener `name` (what ABAC resources, metrics and audit
/// lines call it): `/mqtt/<name>`.
pub fn route_path(name: &str) -> String {
    format!("/mqtt/{name}")
}

/// `identity: client`: the broker user name, else the listener's name.
fn client_of(l: &MqttListenerConfig) -> Option<String> {
    match l.identity {
        MqttIdentity::Adapter => None,
        MqttIdentity::Client => Some(
            l.broker
                .username
                .as_ref()
                .map(|u| u.0.clone())
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| l.name.0.clone()),
        ),
    }
}

#[async_trait]
impl MqttSink for Ingress {
    async fn handle(&self, msg: Received) -> Verdict {
        let metrics = &self.gateway.metrics;
        let Some(listener) = self.listeners.get(&*msg.listener) else {
            return Verdict::Refused {
                reason: "unknown_listener",
            };
        };
        let Some(route) = self.route(listener) else {
            tracing::error!(listener = %msg.listener, adapter = %listener.adapter, "the listener's adapter is not loaded; messages stay at the broker");
            metrics
                .mqtt_messages
                .with_label_values(&[&msg.listener, "retry"])
                .inc();
            return Verdict::Retry;
        };
        let req = IncomingRequest {
            method: Method::POST,
            query: None,
            headers: HeaderMap::new(),
            body: msg.payload,
            // The broker delivered it: no client address of its own.
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let (response, ended) = self.gateway.handle_on(route, req).await;
        let verdict = verdict(response.status(), response.into_body(), ended);
        let label = match &verdict {
            Verdict::Accepted { .. } => "accepted",
            Verdict::Refused { .. } => "refused",
            Verdict::Retry => "retry",
        };
        metrics
            .mqtt_messages
            .with_label_values(&[&msg.listener, label])
            .inc();
        verdict
    }

    fn event(&self, listener: &str, event: TransportEvent<'_>) {
        let label = match event {
            TransportEvent::Connected { .. } => "connected",
            TransportEvent::Subscribed => "subscribed",
            TransportEvent::SubscribeRefused => "subscribe_refused",
            TransportEvent::Disconnected { .. } => "disconnected",
            TransportEvent::Redelivered { .. } => "redelivered",
            TransportEvent::Refused { .. } => "refused",
            TransportEvent::ReplyDropped { .. } => "reply_dropped",
            TransportEvent::Stopped => "stopped",
        };
        self.gateway
            .metrics
            .mqtt_events
            .with_label_values(&[listener, label])
            .inc();
    }
}

/// The transport's verdict on how the path ended.
fn verdict(status: StatusCode, body: Bytes, ended: Ended) -> Verdict {
    match ended {
        Ended::Delivered { .. } | Ended::Stopped(StopKind::Settled) => Verdict::Accepted {
            reply: (status == StatusCode::OK && !body.is_empty()).then_some(body),
        },
        Ended::Stopped(StopKind::Refusal) => Verdict::Refused { reason: "rejected" },
        Ended::Stopped(StopKind::Policy) => Verdict::Refused { reason: "policy" },
        Ended::Stopped(StopKind::Retry) => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_can_still_succeed_is_retried() {
        let ok = verdict(
            StatusCode::OK,
            Bytes::from_static(b"{}"),
            Ended::Delivered { settles: true },
        );
        assert_eq!(
            ok,
            Verdict::Accepted {
                reply: Some(Bytes::from_static(b"{}"))
            }
        );
        let acked = verdict(
            StatusCode::OK,
            Bytes::new(),
            Ended::Delivered { settles: true },
        );
        assert_eq!(acked, Verdict::Accepted { reply: None });
        let dup = verdict(
            StatusCode::OK,
            Bytes::new(),
            Ended::Stopped(StopKind::Settled),
        );
        assert_eq!(dup, Verdict::Accepted { reply: None });
        let notice = verdict(
            StatusCode::OK,
            Bytes::from_static(b"denied"),
            Ended::Stopped(StopKind::Policy),
        );
        assert_eq!(notice, Verdict::Refused { reason: "policy" });
        let forged = verdict(
            StatusCode::UNAUTHORIZED,
            Bytes::new(),
            Ended::Stopped(StopKind::Refusal),
        );
        assert_eq!(forged, Verdict::Refused { reason: "rejected" });
        let down = verdict(
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::new(),
            Ended::Stopped(StopKind::Retry),
        );
        assert_eq!(down, Verdict::Retry);
    }
}
