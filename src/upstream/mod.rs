//! Forwarding to the AI cluster: real gRPC over HTTP/2 to a list of nodes,
//! load-balanced, health-checked, with failover before `accepted`.
//!
//! The first reply on a node's stream must be `accepted`: the cluster's
//! promise that it has the message. Until then a failure is safe to retry on
//! the next healthy node, and nothing has been acknowledged to the platform.
//! After it, the message belongs to that node and is never sent twice.

pub mod balance;
pub mod bot;
pub mod health;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::assistant::{DemoAssistant, ReplyStream};
use crate::config::{FileError, UpstreamConfig, EMBEDDED_NODE};
use crate::observe::Metrics;
use crate::proto::v1::assistant_client::AssistantClient;
use crate::proto::v1::{reply, Envelope};
use balance::Balancer;

/// How a node is reached.
enum Transport {
    /// The demo assistant, in process.
    Embedded,
    /// A gRPC channel (h2c or TLS), connected lazily and kept open.
    Grpc(Channel),
}

/// One node of a cluster, with its health.
pub struct Node {
    /// `host:port` or `embedded`.
    pub name: String,
    transport: Transport,
    healthy: AtomicBool,
    consecutive_failures: AtomicU32,
}

impl Node {
    /// Whether the node is currently considered healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn channel(&self) -> Option<Channel> {
        match &self.transport {
            Transport::Grpc(ch) => Some(ch.clone()),
            Transport::Embedded => None,
        }
    }
}

/// Why no node took a message.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// Every node is marked down by health checks.
    #[error("no healthy node in upstream '{upstream}'")]
    NoHealthyNode {
        /// The upstream.
        upstream: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// Every healthy node was tried and none accepted.
    #[error("no node of upstream '{upstream}' accepted the message after {attempts} attempts (last: {last})")]
    NoneAccepted {
        /// The upstream.
        upstream: String,
        /// Nodes tried.
        attempts: usize,
        /// The last failure, for the log (no message content).
        last: String,
        /// gRPC code of the last failure.
        code: i32,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
}

impl DispatchError {
    /// Seconds the client should wait before retrying.
    pub fn retry_after(&self) -> u32 {
        match self {
            DispatchError::NoHealthyNode { retry_after, .. }
            | DispatchError::NoneAccepted { retry_after, .. } => *retry_after,
        }
    }

    /// The gRPC code for the audit line (14 = UNAVAILABLE when nothing was tried).
    pub fn code(&self) -> i32 {
        match self {
            DispatchError::NoHealthyNode { .. } => tonic::Code::Unavailable as i32,
            DispatchError::NoneAccepted { code, .. } => *code,
        }
    }
}

/// A message a node has accepted, with the rest of its replies still coming.
pub struct Accepted {
    /// The node that accepted.
    pub node: String,
    /// The remaining replies (text parts, final).
    replies: ReplyStream,
    /// When the whole call must be finished.
    pub deadline: Instant,
    /// Text parts put back in front of `replies` (see [`Accepted::unread`]),
    /// and the state and code once the call ended.
    early: Collected,
    /// Whether the call ended (so a later step repeats the end).
    ended: bool,
}

/// What an accepted call finally produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// Text parts, in order.
    pub texts: Vec<String>,
    /// State from the `final` part.
    pub state: std::collections::HashMap<String, String>,
    /// 0 if the stream ended cleanly, else the gRPC code (4 = deadline).
    pub code: i32,
}

/// One step of an accepted call, as [`Accepted::next_part`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// A text part of the reply, in order.
    Text(String),
    /// The call ended: `final` arrived, the stream ended, failed, or the
    /// deadline passed. The last step.
    End {
        /// State from the `final` part (empty without one).
        state: std::collections::HashMap<String, String>,
        /// 0 if the stream ended cleanly, else the gRPC code (4 = deadline).
        code: i32,
    },
}

impl Accepted {
    /// A node's acceptance, with its replies to come.
    pub fn new(node: String, replies: ReplyStream, deadline: Instant) -> Self {
        Self {
            node,
            replies,
            deadline,
            early: Collected::default(),
            ended: false,
        }
    }

    /// Puts text parts that were read back in front of the stream, so the
    /// next steps (and [`Accepted::collect`]) return them again.
    pub fn unread(&mut self, early: Collected) {
        let mut texts = early.texts;
        texts.append(&mut self.early.texts);
        self.early.texts = texts;
        self.early.state.extend(early.state);
    }

    /// The next text part, or the end of the call. One reply is read per
    /// step, so a caller that is slow to take parts (a WebSocket client that
    /// reads slowly) slows reading the gRPC stream, and HTTP/2 flow control
    /// holds the node back once the stream's window is full; nothing grows
    /// here. Cancel safe (a step dropped while it waits loses no part), so
    /// a caller may race it against its own deadline.
    pub async fn next_part(&mut self) -> Part {
        if !self.early.texts.is_empty() {
            return Part::Text(self.early.texts.remove(0));
        }
        while !self.ended {
            let code =
                match tokio::time::timeout_at(self.deadline.into(), self.replies.next()).await {
                    Err(_) => tonic::Code::DeadlineExceeded as i32,
                    Ok(None) => 0,
                    Ok(Some(Err(status))) => status.code() as i32,
                    Ok(Some(Ok(r))) => match r.kind {
                        Some(reply::Kind::Text(t)) => return Part::Text(t.text),
                        Some(reply::Kind::Final(f)) => {
                            self.early.state.extend(f.state);
                            let rest = std::mem::replace(
                                &mut self.replies,
                                Box::pin(futures::stream::empty()),
                            );
                            finish_stream(rest);
                            0
                        }
                        Some(reply::Kind::Accepted(_)) | None => continue,
                    },
                };
            self.early.code = code;
            self.ended = true;
        }
        Part::End {
            state: std::mem::take(&mut self.early.state),
            code: self.early.code,
        }
    }

    /// Reads replies until the stream ends, `final` arrives, or the deadline.
    pub async fn collect(mut self) -> Collected {
        let mut texts = Vec::new();
        loop {
            match self.next_part().await {
                Part::Text(text) => texts.push(text),
                Part::End { state, code } => return Collected { texts, state, code },
            }
        }
    }
}

/// Reads a reply stream to its end (the server's trailers, which follow
/// `final`) instead of dropping it, which would reset the HTTP/2 stream:
/// a node's h2 server counts client resets and, past its limit, closes the
/// connection with ENHANCE_YOUR_CALM (`RESOURCE_EXHAUSTED` for every call on
/// it). The trailers are usually already buffered; otherwise a task waits
/// for them, bounded.
fn finish_stream(mut replies: ReplyStream) {
    use futures::FutureExt;
    if replies.next().now_or_never().is_none() {
        tokio::spawn(async move {
            let _ = tokio::time::timeout(STREAM_END_WAIT, replies.next()).await;
        });
    }
}

/// How long a finished reply stream is given to deliver its trailers.
const STREAM_END_WAIT: Duration = Duration::from_secs(5);

/// A named cluster of assistant nodes.
pub struct Cluster {
    /// The upstream's name in config.
    pub name: String,
    nodes: Vec<Arc<Node>>,
    node_names: Vec<String>,
    balancer: Balancer,
    timeout: Duration,
    accept_timeout: Duration,
    retry_after: u32,
    /// Health-check settings.
    pub health: crate::config::HealthCheckConfig,
    metrics: Metrics,
}

impl Cluster {
    /// Builds the cluster. gRPC channels connect lazily, so this needs a
    /// Tokio runtime context but no reachable node.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        config_path: &std::path::Path,
        resolve: impl Fn(&str) -> std::path::PathBuf,
        metrics: Metrics,
    ) -> Result<Self, FileError> {
        let tls = match &cfg.tls {
            Some(t) => {
                let ca_path = resolve(&t.ca);
                let pem = std::fs::read(&ca_path).map_err(|e| {
                    FileError::whole(
                        config_path,
                        format!(
                            "upstream '{name}': cannot read tls.ca {}: {e}",
                            ca_path.display()
                        ),
                    )
                })?;
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                if let Some(domain) = &t.domain {
                    tls = tls.domain_name(domain.0.clone());
                }
                Some(tls)
            }
            None => None,
        };
        let mut nodes = Vec::with_capacity(cfg.nodes.len());
        for node in &cfg.nodes {
            let transport = if node.0 == EMBEDDED_NODE {
                Transport::Embedded
            } else {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let bad = |e: String| {
                    FileError::whole(
                        config_path,
                        format!("upstream '{name}': node '{node}': {e}"),
                    )
                };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{}", node.0))
                    .map_err(|e| bad(e.to_string()))?
                    .connect_timeout(cfg.accept_timeout.0)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_while_idle(true);
                if let Some(tls) = &tls {
                    ep = ep.tls_config(tls.clone()).map_err(|e| bad(e.to_string()))?;
                }
                Transport::Grpc(ep.connect_lazy())
            };
            metrics
                .node_healthy
                .with_label_values(&[name, &node.0])
                .set(1);
            nodes.push(Arc::new(Node {
                name: node.0.clone(),
                transport,
                healthy: AtomicBool::new(true),
                consecutive_failures: AtomicU32::new(0),
            }));
        }
        Ok(Self {
            name: name.to_string(),
            node_names: nodes.iter().map(|n| n.name.clone()).collect(),
            nodes,
            balancer: Balancer::new(cfg.balance),
            timeout: cfg.timeout.0,
            accept_timeout: cfg.accept_timeout.0,
            retry_after: cfg.retry_after,
            health: cfg.health_check.clone(),
            metrics,
        })
    }

    /// Whether any node is healthy.
    pub fn is_healthy(&self) -> bool {
        self.nodes.iter().any(|n| n.is_healthy())
    }

    /// The nodes, for health checking.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// Records a node's health; logs and updates the gauge on a change.
    pub fn set_health(&self, node: &Node, ok: bool, reason: &str) {
        if ok {
            node.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            let failures = node.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures < self.health.unhealthy_after {
                return;
            }
        }
        let was = node.healthy.swap(ok, Ordering::AcqRel);
        if was != ok {
            if ok {
                tracing::info!(upstream = %self.name, node = %node.name, "upstream node is healthy");
            } else {
                tracing::warn!(upstream = %self.name, node = %node.name, reason, "upstream node is down");
            }
        }
        self.metrics
            .node_healthy
            .with_label_values(&[&self.name, &node.name])
            .set(i64::from(ok));
    }

    /// Sends `env` to the first healthy node (in balancing order) that
    /// accepts it. Fails over on any error before `accepted`.
    pub async fn dispatch(&self, env: &Envelope) -> Result<Accepted, DispatchError> {
        let key = env
            .conversation
            .as_ref()
            .map(|c| c.id.as_str())
            .filter(|k| !k.is_empty())
            .unwrap_or(env.id.as_str());
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut attempts = 0;
        let mut last = (String::from("none"), tonic::Code::Unavailable as i32);
        for i in self.balancer.order(&self.node_names, key) {
            let Some(node) = self.nodes.get(i) else {
                continue;
            };
            if !node.is_healthy() {
                continue;
            }
            attempts += 1;
            match self.try_node(node, env, deadline).await {
                Ok(replies) => {
                    self.metrics
                        .accept_latency
                        .observe(started.elapsed().as_secs_f64());
                    self.count_attempt(node, "accepted", None);
                    return Ok(Accepted::new(node.name.clone(), replies, deadline));
                }
                Err((reason, code)) => {
                    self.count_attempt(node, "failed", Some(reason));
                    tracing::warn!(upstream = %self.name, node = %node.name, reason, code, "upstream node did not accept; trying the next");
                    if matches!(reason, "connect" | "unavailable" | "accept_timeout") {
                        // Passive health: skip it until a health check passes.
                        node.consecutive_failures
                            .store(self.health.unhealthy_after, Ordering::Relaxed);
                        self.set_health(node, false, reason);
                    }
                    last = (reason.to_string(), code);
                }
            }
        }
        if attempts == 0 {
            return Err(DispatchError::NoHealthyNode {
                upstream: self.name.clone(),
                retry_after: self.retry_after,
            });
        }
        Err(DispatchError::NoneAccepted {
            upstream: self.name.clone(),
            attempts,
            last: last.0,
            code: last.1,
            retry_after: self.retry_after,
        })
    }

    fn count_attempt(&self, node: &Node, result: &str, reason: Option<&str>) {
        self.metrics
            .upstream_attempts
            .with_label_values(&[&self.name, &node.name, result])
            .inc();
        if let Some(reason) = reason {
            self.metrics
                .upstream_failures
                .with_label_values(&[&self.name, &node.name, reason])
                .inc();
        }
    }

    /// One attempt: open the stream and wait for `accepted`.
    async fn try_node(
        &self,
        node: &Node,
        env: &Envelope,
        deadline: Instant,
    ) -> Result<ReplyStream, (&'static str, i32)> {
        let accept_by = deadline.min(Instant::now() + self.accept_timeout);
        let attempt = async {
            let mut stream: ReplyStream = match node.channel() {
                None => DemoAssistant::stream(env),
                Some(channel) => {
                    let mut client = AssistantClient::new(channel);
                    let resp = client
                        .handle(env.clone())
                        .await
                        .map_err(|s| (status_reason(&s), s.code() as i32))?;
                    Box::pin(resp.into_inner())
                }
            };
            match stream.next().await {
                Some(Ok(r)) if matches!(r.kind, Some(reply::Kind::Accepted(_))) => Ok(stream),
                Some(Ok(_)) => Err(("no_accepted", tonic::Code::FailedPrecondition as i32)),
                Some(Err(s)) => Err((status_reason(&s), s.code() as i32)),
                None => Err(("closed_before_accepted", tonic::Code::Unavailable as i32)),
            }
        };
        match tokio::time::timeout_at(accept_by.into(), attempt).await {
            Ok(r) => r,
            Err(_) => Err(("accept_timeout", tonic::Code::DeadlineExceeded as i32)),
        }
    }
}

/// A bounded metric label for a gRPC failure.
fn status_reason(s: &tonic::Status) -> &'static str {
    use tonic::Code;
    match s.code() {
        Code::Unavailable
            if s.message().contains("connect") || s.message().contains("transport") =>
        {
            "connect"
        }
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "deadline",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{Accepted as AcceptedReply, Final, Reply, TextPart};

    fn text(t: &str) -> Result<Reply, tonic::Status> {
        Ok(Reply {
            envelope_id: "e".into(),
            kind: Some(reply::Kind::Text(TextPart { text: t.into() })),
        })
    }

    fn kind(kind: reply::Kind) -> Result<Reply, tonic::Status> {
        Ok(Reply {
            envelope_id: "e".into(),
            kind: Some(kind),
        })
    }

    fn accepted(replies: Vec<Result<Reply, tonic::Status>>) -> Accepted {
        let stream: ReplyStream = Box::pin(futures::stream::iter(replies));
        Accepted::new("n".into(), stream, Instant::now() + Duration::from_secs(5))
    }

    #[tokio::test]
    async fn steps_are_the_text_parts_then_the_end() {
        let state = std::collections::HashMap::from([("k".to_string(), "v".to_string())]);
        let mut a = accepted(vec![
            kind(reply::Kind::Accepted(AcceptedReply {})),
            text("one"),
            text("two"),
            kind(reply::Kind::Final(Final {
                state: state.clone(),
            })),
            text("after final: never read"),
        ]);
        assert_eq!(a.next_part().await, Part::Text("one".into()));
        assert_eq!(a.next_part().await, Part::Text("two".into()));
        assert_eq!(a.next_part().await, Part::End { state, code: 0 });
        // The end is the last step, however often it is asked for.
        assert!(matches!(a.next_part().await, Part::End { code: 0, .. }));
    }

    #[tokio::test]
    async fn unread_parts_come_first_and_collect_takes_every_step() {
        let mut a = accepted(vec![
            text("two"),
            Err(tonic::Status::internal("node failed")),
        ]);
        a.unread(Collected {
            texts: vec!["zero".into(), "one".into()],
            ..Default::default()
        });
        assert_eq!(a.next_part().await, Part::Text("zero".into()));
        // What was stepped through can be put back in front again.
        a.unread(Collected {
            texts: vec!["zero".into()],
            ..Default::default()
        });
        let c = a.collect().await;
        assert_eq!(c.texts, ["zero", "one", "two"]);
        assert_eq!(c.code, tonic::Code::Internal as i32);
    }

    #[tokio::test]
    async fn a_silent_node_ends_at_the_deadline() {
        let stream: ReplyStream = Box::pin(futures::stream::pending());
        let mut a = Accepted::new(
            "n".into(),
            stream,
            Instant::now() + Duration::from_millis(20),
        );
        assert_eq!(
            a.next_part().await,
            Part::End {
                state: Default::default(),
                code: tonic::Code::DeadlineExceeded as i32
            }
        );
    }
}
