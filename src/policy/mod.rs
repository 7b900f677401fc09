//! Policies: the files in `policies/`, compiled into one immutable
//! [`PolicySet`] and swapped atomically on reload.
//!
//! The request path reads the current set through [`PolicyStore::current`]
//! (an `arc-swap` load: no lock, nothing compiled). A reload parses and
//! compiles every file first and swaps only if all of them succeed, so the
//! old set keeps serving when an operator saves a broken file. A failed load
//! reports every error of every file, not only the first.
//!
//! Authorisation of a message is [`PolicySet::authorize`] ([`authorize`]);
//! [`lint`] finds rules that can never apply to the configured routes.
//!
//! Module dependencies run one way: `subject`, `glob` ← `request`, `rbac` ←
//! `abac` ← `authorize` ← `explain`, `lint`.

pub mod abac;
pub mod authorize;
pub mod dlp;
pub mod explain;
pub mod findings;
pub mod glob;
pub mod identities;
pub mod ip;
pub mod jwt;
pub mod lint;
pub mod rate;
pub mod rbac;
pub mod reload;
pub mod request;
pub mod security;
pub mod subject;
pub mod tenant_lint;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::yaml;
use crate::config::FileError;
use crate::observe::Metrics;

/// `security_policy.yaml`: JWT, IP lists, trusted proxies, rate limits.
pub const SECURITY_FILE: &str = "security_policy.yaml";
/// `abac.yaml`: attribute rules.
pub const ABAC_FILE: &str = "abac.yaml";
/// `permissions.yaml`: roles, their permissions, and who has them.
pub const PERMISSIONS_FILE: &str = "permissions.yaml";
/// `dlp.yaml`: keywords and patterns to block, mask or alert on.
pub const DLP_FILE: &str = "dlp.yaml";
/// `identities.yaml`: which platform accounts belong to one person.
pub const IDENTITIES_FILE: &str = "identities.yaml";

/// Every compiled policy, as one immutable snapshot.
pub struct PolicySet {
    /// Increases by one on every successful reload.
    pub version: u64,
    /// Bearer-token verification for the generic API.
    pub jwt: jwt::JwtVerifier,
    /// IP allow and deny lists, and which proxies' `X-Forwarded-For` to trust.
    pub ip: ip::IpPolicy,
    /// Rate limits; counters carry over reloads.
    pub rate: rate::RateLimiter,
    /// Attribute-based rules.
    pub abac: abac::AbacPolicy,
    /// Roles and permissions.
    pub permissions: rbac::Permissions,
    /// Data-loss prevention.
    pub dlp: dlp::DlpPolicy,
    /// Linked identities.
    pub identities: identities::Identities,
    /// Declarative adapters (`adapters/*.yaml`): they reload with the
    /// policies, all or nothing.
    pub adapters: Arc<crate::adapters::AdapterSet>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("version", &self.version)
            .field("abac_rules", &self.abac.len())
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// Parses and compiles every policy file in `dir`. A missing file means
    /// that policy's defaults (a missing `abac.yaml` denies everything); a
    /// present but broken file is an error. Every file is compiled even after
    /// one fails, and the error carries every problem found. `previous` hands
    /// over the rate limiter's counters.
    pub fn load(
        dir: &Path,
        version: u64,
        previous: Option<&PolicySet>,
    ) -> Result<PolicySet, FileError> {
        if !dir.is_dir() {
            return Err(FileError::whole(dir, "policies directory does not exist"));
        }
        let mut errors = Vec::new();
        let security = keep(load_security(dir, previous), &mut errors);
        let (abac, dlp) = compile_abac_and_dlp(dir);
        let abac = keep(abac, &mut errors);
        let dlp = keep(dlp, &mut errors);
        let permissions = keep(
            compile_optional(&dir.join(PERMISSIONS_FILE), rbac::Permissions::from_yaml),
            &mut errors,
        );
        let adapters = keep(crate::adapters::AdapterSet::load_dir(dir), &mut errors);
        // Accounts may name the adapters' platforms.
        let names: Vec<&str> = adapters
            .iter()
            .flat_map(|a| a.iter().map(|c| c.name))
            .collect();
        let identities = keep(
            compile_optional(&dir.join(IDENTITIES_FILE), |path, text| {
                identities::Identities::from_yaml_with(path, text, &names)
            }),
            &mut errors,
        );
        match (security, abac, dlp, permissions, identities, adapters) {
            (
                Some((jwt, ip, rate)),
                Some(abac),
                Some(dlp),
                Some(permissions),
                Some(identities),
                Some(adapters),
            ) if errors.is_empty() => Ok(PolicySet {
                version,
                jwt,
                ip,
                rate,
                abac,
                permissions: permissions.unwrap_or_default(),
                dlp: dlp.unwrap_or_else(dlp::DlpPolicy::empty),
                identities: identities.unwrap_or_default(),
                adapters: Arc::new(adapters),
            }),
            _ => Err(FileError::collect(errors)
                .unwrap_or_else(|| FileError::whole(dir, "the policies did not load"))),
        }
    }

    /// Rules and route coverage problems of this set's `abac.yaml` against
    /// the configured route paths; see [`lint::lint`].
    pub fn lint(&self, route_paths: &[&str]) -> Vec<lint::Lint> {
        // The routes this set's adapter files declare count as routes too.
        let mut paths = route_paths.to_vec();
        paths.extend(
            self.adapters
                .iter()
                .filter_map(|a| a.route.as_ref().map(|r| r.path.as_str())),
        );
        lint::lint(&self.abac, &paths)
    }
}

/// `Some(value)`, or `None` with the error kept for the report.
fn keep<T>(result: Result<T, FileError>, errors: &mut Vec<FileError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}

/// `security_policy.yaml`: the JWT verifier, IP lists and rate limiter.
fn load_security(
    dir: &Path,
    previous: Option<&PolicySet>,
) -> Result<(jwt::JwtVerifier, ip::IpPolicy, rate::RateLimiter), FileError> {
    let security_path = dir.join(SECURITY_FILE);
    let (security, security_text) = read_optional::<security::SecurityPolicyFile>(&security_path)?;
    let jwt = match &security.jwt_validation {
        Some(cfg) => jwt::JwtVerifier::new(cfg, dir, &security_path, &security_text)?,
        None => jwt::JwtVerifier::unconfigured(),
    };
    if let Some(previous) = previous {
        jwt.no_weaker_than(&previous.jwt)?;
    }
    let ip = ip::IpPolicy::new(
        &security.ip_whitelist,
        &security.ip_blacklist,
        &security.trusted_proxies,
    )
    .with_client_ip_headers(&security.client_ip_headers);
    let rate = match previous {
        Some(p) => p.rate.reconfigure(&security.rate_limiting),
        None => rate::RateLimiter::new(&security.rate_limiting),
    };
    Ok((jwt, ip, rate))
}

/// The two big compiles (rules, keyword automaton) run side by side: a
/// reload's latency is the slower of them, not their sum. A missing
/// `abac.yaml` is the empty (deny-all) policy, named for lints.
#[allow(clippy::type_complexity)]
fn compile_abac_and_dlp(
    dir: &Path,
) -> (
    Result<abac::AbacPolicy, FileError>,
    Result<Option<dlp::DlpPolicy>, FileError>,
) {
    let (abac, dlp) = std::thread::scope(|scope| {
        let dlp = scope.spawn(|| compile_optional(&dir.join(DLP_FILE), dlp::DlpPolicy::from_yaml));
        let abac = compile_optional(&dir.join(ABAC_FILE), abac::AbacPolicy::from_yaml);
        let dlp = dlp.join().unwrap_or_else(|_| {
            Err(FileError::whole(
                &dir.join(DLP_FILE),
                "compiling dlp.yaml panicked",
            ))
        });
        (abac, dlp)
    });
    let abac = abac.map(|a| {
        a.unwrap_or_else(|| {
            tracing::warn!(dir = %dir.display(), "no abac.yaml: every message is denied (default deny)");
            abac::AbacPolicy::missing(&dir.join(ABAC_FILE))
        })
    });
    (abac, dlp)
}

/// Compiles `path` with `compile` if it exists.
fn compile_optional<T>(
    path: &Path,
    compile: impl FnOnce(&Path, &str) -> Result<T, FileError>,
) -> Result<Option<T>, FileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => compile(path, &text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::whole(path, format!("cannot read: {e}"))),
    }
}

/// Reads and parses `path` if it exists; defaults (and empty text) if not.
fn read_optional<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
) -> Result<(T, String), FileError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok((T::default(), text)),
        Ok(text) => Ok((yaml::parse_str(path, &text)?, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((T::default(), String::new())),
        Err(e) => Err(FileError::whole(path, format!("cannot read: {e}"))),
    }
}

/// The live policy set, swappable at run time.
pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwap<PolicySet>,
    versions: AtomicU64,
    reloading: Mutex<()>,
    metrics: Metrics,
    /// The gateway's route paths, for the lints logged at start and on reload.
    route_paths: std::sync::OnceLock<Vec<String>>,
}

impl PolicyStore {
    /// Loads the initial set; an error here stops the gateway from starting.
    pub fn load(dir: &Path, metrics: Metrics) -> Result<Self, FileError> {
        let set = PolicySet::load(dir, 1, None)?;
        metrics.policy_reloads.with_label_values(&["initial"]).inc();
        Ok(Self {
            dir: dir.to_path_buf(),
            current: ArcSwap::from_pointee(set),
            versions: AtomicU64::new(1),
            reloading: Mutex::new(()),
            metrics,
            route_paths: std::sync::OnceLock::new(),
        })
    }

    /// The set in force now. Lock-free; hold it for one request.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Tells the store which routes the gateway serves, and logs what the
    /// current policies say about them (rules that match no route, routes
    /// that no rule allows); every later reload logs the same.
    pub fn lint_against(&self, route_paths: Vec<String>) {
        let _ = self.route_paths.set(route_paths);
        self.log_lints();
    }

    fn log_lints(&self) {
        if let Some(paths) = self.route_paths.get() {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            lint::log(&self.current().lint(&paths));
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads every file; swaps only if all compile. Returns the new version.
    pub fn reload(&self) -> Result<u64, FileError> {
        // Serialise reloads (watcher, SIGHUP, /reload) among themselves; the
        // request path never takes this lock.
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let version = self.versions.load(Ordering::Acquire) + 1;
        let previous = self.current();
        match PolicySet::load(&self.dir, version, Some(&previous)) {
            Ok(set) => {
                self.current.store(Arc::new(set));
                self.versions.store(version, Ordering::Release);
                self.metrics
                    .policy_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(version, dir = %self.dir.display(), "policies reloaded");
                self.log_lints();
                Ok(version)
            }
            Err(e) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "policy reload refused; the previous policies keep serving");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    /// The product's seed examples (DESIGN.md), verbatim, load as a policies directory.
    #[test]
    fn seed_examples_load_unchanged() {
        let set = PolicySet::load(&fixture("tests/fixtures/seed"), 1, None).unwrap();
        assert_eq!(set.abac.len(), 1);
        assert!(set.dlp.rule_names().any(|r| r == "credit_card"));
        assert!(set.ip.check("10.1.2.3".parse().unwrap()).is_allowed());
        assert!(!set.ip.check("127.0.0.1".parse().unwrap()).is_allowed());
    }

    /// The shipped policies load, and serve the local demo.
    #[test]
    fn shipped_policies_load() {
        let set = PolicySet::load(&fixture("policies"), 1, None).unwrap();
        assert!(set.ip.check("127.0.0.1".parse().unwrap()).is_allowed());
        assert!(set.jwt.hs_secret().is_some());
        assert!(set.abac.len() > 1);
    }

    /// A broken file is refused and the old set keeps serving.
    #[test]
    fn broken_reload_keeps_old_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ABAC_FILE), "policies:\n  - id: a\n    effect: Allow\n    resources: ['/x']\n    actions: [forward]\n").unwrap();
        let metrics = Metrics::new();
        let store = PolicyStore::load(dir.path(), metrics.clone()).unwrap();
        std::fs::write(dir.path().join(ABAC_FILE), "policies:\n  - id: a\n    effect: Allow\n    resources: ['/x']\n    actions: [forward]\n    conditions: { ipRnage: 10.0.0.0/8 }\n").unwrap();
        let err = store.reload().unwrap_err();
        assert!(
            err.to_string()
                .contains("abac.yaml:6:19: unknown key 'ipRnage' (did you mean 'ipRange'?)"),
            "{err}"
        );
        assert_eq!(store.current().version, 1);
        assert!(metrics
            .render()
            .contains("moltgate_policy_reload_total{result=\"failure\"} 1"));
        std::fs::write(dir.path().join(ABAC_FILE), "policies: []\n").unwrap();
        assert_eq!(store.reload().unwrap(), 2);
        assert_eq!(store.current().abac.len(), 0);
    }
}
