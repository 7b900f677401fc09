//! Declarative adapters: a platform described by one YAML file in
//! `<policies>/adapters/`, with no code execution, loaded as part of the
//! policy set so that it reloads atomically with the policies (one broken
//! file fails the whole reload and the old set keeps serving).
//!
//! A file names the platform, its optional HTTP route, how requests are
//! verified (a fixed menu: HMAC, token, Ed25519, JWT, none), which requests
//! are answered or ignored, where each message field is in the body, and
//! how a reply goes back (an inline body, an API call, an ack). See
//! `adapters/examples/` and `docs/adapters.md`.
//!
//! Modules: `file` (the schema serde reads), `compile` (checks and builds),
//! `verify` (the scheme menu), `template` (bodies, URLs and headers,
//! escaped by construction), `adapter` ([`DeclarativeAdapter`] as data).
//! The runtime (`receive`, replies: the `PlatformAdapter` implementation)
//! is `crate::platform::declarative`: this module is held by the policy
//! set, and `platform` imports `policy`, so this module must not import
//! `platform`.

pub(crate) mod adapter;
mod compile;
mod file;
pub mod template;
pub(crate) mod verify;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ipnet::IpNet;

pub use adapter::{DeclarativeAdapter, MAX_ATTACHMENTS};
pub use file::{BodyFormat, DocFormat, Encoding, HmacAlgorithm, TimeUnit};
pub use template::TemplateError;

use crate::config::yaml::FileError;
use crate::config::RouteMode;

/// The subdirectory of the policies directory that holds adapter files.
pub const DIR: &str = "adapters";

/// Whether an adapter may not take `name`: a built-in platform's, or
/// `mqtt` (the listener kind).
pub fn is_reserved(name: &str) -> bool {
    name == "mqtt" || crate::config::route::PLATFORM_NAMES.contains(&name)
}

/// At most this many distinct labels (names, skip reasons, answer events,
/// success pointers) are interned over the process's life.
const MAX_INTERNED: usize = 4096;

/// Interns `s` as a `&'static str` (the adapter contract's labels are
/// static). Each DISTINCT string is leaked once, for the life of the
/// process; reloading the same files leaks nothing more. `None` once
/// [`MAX_INTERNED`] distinct strings exist, so hostile reloads cannot grow
/// memory without bound.
pub fn intern(s: &str) -> Option<&'static str> {
    static TABLE: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut table = TABLE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&hit) = table.get(s) {
        return Some(hit);
    }
    if table.len() >= MAX_INTERNED {
        return None;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    table.insert(leaked);
    Some(leaked)
}

/// Where the gateway serves an adapter over HTTP (`route:`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// The exact request path, e.g. `/hooks/acme`.
    pub path: String,
    /// An upstream name in `moltgate.yaml` (checked by the gateway).
    pub upstream: String,
    /// Translate or passthrough.
    pub mode: RouteMode,
    /// The body limit in bytes, when the file sets one.
    pub body_limit: Option<usize>,
    /// The webhook deadline, when the file sets one.
    pub deadline: Option<Duration>,
    /// Networks allowed to call the route; empty = any (the policies' IP
    /// lists still apply). Never empty with `verify.scheme: none`.
    pub ip_allow: Vec<IpNet>,
    /// Replaces `reply.api.base` (tests point it at a local server).
    pub api_base: Option<String>,
}

/// One loaded adapter file.
#[derive(Debug)]
pub struct CompiledAdapter {
    /// The platform label (`name:`).
    pub name: &'static str,
    /// The file it came from.
    pub file: PathBuf,
    /// Its HTTP route; `None`: only usable from an MQTT listener.
    pub route: Option<RouteSpec>,
    /// The adapter the message path drives.
    pub adapter: Arc<DeclarativeAdapter>,
}

impl CompiledAdapter {
    /// Compiles one adapter file's text (`path` names it in errors).
    pub fn from_yaml(path: &Path, text: &str) -> Result<CompiledAdapter, FileError> {
        compile::compile(path, text)
    }
}

/// Every adapter of the policies directory, by name and by route path.
#[derive(Debug, Default)]
pub struct AdapterSet {
    by_name: BTreeMap<&'static str, Arc<CompiledAdapter>>,
    by_path: BTreeMap<String, Arc<CompiledAdapter>>,
}

/// Whether `p` is an adapter file: `*.yaml` or `*.yml`, not hidden (editor
/// swap and backup files are not).
pub fn is_adapter_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

impl AdapterSet {
    /// No adapters.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads `<policies>/adapters/*.yaml`; an absent directory is the empty
    /// set. Every file is compiled and every error reported.
    pub fn load_dir(policies: &Path) -> Result<AdapterSet, FileError> {
        let dir = policies.join(DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::empty()),
            Err(e) => return Err(FileError::whole(&dir, format!("cannot read: {e}"))),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_adapter_file(p) && p.is_file())
            .collect();
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        let mut errors = Vec::new();
        for p in paths {
            match read(&p) {
                Ok(text) => files.push((p, text)),
                Err(e) => errors.push(e),
            }
        }
        let set = Self::from_files(&files);
        match (set, FileError::collect(errors)) {
            (Ok(set), None) => Ok(set),
            (Ok(_), Some(e)) => Err(e),
            (Err(e), more) => Err(FileError::collect(std::iter::once(e).chain(more))
                .unwrap_or_else(|| FileError::whole(&dir, "the adapters did not load"))),
        }
    }

    /// Compiles `(path, text)` pairs into one set: a name or route path
    /// claimed twice is an error naming both files.
    pub fn from_files(files: &[(PathBuf, String)]) -> Result<AdapterSet, FileError> {
        let mut set = Self::empty();
        let mut errors = Vec::new();
        for (path, text) in files {
            let compiled = match CompiledAdapter::from_yaml(path, text) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if let Some(other) = set.by_name.get(compiled.name) {
                errors.push(clash(path, text, "name", compiled.name, &other.file));
                continue;
            }
            if let Some(route) = &compiled.route {
                if let Some(other) = set.by_path.get(&route.path) {
                    errors.push(clash(path, text, "path", &route.path, &other.file));
                    continue;
                }
                set.by_path.insert(route.path.clone(), compiled.clone());
            }
            set.by_name.insert(compiled.name, compiled);
        }
        FileError::check(errors)?;
        Ok(set)
    }

    /// The adapter serving the exact request path `path`.
    pub fn by_path(&self, path: &str) -> Option<&Arc<CompiledAdapter>> {
        self.by_path.get(path)
    }

    /// The adapter named `name` (an MQTT listener's `adapter:`).
    pub fn by_name(&self, name: &str) -> Option<&Arc<CompiledAdapter>> {
        self.by_name.get(name)
    }

    /// Every adapter, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<CompiledAdapter>> {
        self.by_name.values()
    }

    /// How many adapters there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn read(path: &Path) -> Result<String, FileError> {
    let cannot = |e: std::io::Error| FileError::whole(path, format!("cannot read: {e}"));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > crate::config::yaml::MAX_BYTES as u64 {
        return Err(FileError::whole(
            path,
            format!(
                "is {len} bytes; an adapter file may have at most {}",
                crate::config::yaml::MAX_BYTES
            ),
        ));
    }
    std::fs::read_to_string(path).map_err(cannot)
}

/// Two files claim the same `what` (name or route path).
fn clash(path: &Path, text: &str, key: &str, value: &str, other: &Path) -> FileError {
    let pos = crate::config::yaml::locate_key(text, key);
    let what = if key == "name" {
        "adapter name"
    } else {
        "route path"
    };
    FileError::at(
        path,
        pos,
        format!(
            "{what} '{value}' is already taken by {}; each adapter needs its own",
            other.display()
        ),
    )
}

#[cfg(test)]
mod tests;
