//! `websocket:` on a `platform: websocket` route: frame size, idle time,
//! and (in passthrough) which bot gateway's frames are inspected.

use std::time::Duration;

use serde::Deserialize;

use super::yaml::{EnvString, HumanDuration};
use super::{PlatformKind, RouteConfig, RouteMode};

/// A route's WebSocket settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSettings {
    /// Largest message (a frame, or fragments reassembled), in bytes; a
    /// larger one closes the connection with 1009.
    #[serde(default = "default_max_frame")]
    pub max_frame: usize,
    /// A connection with no frame for this long is pinged; one that stays
    /// silent for as long again is closed.
    #[serde(default = "default_idle")]
    pub idle: HumanDuration,
    /// Passthrough: whose frames these are (`openclaw`, or `json` with pointers).
    #[serde(default)]
    pub profile: Option<WebSocketProfile>,
    /// Passthrough: the header that carries the authenticated subject to the
    /// upstream (set once, overwriting anything the client sent).
    #[serde(default)]
    pub identity_header: Option<EnvString>,
    /// Passthrough: the path of the upstream upgrade request (default: the
    /// route's own path; OpenClaw's gateway listens on `/`).
    #[serde(default)]
    pub upstream_path: Option<String>,
    /// `profile: json`: JSON pointers (RFC 6901) to the user's text in
    /// client frames; a frame with any of them is a message.
    #[serde(default)]
    pub ingress_pointers: Vec<String>,
    /// `profile: json`: JSON pointers to the bot's text in upstream frames.
    #[serde(default)]
    pub egress_pointers: Vec<String>,
}

/// The frame shapes a passthrough route knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebSocketProfile {
    /// OpenClaw's gateway protocol.
    Openclaw,
    /// Any JSON frames, with the text fields named by pointers.
    Json,
}

impl Default for WebSocketSettings {
    fn default() -> Self {
        Self {
            max_frame: default_max_frame(),
            idle: default_idle(),
            profile: None,
            identity_header: None,
            upstream_path: None,
            ingress_pointers: Vec::new(),
            egress_pointers: Vec::new(),
        }
    }
}

fn default_max_frame() -> usize {
    65_536
}

fn default_idle() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

/// A route's WebSocket problem, if any.
pub fn check_route(route: &RouteConfig) -> Option<String> {
    let path = &route.path;
    match (&route.websocket, route.platform) {
        (Some(_), p) if p != PlatformKind::Websocket => Some(format!(
            "route '{path}': `websocket:` settings apply to `platform: websocket` routes only"
        )),
        (Some(ws), _) if ws.max_frame == 0 || ws.idle.0.is_zero() => Some(format!(
            "route '{path}': websocket.max_frame and websocket.idle must be above zero"
        )),
        (ws, PlatformKind::Websocket) => match route.mode {
            RouteMode::Passthrough => check_passthrough(path, ws.as_ref()),
            _ => check_translate(path, ws.as_ref()),
        },
        _ => None,
    }
}

/// A passthrough route names whose frames it inspects; `json` names where.
fn check_passthrough(path: &str, ws: Option<&WebSocketSettings>) -> Option<String> {
    let Some(ws) = ws.filter(|ws| ws.profile.is_some()) else {
        return Some(format!(
            "route '{path}': a `platform: websocket` passthrough route needs `websocket: {{ profile: openclaw }}` (or `profile: json` with `ingress_pointers`), so that every frame can be inspected"
        ));
    };
    if ws.profile == Some(WebSocketProfile::Json) && ws.ingress_pointers.is_empty() {
        return Some(format!(
            "route '{path}': `websocket.profile: json` needs `ingress_pointers` (JSON pointers to the user's text, e.g. [\"/text\"])"
        ));
    }
    if ws.profile == Some(WebSocketProfile::Openclaw)
        && !(ws.ingress_pointers.is_empty() && ws.egress_pointers.is_empty())
    {
        return Some(format!(
            "route '{path}': `ingress_pointers`/`egress_pointers` belong to `profile: json`; `profile: openclaw` knows OpenClaw's frames"
        ));
    }
    let pointers = ws.ingress_pointers.iter().chain(&ws.egress_pointers);
    if let Some(bad) = pointers.into_iter().find(|p| !p.starts_with('/')) {
        return Some(format!(
            "route '{path}': websocket pointer '{bad}' is not a JSON pointer (it starts with '/', e.g. \"/message/text\")"
        ));
    }
    match &ws.upstream_path {
        Some(p) if !p.starts_with('/') => Some(format!(
            "route '{path}': websocket.upstream_path '{p}' must start with '/'"
        )),
        _ => None,
    }
}

/// Translate routes are moltgate's own API: nothing to say about an upstream's frames.
fn check_translate(path: &str, ws: Option<&WebSocketSettings>) -> Option<String> {
    let ws = ws?;
    let passthrough_only = ws.profile.is_some()
        || ws.identity_header.is_some()
        || ws.upstream_path.is_some()
        || !ws.ingress_pointers.is_empty()
        || !ws.egress_pointers.is_empty();
    passthrough_only.then(|| format!(
        "route '{path}': websocket.profile, identity_header, upstream_path and the pointers apply to `mode: passthrough` only"
    ))
}
