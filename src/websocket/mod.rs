//! WebSocket (`platform: websocket`): moltgate's own streaming API
//! (`mode: translate`) and, later, an inspecting proxy in front of
//! WebSocket bot gateways such as OpenClaw (`mode: passthrough`).
//!
//! moltgate terminates the WebSocket itself instead of inspecting Pingora's
//! `UpgradedBody` tasks in the proxy filters: every request is answered in
//! `request_filter` (there is no Pingora upstream phase to filter), the
//! path needs whole messages (fragments reassembled under a cap), and the
//! upgrade (authentication, the 101, which extensions are offered) must be
//! ours. `server::websocket` writes the 101 and bridges the upgraded
//! session's bytes to [`translate::serve`], which speaks WebSocket with
//! tungstenite.

pub mod frames;
pub mod inspect;
pub mod openclaw;
pub mod passthrough;
pub mod translate;
pub mod upstream;
