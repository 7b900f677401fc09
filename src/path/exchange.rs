//! One request's record as it moves down the path: what each stage
//! learnt, for the single audit line and metric set written by
//! `super::finish`, and the dedupe claim that the finish step commits or
//! releases from the real outcome.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};

use super::claim::Claimed;
use super::routes::Route;
use crate::platform::{BearerVerifier, PlatformMessage, WebhookRequest};
use crate::policy::PolicySet;

/// A request with its whole body read, as the path sees it.
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
    pub fn as_webhook<'a>(
        &'a self,
        now: SystemTime,
        bearer: Option<&'a dyn BearerVerifier>,
    ) -> WebhookRequest<'a> {
        WebhookRequest {
            method: &self.method,
            query: self.query.as_deref(),
            headers: &self.headers,
            body: &self.body,
            now,
            bearer,
        }
    }
}

/// A policy decision to count: `moltgate_policy_decisions_total{stage,decision,rule}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// `ip`, `rate` or `abac`.
    pub stage: &'static str,
    /// `allow` or `deny`.
    pub allowed: bool,
    /// The bounded label of what decided.
    pub label: String,
}

pub use crate::policy::findings::Found;

/// Everything one request collects on its way.
pub struct Exchange {
    started: Instant,
    /// The route, when the path matched one.
    pub route: Option<Arc<Route>>,
    /// The one policy snapshot that decides every stage of this request.
    pub policies: Arc<PolicySet>,
    /// The verified message, once authenticated.
    pub message: Option<PlatformMessage>,
    /// Sender and thread for the audit line (ids, never content).
    pub sender_id: String,
    /// Thread id for the audit line.
    pub thread_id: String,
    /// The Envelope sent, if any.
    pub envelope_id: String,
    /// Rules that decided, in order (`abac:…`, `rate:ip`, `dlp:card:mask`).
    pub rules: Vec<String>,
    /// Policy decisions to count.
    pub decided: Vec<Decided>,
    /// DLP findings to count.
    pub found: Vec<Found>,
    /// The node (AI node or bot) that took the message.
    pub node: String,
    /// The AI cluster's gRPC code (-1 when not called).
    pub ai_response_code: i32,
    /// A detail for the audit line's `reason` (`inline_reply`, `resealed`, …).
    pub note: &'static str,
    /// The dedupe claim on the message id, committed or released by `finish`.
    pub claim: Option<Claimed>,
    /// The client address the IP policy judged (stage `admit`).
    pub client_ip: Option<std::net::IpAddr>,
    /// Set by a caller that streams the answer (the WebSocket API): each
    /// reply part goes here as it arrives, through egress DLP. Bounded, so
    /// a slow reader holds back the AI cluster's stream, not memory.
    pub reply_parts: Option<tokio::sync::mpsc::Sender<String>>,
}

impl Exchange {
    /// A new record for a request on `route` (or none), decided by `policies`.
    pub fn new(route: Option<Arc<Route>>, policies: Arc<PolicySet>) -> Self {
        Self {
            started: Instant::now(),
            route,
            policies,
            message: None,
            sender_id: String::new(),
            thread_id: String::new(),
            envelope_id: String::new(),
            rules: Vec::new(),
            decided: Vec::new(),
            found: Vec::new(),
            node: String::new(),
            ai_response_code: -1,
            note: "",
            claim: None,
            client_ip: None,
            reply_parts: None,
        }
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The route's path, or `unmatched`.
    pub fn route_label(&self) -> &str {
        self.route.as_ref().map_or("unmatched", |r| r.path.as_str())
    }

    /// The route's platform, or `none`.
    pub fn platform(&self) -> &'static str {
        self.route.as_ref().map_or("none", |r| r.platform_name())
    }

    /// Records a policy decision.
    pub fn decide(&mut self, stage: &'static str, allowed: bool, label: impl Into<String>) {
        self.decided.push(Decided {
            stage,
            allowed,
            label: label.into(),
        });
    }

    /// The verified message (present after `authenticate`).
    pub fn msg(&self) -> Option<&PlatformMessage> {
        self.message.as_ref()
    }
}

impl Exchange {
    /// Records the verified message: ids for the audit line, and the
    /// message itself for a notice if a later stage stops it.
    pub fn heard(&mut self, msg: &PlatformMessage) {
        self.sender_id = msg.sender_id.clone();
        self.thread_id = msg.thread_id.clone();
        self.message = Some(msg.clone());
    }

    /// Records the policy decision behind a stop (rate limits).
    pub fn record_stop(&mut self, stop: &super::stop::Stop) {
        if let super::stop::Stop::RateLimited { scope, .. } = stop {
            self.decide("rate", false, *scope);
            self.rules.push(format!("rate:{scope}"));
        }
    }
}
