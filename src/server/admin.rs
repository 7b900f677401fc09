//! The admin listener: plain HTTP. `GET /healthz` (both listeners listen:
//! 503 while one is not yet, and once one failed) and `GET /readyz`
//! (serving, not draining; policies loaded and an upstream healthy) are open;
//! `GET /metrics` (Prometheus text) and `POST /reload` (reload policies) are
//! guarded:
//!
//! - with `listen.admin.token`, they need `Authorization: Bearer <token>`
//!   (compared in constant time, through SHA-256 so the length leaks
//!   nothing either); the token is never logged, counted or echoed;
//! - without one, the listener is on loopback (the config refuses anything
//!   else), and they need a `Host` that is `localhost` or an IP literal, so a
//!   web page that rebinds its own DNS name to 127.0.0.1 gets 403.
//!
//! `POST /reload` also refuses cross-site requests: without the token it
//! needs a content type a browser cannot send cross-site without a CORS
//! preflight (e.g. `application/json`; not form, multipart or text/plain, nor
//! none), and this listener answers no preflight. It reloads at most once per
//! `listen.admin.reload_interval` (default 1 s; 429 with `Retry-After`
//! otherwise); refused requests do not use up that budget, so they cannot
//! block an operator's reload.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{header, HeaderMap, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::lifecycle::{Health, Lifecycle};
use crate::config::AdminToken;
use crate::path::Gateway;

const JSON: &str = "application/json";

/// The admin endpoints.
pub struct AdminApp {
    /// The gateway whose state is reported.
    pub gateway: Arc<Gateway>,
    /// SHA-256 of the admin token, when one is configured.
    token: Option<[u8; 32]>,
    /// When `POST /reload` last reloaded.
    last_reload: Mutex<Option<Instant>>,
    /// Shortest time between two reloads.
    reload_interval: Duration,
    /// Whether the process serves, drains or failed.
    life: Arc<Lifecycle>,
}

/// How a guarded request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// It presented the admin token.
    Token,
    /// No token is configured: a loopback listener and a local `Host`.
    Local,
}

/// Why a guarded request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// No token is configured and `Host` is a name a page could rebind.
    HostNotLocal,
    /// A token is configured and was not presented.
    Unauthorized,
}

impl Refused {
    fn response(self) -> Response<Vec<u8>> {
        match self {
            Refused::HostNotLocal => error(
                StatusCode::FORBIDDEN,
                "host_not_local",
                "without an admin token, the admin listener answers only Host: localhost or an IP address",
            ),
            Refused::Unauthorized => {
                let mut resp = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this endpoint needs Authorization: Bearer <admin token>",
                );
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(r#"Bearer realm="moltgate-admin""#),
                );
                resp
            }
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    reply(status, JSON, body)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `Host` names this machine without a DNS name a web page could
/// rebind: `localhost`, or an IP literal (either with a port). No `Host`
/// (HTTP/1.0 tools) is not a browser.
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(a, _)| a),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// Whether the content type is one a browser sends cross-site only after a
/// CORS preflight: present, and not form, multipart or plain text.
fn preflighted_content_type(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    !essence.is_empty()
        && ![
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "text/plain",
        ]
        .contains(&essence.as_str())
}

impl AdminApp {
    /// The admin endpoints of `gateway`, guarded by `token` when one is set,
    /// reloading at most once per `reload_interval`, reporting `life`.
    pub fn new(
        gateway: Arc<Gateway>,
        token: Option<&AdminToken>,
        reload_interval: Duration,
        life: Arc<Lifecycle>,
    ) -> Self {
        Self {
            gateway,
            token: token.map(|t| sha256(t.as_bytes())),
            last_reload: Mutex::new(None),
            reload_interval,
            life,
        }
    }

    /// 200 while both listeners listen (draining included: the process
    /// still answers); 503 before, and once a listener failed.
    fn health(&self) -> Response<Vec<u8>> {
        let (status, body) = match self.life.health() {
            Health::Serving => (StatusCode::OK, serde_json::json!({"status": "ok"})),
            Health::Draining => (StatusCode::OK, serde_json::json!({"status": "draining"})),
            Health::Starting => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "starting", "reason": "a listener does not listen yet"}),
            ),
            Health::Failed(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "failed", "reason": why}),
            ),
        };
        reply(status, JSON, body.to_string())
    }

    /// The answer for one admin request (its body is not used).
    pub fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Vec<u8>> {
        match (method, path) {
            (&Method::GET, "/healthz") => self.health(),
            (&Method::GET, "/readyz") => self.readiness(),
            (&Method::GET, "/metrics") => match self.guard(path, headers) {
                Ok(_) => reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.gateway.metrics.render(),
                ),
                Err(refused) => refused.response(),
            },
            (&Method::POST, "/reload") => self.reload(headers),
            (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path",
            ),
            _ => error(StatusCode::NOT_FOUND, "unknown_path", "no such admin path"),
        }
    }

    /// 200 when ready; the body says why not, and with `shared:` whether
    /// Redis answers (`"shared":"up"|"down"`, with the live node count).
    fn readiness(&self) -> Response<Vec<u8>> {
        let gw = &self.gateway;
        let mut body = serde_json::json!({
            "status": "ready",
            "policy_version": gw.policies.current().version,
        });
        if let Some(shared) = &gw.shared {
            body["shared"] = if shared.is_up() { "up" } else { "down" }.into();
            body["shared_on_error"] = shared.on_error().as_str().into();
            body["shared_nodes"] = shared.nodes().into();
        }
        let reason = match self.life.health() {
            Health::Serving if gw.is_ready() => {
                return reply(StatusCode::OK, JSON, body.to_string());
            }
            Health::Serving if gw.upstreams_ready() => {
                "shared state (Redis) unavailable and shared.on_error is deny"
            }
            Health::Serving => "no healthy upstream node",
            Health::Draining => "draining: the process is stopping or handing over to a new one",
            Health::Starting => "starting: a listener does not listen yet",
            Health::Failed(_) => "a listener failed",
        };
        body["status"] = "not_ready".into();
        body["reason"] = reason.into();
        reply(StatusCode::SERVICE_UNAVAILABLE, JSON, body.to_string())
    }

    /// Lets a request to a guarded endpoint in, or says why not.
    fn guard(&self, path: &str, headers: &HeaderMap) -> Result<Access, Refused> {
        let Some(expected) = &self.token else {
            if local_host(headers) {
                return Ok(Access::Local);
            }
            tracing::warn!(
                path,
                "admin request refused: Host is not local (DNS rebinding?)"
            );
            return Err(Refused::HostNotLocal);
        };
        let presented = bearer(headers).map(|t| sha256(t.as_bytes()));
        if presented.is_some_and(|p| bool::from(p.ct_eq(expected))) {
            return Ok(Access::Token);
        }
        let reason = if presented.is_some() {
            "wrong token"
        } else {
            "no bearer token"
        };
        tracing::warn!(path, reason, "admin request refused");
        Err(Refused::Unauthorized)
    }

    /// `POST /reload`: guarded, same-site only, at most once per interval.
    fn reload(&self, headers: &HeaderMap) -> Response<Vec<u8>> {
        let access = match self.guard("/reload", headers) {
            Ok(a) => a,
            Err(refused) => return refused.response(),
        };
        if access == Access::Local && !preflighted_content_type(headers) {
            tracing::warn!(
                "admin reload refused: a simple content type could come from another site"
            );
            return error(
                StatusCode::FORBIDDEN,
                "cross_site_refused",
                "POST /reload needs Content-Type: application/json (or the admin token)",
            );
        }
        if let Err(wait) = self.take_reload_slot(Instant::now()) {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "policies were reloaded moments ago; retry after the interval",
            );
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
            return resp;
        }
        let policies = &self.gateway.policies;
        match policies.reload() {
            Ok(version) => reply(
                StatusCode::OK,
                JSON,
                format!(r#"{{"status":"reloaded","policy_version":{version}}}"#),
            ),
            Err(e) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                JSON,
                serde_json::json!({"status": "refused", "error": e.to_string(), "policy_version": policies.current().version}).to_string(),
            ),
        }
    }

    /// Claims the reload slot at `now`, or says how long until the next one.
    fn take_reload_slot(&self, now: Instant) -> Result<(), Duration> {
        let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = *last {
            let since = now.saturating_duration_since(at);
            if since < self.reload_interval {
                return Err(self.reload_interval - since);
            }
        }
        *last = Some(now);
        Ok(())
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let headers = session.req_header().headers.clone();
        // Admin requests carry no body we use; drain a small one so the
        // connection stays usable, and refuse anything large.
        let mut drained = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            drained += chunk.len();
            if drained > 64 * 1024 {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "admin requests carry no body",
                );
            }
        }
        self.answer(&method, &path, &headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_and_hosts() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[])), None);
        for ok in [
            "localhost",
            "LOCALHOST:9090",
            "127.0.0.1:9090",
            "[::1]:9090",
            "[::1]",
            "10.0.0.7",
        ] {
            assert!(local_host(&headers(&[("host", ok)])), "{ok}");
        }
        assert!(local_host(&headers(&[])));
        for bad in [
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.nip.io:9090",
            "[evil]:1",
        ] {
            assert!(!local_host(&headers(&[("host", bad)])), "{bad}");
        }
    }

    #[test]
    fn only_preflighted_content_types_pass() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert!(
                preflighted_content_type(&headers(&[("content-type", ok)])),
                "{ok}"
            );
        }
        assert!(!preflighted_content_type(&headers(&[])));
        for simple in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            " Multipart/Form-Data; boundary=x",
            "",
        ] {
            assert!(
                !preflighted_content_type(&headers(&[("content-type", simple)])),
                "{simple:?}"
            );
        }
    }
}
