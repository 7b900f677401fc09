//! The admin listener: plain HTTP for loopback. `GET /healthz` (the process
//! is up), `GET /readyz` (policies loaded and an upstream healthy),
//! `GET /metrics` (Prometheus text) and `POST /reload` (reload policies).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::path::Gateway;

/// The admin endpoints.
pub struct AdminApp {
    /// The gateway whose state is reported.
    pub gateway: Arc<Gateway>,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Vec<u8>> {
    let body = body.into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl AdminApp {
    /// The answer for one admin request (method and path only).
    pub fn answer(&self, method: &Method, path: &str) -> Response<Vec<u8>> {
        let json = "application/json";
        match (method, path) {
            (&Method::GET, "/healthz") => reply(StatusCode::OK, json, r#"{"status":"ok"}"#.into()),
            (&Method::GET, "/readyz") => {
                let version = self.gateway.policies.current().version;
                if self.gateway.is_ready() {
                    reply(StatusCode::OK, json, format!(r#"{{"status":"ready","policy_version":{version}}}"#))
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json,
                        format!(r#"{{"status":"not_ready","reason":"no healthy upstream node","policy_version":{version}}}"#),
                    )
                }
            }
            (&Method::GET, "/metrics") => reply(StatusCode::OK, "text/plain; version=0.0.4", self.gateway.metrics.render()),
            (&Method::POST, "/reload") => match self.gateway.policies.reload() {
                Ok(version) => reply(StatusCode::OK, json, format!(r#"{{"status":"reloaded","policy_version":{version}}}"#)),
                Err(e) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json,
                    serde_json::json!({"status": "refused", "error": e.to_string(), "policy_version": self.gateway.policies.current().version}).to_string(),
                ),
            },
            (_, "/healthz" | "/readyz" | "/metrics" | "/reload") => {
                reply(StatusCode::METHOD_NOT_ALLOWED, json, r#"{"error":"method_not_allowed"}"#.into())
            }
            _ => reply(StatusCode::NOT_FOUND, json, r#"{"error":"unknown_path"}"#.into()),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Admin requests carry no body we use; drain a small one so the
        // connection stays usable, and refuse anything large.
        let mut drained = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            drained += chunk.len();
            if drained > 64 * 1024 {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "application/json",
                    r#"{"error":"body_too_large"}"#.into(),
                );
            }
        }
        self.answer(&method, &path)
    }
}
