//! The audit line: one structured log record per message or refused request.
//!
//! It is the security team's record of what the gateway decided and why.
//! It carries identifiers and decisions, never message text, secrets or
//! DLP-found values.

use std::time::Instant;

/// What the gateway decided about one request, filled in as it moves along
/// the message path and written once by [`Audit::emit`].
#[derive(Debug, Clone)]
pub struct Audit {
    started: Instant,
    /// Route path (from config) or `unmatched`.
    pub route: String,
    /// Platform name.
    pub platform: &'static str,
    /// Envelope id, once one exists.
    pub envelope_id: String,
    /// Conversation thread id, when known.
    pub thread_id: String,
    /// Sender id, when known.
    pub sender_id: String,
    /// The decision: `answered`, `accepted`, `rejected`, `denied`, `duplicate`…
    pub decision: &'static str,
    /// The reason or rule behind the decision (bounded: a rule id or a fixed label).
    pub reason: String,
    /// Policy rules and DLP findings that applied (ids and types only).
    pub rules: Vec<String>,
    /// The upstream node that accepted the message.
    pub node: String,
    /// gRPC status code of the AI call (0 = OK), or -1 when no call was made.
    pub ai_response_code: i32,
    /// HTTP status sent to the client.
    pub status: u16,
    /// The client address the IP policy judged, once known.
    pub client_ip: Option<std::net::IpAddr>,
}

impl Audit {
    /// Starts the audit record (and its clock) for a request on `route`.
    pub fn start(route: &str, platform: &'static str) -> Self {
        Self::at(route, platform, Instant::now())
    }

    /// A line for a request that arrived at `started`.
    pub fn at(route: &str, platform: &'static str, started: Instant) -> Self {
        Self {
            started,
            route: route.to_string(),
            platform,
            envelope_id: String::new(),
            thread_id: String::new(),
            sender_id: String::new(),
            decision: "rejected",
            reason: String::new(),
            rules: Vec::new(),
            node: String::new(),
            ai_response_code: -1,
            status: 0,
            client_ip: None,
        }
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Milliseconds since the request started.
    pub fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Seconds since the request started.
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Writes the audit line.
    pub fn emit(&self) {
        tracing::info!(
            target: "moltgate::audit",
            service = "moltgate",
            route = %self.route,
            platform = self.platform,
            envelope_id = %self.envelope_id,
            thread_id = %self.thread_id,
            sender_id = %self.sender_id,
            decision = self.decision,
            reason = %self.reason,
            rules = %self.rules.join(","),
            node = %self.node,
            status = self.status,
            client_ip = self.client_ip.map(tracing::field::display),
            processing_time_ms = self.elapsed_ms(),
            ai_response_code = self.ai_response_code,
            "audit"
        );
    }
}
