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
        (_, PlatformKind::Websocket) if route.mode == RouteMode::Passthrough => Some(format!(
            "route '{path}': `platform: websocket` with `mode: passthrough` (an inspecting proxy for WebSocket bot gateways) is not available in this version; use `mode: translate` (moltgate's own WebSocket API)"
        )),
        (Some(ws), _) if ws.max_frame == 0 || ws.idle.0.is_zero() => Some(format!(
            "route '{path}': websocket.max_frame and websocket.idle must be above zero"
        )),
        _ => None,
    }
}
