//! Reload triggers: the watched policies directory (notify, debounced),
//! SIGHUP, and `POST /reload` on the admin listener all call
//! [`super::PolicyStore::reload`].

use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::{self, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, Debouncer};

use super::PolicyStore;

/// How long the watcher waits for a burst of writes (editors save in several
/// steps) to settle before reloading once.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the policies directory; keep the returned value alive.
pub fn watch(store: Arc<PolicyStore>) -> Result<Debouncer<notify::RecommendedWatcher>, notify::Error> {
    let dir = store.dir().to_path_buf();
    let mut debouncer = new_debouncer(DEBOUNCE, move |res: DebounceEventResult| match res {
        Ok(events) if !events.is_empty() => {
            tracing::info!(changed = events.len(), "policy files changed");
            let _ = store.reload();
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "policy watcher error"),
    })?;
    debouncer.watcher().watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
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
