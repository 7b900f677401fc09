//! Does this certificate go with this key? Checked by `moltgate check` and
//! before the listener starts, so a mismatched pair is a clear error at
//! start, never a listener thread that dies after "listening" was logged.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate and key cannot serve together.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// A file cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No PEM certificate in the certificate file.
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No PEM private key in the key file.
    #[error("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key cannot be used (unsupported algorithm, corrupt).
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error("{}: this private key does not belong to the certificate in {} (were they replaced separately?)", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, PairError> {
    std::fs::read(path).map_err(|source| PairError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that `cert` holds a PEM chain and `key` the private key of its
/// first certificate.
pub fn check_pair(cert: &Path, key: &Path) -> Result<(), PairError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(PairError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let no_key = || PairError::NoKey {
        path: key.to_path_buf(),
    };
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|_| no_key())?
        .ok_or_else(no_key)?;
    let provider = super::client_provider();
    match CertifiedKey::from_der(chain, der, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(PairError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(e) => Err(PairError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}
