//! Development certificates: a throw-away CA and a `localhost` server
//! certificate, for `moltgate certs dev` and `listen.public.tls.dev_autogenerate`.
//!
//! They are short-lived, as Mozilla's "modern" profile expects of any
//! certificate ([`DEV_CERT_LIFETIME`]), and `dev_autogenerate` renews them
//! when they are about to expire. It never pairs a new certificate with an
//! existing key (or the reverse): a config whose certificate path has a
//! typo must fail, not serve a mismatched pair.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::client_provider;

/// How long development certificates are valid (Mozilla "modern": at most 90 days).
pub const DEV_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Renewed this long before they expire.
pub const DEV_CERT_RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

/// The development CA's common name; also how a dev certificate is recognised.
const DEV_CA_NAME: &str = "moltgate development CA (do not trust in production)";

/// Errors creating development certificates.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// One of the pair exists and the other does not: a new certificate
    /// would not match the old key (or the reverse).
    #[error("dev_autogenerate: {} exists but {} does not; refusing to pair a new certificate or key with an old one (fix the path, or remove {} to create both)", have.display(), missing.display(), have.display())]
    HalfPair {
        /// The file that exists.
        have: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
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
    write_dev_certs(dir, &dir.join("server.crt"), &dir.join("server.key"))
}

/// Writes a new CA (`ca.crt`, `ca.key` in `ca_dir`) and a server
/// certificate and key at exactly `cert_path` and `key_path`.
fn write_dev_certs(
    ca_dir: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<DevCerts, DevCertError> {
    let write = |path: &Path, data: &str| -> Result<PathBuf, DevCertError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| DevCertError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        std::fs::write(path, data).map_err(|source| DevCertError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(path.to_path_buf())
    };
    let (not_before, not_after) = validity();

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, DEV_CA_NAME);
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
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
    params.not_before = not_before;
    params.not_after = not_after;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;

    let ca_cert = write(&ca_dir.join("ca.crt"), &ca.pem())?;
    let ca_key_path = write(&ca_dir.join("ca.key"), &ca_key_pem)?;
    // The server chain carries the CA too so clients that pin the CA verify.
    let server_cert = write(cert_path, &format!("{}{}", cert.pem(), ca.pem()))?;
    let server_key = write(key_path, &key.serialize_pem())?;
    restrict_permissions(&ca_key_path);
    restrict_permissions(&server_key);
    Ok(DevCerts {
        ca_cert,
        server_cert,
        server_key,
    })
}

/// Valid from an hour ago (clock skew) for [`DEV_CERT_LIFETIME`].
fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let lifetime = time::Duration::try_from(DEV_CERT_LIFETIME).unwrap_or(time::Duration::DAY);
    (now - time::Duration::HOUR, now + lifetime)
}

/// What [`ensure_dev_certs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevCertAction {
    /// The files were there and valid for a while yet.
    Kept,
    /// Neither file existed: created.
    Created,
    /// A development certificate was expired or about to expire: replaced.
    Renewed,
}

/// For `dev_autogenerate`: makes sure `cert` and `key` exist and, if they
/// are development certificates, are valid for at least
/// [`DEV_CERT_RENEW_BEFORE`]. Certificates that are not ours are never
/// touched; one file without the other is an error.
pub fn ensure_dev_certs(cert: &Path, key: &Path) -> Result<DevCertAction, DevCertError> {
    let ca_dir = cert.parent().map(Path::to_path_buf).unwrap_or_default();
    match (cert.exists(), key.exists()) {
        (false, false) => {
            write_dev_certs(&ca_dir, cert, key)?;
            Ok(DevCertAction::Created)
        }
        (true, true) => {
            if !is_dev_cert(cert) || valid_for(cert, DEV_CERT_RENEW_BEFORE) {
                return Ok(DevCertAction::Kept);
            }
            write_dev_certs(&ca_dir, cert, key)?;
            Ok(DevCertAction::Renewed)
        }
        (present, _) => {
            let (have, missing) = if present { (cert, key) } else { (key, cert) };
            Err(DevCertError::HalfPair {
                have: have.to_path_buf(),
                missing: missing.to_path_buf(),
            })
        }
    }
}

/// The PEM certificates in `path` (empty if unreadable).
fn chain(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let Ok(pem) = std::fs::read(path) else {
        return Vec::new();
    };
    rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect()
}

/// Whether `path` is a development certificate: its chain ends with our CA.
fn is_dev_cert(path: &Path) -> bool {
    let chain = chain(path);
    let name = DEV_CA_NAME.as_bytes();
    chain.len() == 2 && chain[1].as_ref().windows(name.len()).any(|w| w == name)
}

/// Whether the development certificate at `path` verifies against the CA
/// in its own chain, for `localhost`, `margin` from now.
fn valid_for(path: &Path, margin: Duration) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    let chain = chain(path);
    let [leaf, ca] = chain.as_slice() else {
        return false;
    };
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(ca.clone()).is_err() {
        return false;
    }
    let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        client_provider(),
    )
    .build() else {
        return false;
    };
    let at = std::time::SystemTime::now() + margin;
    let Ok(since_epoch) = at.duration_since(std::time::UNIX_EPOCH) else {
        return false;
    };
    let at = rustls::pki_types::UnixTime::since_unix_epoch(since_epoch);
    let Ok(name) = rustls::pki_types::ServerName::try_from("localhost") else {
        return false;
    };
    verifier
        .verify_server_cert(leaf, &[], &name, &[], at)
        .is_ok()
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
    use std::path::PathBuf;

    fn pair_of(dir: &Path) -> (PathBuf, PathBuf) {
        (dir.join("server.crt"), dir.join("server.key"))
    }

    #[test]
    fn dev_certs_live_90_days_and_are_renewed_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair_of(dir.path());
        assert_eq!(
            ensure_dev_certs(&cert, &key).unwrap(),
            DevCertAction::Created
        );
        assert!(is_dev_cert(&cert));
        assert!(valid_for(&cert, Duration::from_secs(89 * 24 * 3600)));
        assert!(!valid_for(
            &cert,
            DEV_CERT_LIFETIME + Duration::from_secs(60)
        ));
        assert_eq!(ensure_dev_certs(&cert, &key).unwrap(), DevCertAction::Kept);
        super::super::check_pair(&cert, &key).unwrap();
    }

    #[test]
    fn expired_dev_certs_are_renewed_and_foreign_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair_of(dir.path());
        // An expired development pair: the CA and leaf of a year ago.
        let old = tempfile::tempdir().unwrap();
        write_dev_certs_valid(old.path(), -400, -310);
        std::fs::copy(old.path().join("server.crt"), &cert).unwrap();
        std::fs::copy(old.path().join("server.key"), &key).unwrap();
        assert!(is_dev_cert(&cert) && !valid_for(&cert, Duration::ZERO));
        assert_eq!(
            ensure_dev_certs(&cert, &key).unwrap(),
            DevCertAction::Renewed
        );
        assert!(valid_for(&cert, Duration::from_secs(80 * 24 * 3600)));
        super::super::check_pair(&cert, &key).unwrap();
        // Not ours (no dev CA at the end of the chain): never replaced.
        let mut leaf_only = std::fs::read_to_string(old.path().join("server.crt")).unwrap();
        leaf_only.truncate(leaf_only.find("-----END CERTIFICATE-----").unwrap() + 26);
        std::fs::write(&cert, &leaf_only).unwrap();
        assert_eq!(ensure_dev_certs(&cert, &key).unwrap(), DevCertAction::Kept);
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), leaf_only);
    }

    /// A development pair valid from `from` to `to` days from now.
    fn write_dev_certs_valid(dir: &Path, from: i64, to: i64) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, DEV_CA_NAME);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let now = time::OffsetDateTime::now_utc();
        ca_params.not_before = now + time::Duration::days(from);
        ca_params.not_after = now + time::Duration::days(to);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &ca).unwrap();
        std::fs::write(
            dir.join("server.crt"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    }

    #[test]
    fn half_a_pair_is_never_completed() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair_of(dir.path());
        create_dev_certs(dir.path()).unwrap();
        // A typo in the certificate path: the old key must not get a new certificate.
        let typo = dir.path().join("sever.crt");
        let e = ensure_dev_certs(&typo, &key).unwrap_err().to_string();
        assert!(
            e.contains("refusing to pair a new certificate or key with an old one"),
            "{e}"
        );
        assert!(!typo.exists());
        let _ = cert;
    }

    #[test]
    fn a_key_from_another_pair_is_refused_by_name() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        create_dev_certs(a.path()).unwrap();
        create_dev_certs(b.path()).unwrap();
        let e =
            super::super::check_pair(&a.path().join("server.crt"), &b.path().join("server.key"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let e =
            super::super::check_pair(&a.path().join("server.key"), &a.path().join("server.key"))
                .unwrap_err()
                .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

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
