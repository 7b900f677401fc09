//! OpenAI-compatible chat completions (`platform: openai`): where the
//! people's text is in a request and in an answer, streamed or not.
//!
//! - [`request`]: the request's message texts (string `content`, and the
//!   `text` parts of content arrays), for ingress DLP in place.
//! - [`completion`]: a whole (`stream: false`) answer's texts, masked whole.
//! - [`chunks`]: a streamed (`stream: true`) answer, masked as it streams
//!   with the outcome of masking it whole ([`chunks::ChunkMasker`]).
//! - [`sse`]: Server-Sent Events framing.

pub mod chunks;
pub mod completion;
pub mod request;
pub mod shape;
pub mod sse;
