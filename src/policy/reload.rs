//! Reload triggers: the watched policies directory (notify, debounced),
//! SIGHUP, and `POST /reload` on the admin listener all call
//! [`super::PolicyStore::reload`].

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

/// Watches the policies directory and reloads once per settled burst of
/// changes. Keep the returned watcher alive; dropping it stops the thread.
pub fn watch(store: Arc<PolicyStore>) -> Result<RecommendedWatcher, notify::Error> {
    let (tx, rx) = channel::<notify::Result<Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(store.dir(), RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("moltgate-policy-watch".into())
        .spawn(move || loop {
            // Wait for the first relevant change…
            match rx.recv() {
                Ok(Ok(e)) if changes_content(&e) => {}
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
