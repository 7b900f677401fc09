//! WebSocket (`platform: websocket`): moltgate's own streaming API
//! (`mode: translate`) and an inspecting proxy in front of WebSocket bot
//! gateways such as OpenClaw (`mode: passthrough`).
//!
//! Work in progress (issue 14): [`frames`] is the own API's frame model.

pub mod frames;
