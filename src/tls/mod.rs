//! TLS: the TLS 1.3-only policy for every listener, the check that a
//! certificate and key can serve together ([`pair`]), and development
//! certificates ([`dev`]).
//!
//! Pingora 0.9's rustls listener hard-codes TLS 1.2 and 1.3 as protocol
//! versions, but it builds its config from the process-wide rustls
//! `CryptoProvider` if one is installed first. Installing a provider whose
//! cipher suites are all TLS 1.3 leaves a TLS 1.2 client nothing to agree on,
//! so its handshake fails with `protocol_version`. Outbound clients (platform
//! APIs, gRPC nodes) build their own configs from [`client_provider`] so they
//! are not narrowed by this listener policy.

pub mod dev;
pub mod pair;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use dev::{create_dev_certs, ensure_dev_certs, DevCertAction, DevCertError, DevCerts};
pub use pair::{check_pair, PairError};

/// Installs the process-wide TLS 1.3-only provider. Idempotent; returns
/// false if a different provider was installed first (then the listener is
/// not guaranteed TLS 1.3-only, and the caller must refuse to start).
pub fn install_tls13_only_provider() -> bool {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.version() == &rustls::version::TLS13);
    let _ = CryptoProvider::install_default(provider);
    CryptoProvider::get_default().is_some_and(|p| {
        p.cipher_suites
            .iter()
            .all(|s| s.version() == &rustls::version::TLS13)
    })
}

/// The full ring provider (TLS 1.2 and 1.3) for outbound clients.
pub fn client_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
