//! Observability: Prometheus metrics, JSON logs, and the audit line every
//! message leaves behind.

pub mod audit;
pub mod metrics;

pub use audit::Audit;
pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber: JSON lines (default) or text, to
/// stderr, filtered by `level` (a tracing filter such as `info`).
pub fn init_logging(format: &str, level: &str) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let _ = if format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    };
}
