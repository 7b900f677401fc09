//! The audit line: one structured log record per message or refused request.
//!
//! It is the security team's record of what the gateway decided and why.
//! It carries identifiers and decisions, never message text, secrets or
//! DLP-found values.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set once JSON logs are on: [`Audit::emit`] then writes its own line.
static JSON_LINES: AtomicBool = AtomicBool::new(false);

/// Audit lines from now on are written as JSON by [`Audit::emit`] itself,
/// not through the tracing subscriber (called by `init_logging`).
pub fn write_json_lines() {
    JSON_LINES.store(true, Ordering::Relaxed);
}

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

    /// Writes the audit line, when the log filter lets `moltgate::audit`
    /// at `info` through. With JSON logs (the default) the line is
    /// serialised here and written to stderr in one `write(2)`: the tracing
    /// subscriber's field-by-field JSON formatting was about 7 % of the
    /// gateway's CPU under load (issue 11). A writer thread fed by a channel
    /// was tried and cost more (a cross-thread wake-up per line) than it saved.
    /// With text logs, it is a tracing event like any other line.
    pub fn emit(&self) {
        if !tracing::enabled!(target: "moltgate::audit", tracing::Level::INFO) {
            return;
        }
        if JSON_LINES.load(Ordering::Relaxed) {
            let mut line = self.json_line();
            line.push(b'\n');
            // Nowhere better to report a closed stderr.
            let _ = std::io::stderr().write_all(&line);
        } else {
            self.emit_event();
        }
    }

    /// The line as JSON, with the keys a tracing JSON line has (`timestamp`,
    /// `level`, `message`, `target`), so readers need not tell them apart.
    pub fn json_line(&self) -> Vec<u8> {
        let rules = self.rules.join(",");
        let line = JsonLine {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level: "INFO",
            message: "audit",
            service: "moltgate",
            route: &self.route,
            platform: self.platform,
            envelope_id: &self.envelope_id,
            thread_id: &self.thread_id,
            sender_id: &self.sender_id,
            decision: self.decision,
            reason: &self.reason,
            rules: &rules,
            node: &self.node,
            status: self.status,
            client_ip: self.client_ip,
            processing_time_ms: self.elapsed_ms(),
            ai_response_code: self.ai_response_code,
            target: "moltgate::audit",
        };
        // Serialising plain strings and numbers into a Vec cannot fail.
        serde_json::to_vec(&line).unwrap_or_default()
    }

    fn emit_event(&self) {
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

/// The audit line's JSON shape.
#[derive(serde::Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    level: &'static str,
    message: &'static str,
    service: &'static str,
    route: &'a str,
    platform: &'static str,
    envelope_id: &'a str,
    thread_id: &'a str,
    sender_id: &'a str,
    decision: &'static str,
    reason: &'a str,
    rules: &'a str,
    node: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<std::net::IpAddr>,
    processing_time_ms: f64,
    ai_response_code: i32,
    target: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_line_has_every_field_and_the_tracing_keys() {
        let mut audit = Audit::start("/hooks/telegram", "telegram");
        audit.decision = "proxied";
        audit.rules = vec!["r1".into(), "r2".into()];
        audit.status = 200;
        audit.client_ip = Some("192.0.2.7".parse().unwrap());
        let v: serde_json::Value = serde_json::from_slice(&audit.json_line()).unwrap();
        assert_eq!(v["target"], "moltgate::audit");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "audit");
        assert_eq!(v["route"], "/hooks/telegram");
        assert_eq!(v["decision"], "proxied");
        assert_eq!(v["rules"], "r1,r2");
        assert_eq!(v["status"], 200);
        assert_eq!(v["client_ip"], "192.0.2.7");
        assert_eq!(v["ai_response_code"], -1);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        let no_ip = Audit::start("/x", "generic").json_line();
        let v: serde_json::Value = serde_json::from_slice(&no_ip).unwrap();
        assert!(v.get("client_ip").is_none());
    }
}
