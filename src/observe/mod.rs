//! Observability: Prometheus metrics, JSON logs, and the audit line every
//! message leaves behind.

pub mod audit;
pub mod metrics;

pub use audit::Audit;
pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: JSON lines (default) or text, to
/// stderr, filtered by `level` (a tracing filter such as `info`). With JSON,
/// audit lines are written by [`Audit::emit`] itself (see there why).
pub fn init_logging(format: &str, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    if format == "text" {
        let _ = builder.try_init();
        return;
    }
    let installed = builder
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .try_init();
    if installed.is_ok() {
        audit::write_json_lines();
    }
}
