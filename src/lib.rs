//! moltgate: an edge reverse proxy and policy gateway for chat bots and AI
//! assistants, built on Pingora.
//!
//! The modules follow the path of one message (see `ARCHITECTURE.md`):
//! [`server`] (Pingora glue: route, admit, read body) ─▶ [`path`] (every
//! other stage, assembled in `path::Gateway::run`), which drives
//! [`platform`] (verify, parse), [`policy`], [`context`], [`envelope`],
//! [`upstream`] (the AI cluster, or a passthrough bot) and [`writeback`].
#![warn(missing_docs)]

pub mod adapters;
pub mod assistant;
pub mod cli;
pub mod config;
pub mod connections;
pub mod context;
pub mod dedupe;
pub mod envelope;
pub mod mqtt;
pub mod observe;
pub mod openai;
pub mod path;
pub mod percent;
pub mod platform;
pub mod policy;
pub mod proto;
pub mod server;
pub mod shared;
pub mod tls;
pub mod tokenize;
pub mod upstream;
pub mod websocket;
pub mod writeback;
