//! TLS: the TLS 1.3-only policy for every listener, and development certificates.
//!
//! Pingora 0.9's rustls listener hard-codes TLS 1.2 and 1.3 as protocol
//! versions, but it builds its config from the process-wide rustls
//! `CryptoProvider` if one is installed first. Installing a provider whose
//! cipher suites are all TLS 1.3 leaves a TLS 1.2 client nothing to agree on,
//! so its handshake fails with `protocol_version`. Outbound clients (platform
//! APIs, gRPC nodes) build their own configs from [`client_provider`] so they
//! are not narrowed by this listener policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;

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

/// Errors creating development certificates.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// Key or certificate generation failed.
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The files [`create_dev_certs`] writes.
#[derive(Debug, Clone)]
pub struct DevCerts {
    /// The development CA certificate (trust this in clients).
    pub ca_cert: PathBuf,
    /// The server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
}

/// Creates a development CA and a server certificate for `localhost`,
/// `127.0.0.1` and `::1` in `dir` (`ca.crt`, `ca.key`, `server.crt`, `server.key`).
pub fn create_dev_certs(dir: &Path) -> Result<DevCerts, DevCertError> {
    let write = |name: &str, data: &str| -> Result<PathBuf, DevCertError> {
        let path = dir.join(name);
        std::fs::write(&path, data).map_err(|source| DevCertError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "moltgate development CA (do not trust in production)",
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".into(),
        "::1".into(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    let ca_cert = write("ca.crt", &ca.pem())?;
    write("ca.key", &ca_key_pem)?;
    // The server chain carries the CA too so clients that pin the CA verify.
    let server_cert = write("server.crt", &format!("{}{}", cert.pem(), ca.pem()))?;
    let server_key = write("server.key", &key.serialize_pem())?;
    restrict_permissions(&dir.join("ca.key"));
    restrict_permissions(&server_key);
    Ok(DevCerts {
        ca_cert,
        server_cert,
        server_key,
    })
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn dev_certs_are_valid_pem_for_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let certs = create_dev_certs(dir.path()).unwrap();
        let chain = std::fs::read(&certs.server_cert).unwrap();
        let parsed: Vec<_> = rustls_pemfile::certs(&mut chain.as_slice())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed.len(), 2);
        let key = std::fs::read(&certs.server_key).unwrap();
        assert!(rustls_pemfile::private_key(&mut key.as_slice())
            .unwrap()
            .is_some());
        // A client that trusts only the CA accepts the server certificate for localhost.
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(&certs.ca_cert).unwrap();
        for c in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            client_provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&parsed[0], &parsed[1..], &server_name, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
