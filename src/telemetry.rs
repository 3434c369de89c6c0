//! Logging through `tracing`, to standard error, as text or JSON lines.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber and a panic hook that reports panics
/// through it (so a JSON log stays one object per line). Later calls are
/// ignored.
pub fn init(log: &LogConfig) {
    // The level was validated with the configuration; fall back to info
    // rather than fail here.
    let filter = EnvFilter::builder()
        .parse(&log.level)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_ok() {
        INITIALIZED.store(true, Ordering::Release);
        std::panic::set_hook(Box::new(|info| {
            tracing::error!(panic = %info, "panic");
        }));
    }
}

/// Whether [`init`] installed the subscriber: errors then go through it
/// rather than straight to stderr.
pub fn initialized() -> bool {
    INITIALIZED.load(Ordering::Acquire)
}
