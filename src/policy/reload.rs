//! Reload triggers: the watched policies directory (notify, debounced),
//! SIGHUP, and `POST /reload` on the admin listener all call
//! [`super::PolicyStore::reload`].
//!
//! The directory is watched recursively so that declarative adapters in
//! `adapters/` (created after start too) reload with the policies; events
//! from anywhere else below it (a key directory, a VCS checkout) are
//! ignored.

use std::path::Path;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::PolicyStore;

/// How long the watcher waits for a burst of writes (editors save in several
/// steps: truncate, write, rename) to settle before reloading once.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Whether an event can change what a reload would read. Reads (access
/// events) do not: reacting to them would make every reload trigger the next.
fn changes_content(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
    ) && !matches!(
        event.kind,
        EventKind::Modify(notify::event::ModifyKind::Metadata(_))
    )
}

/// Whether an event concerns a file a reload reads: anything directly in
/// the policies directory, the `adapters/` directory itself, or an adapter
/// file in it.
fn concerns_policies(dir: &Path, event: &Event) -> bool {
    event.paths.iter().any(|p| {
        let Ok(rel) = p.strip_prefix(dir) else {
            return false;
        };
        let mut parts = rel.components();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), None, None) => true,
            (Some(first), Some(_), None) => {
                first.as_os_str() == crate::adapters::DIR && crate::adapters::is_adapter_file(p)
            }
            _ => false,
        }
    })
}

/// Watches the policies directory (and its `adapters/`) and reloads once
/// per settled burst of changes. Keep the returned watcher alive; dropping
/// it stops the thread.
pub fn watch(store: Arc<PolicyStore>) -> Result<RecommendedWatcher, notify::Error> {
    let (tx, rx) = channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(store.dir(), RecursiveMode::Recursive)?;
    let dir = store.dir().to_path_buf();
    std::thread::Builder::new()
        .name("moltgate-policy-watch".into())
        .spawn(move || loop {
            // Wait for the first relevant change…
            match rx.recv() {
                Ok(Ok(e)) if changes_content(&e) && concerns_policies(&dir, &e) => {}
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "policy watcher error");
                    continue;
                }
                Err(_) => return, // watcher dropped
            }
            // …then until the burst settles.
            loop {
                match rx.recv_timeout(DEBOUNCE) {
                    Ok(_) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            tracing::info!("policy files changed");
            let _ = store.reload();
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}

/// Reloads on every SIGHUP, forever (spawn it on a runtime).
#[cfg(unix)]
pub async fn reload_on_sighup(store: Arc<PolicyStore>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; reload with POST /reload instead");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading policies");
        let _ = store.reload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind};

    fn event(path: &str) -> Event {
        Event::new(EventKind::Modify(ModifyKind::Any)).add_path(Path::new(path).to_path_buf())
    }

    #[test]
    fn only_policy_and_adapter_files_trigger_a_reload() {
        let dir = Path::new("/p");
        for yes in [
            "/p/abac.yaml",
            "/p/adapters",
            "/p/adapters/acme.yaml",
            "/p/adapters/b.yml",
        ] {
            assert!(concerns_policies(dir, &event(yes)), "{yes}");
        }
        for no in [
            "/q/abac.yaml",
            "/p/adapters/notes.txt",
            "/p/adapters/.acme.yaml.swp",
            "/p/keys/k.pem",
            "/p/adapters/x/y.yaml",
            "/p/.git/objects/ab",
        ] {
            assert!(!concerns_policies(dir, &event(no)), "{no}");
        }
        assert!(changes_content(&Event::new(EventKind::Create(
            CreateKind::File
        ))));
    }

    /// A file dropped into a new `adapters/` directory of a watched store
    /// is picked up (the watch is registered when `watch` returns). How soon
    /// is measured, not asserted: `tests/adapters.rs` prints it (~0.35 s,
    /// the 300 ms debounce and a reload).
    #[test]
    fn a_new_adapter_file_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(PolicyStore::load(dir.path(), crate::observe::Metrics::new()).unwrap());
        let _watcher = watch(store.clone()).unwrap();
        let adapters = dir.path().join(crate::adapters::DIR);
        std::fs::create_dir(&adapters).unwrap();
        std::fs::write(
            adapters.join("acme.yaml"),
            "name: acme\nverify: { scheme: none }\nfields: { id: /id, text: /text }\n",
        )
        .unwrap();
        let started = std::time::Instant::now();
        while store.current().adapters.by_name("acme").is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "not picked up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
