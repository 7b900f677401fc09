//! The protobuf contract with the AI cluster (`proto/moltgate/v1`), compiled
//! by `build.rs` with prost and tonic.

/// `moltgate.v1`: `Envelope`, `Reply` and the `Assistant` service.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("moltgate.v1");
}

pub use v1::{Envelope, Reply};
