//! Signals: the first SIGTERM or SIGINT asks for a graceful stop; a
//! second one exits at once (what is committed in the state file is safe;
//! an unacknowledged batch is simply sent again next time). SIGHUP asks
//! for a configuration reload.

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Installs the handlers; the returned token is cancelled by the first
/// signal. Must be called inside the tokio runtime.
pub fn install() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let first = token.clone();
    tokio::spawn(async move {
        let mut received = 0u32;
        while let Some(signal) = signals.next().await {
            received += 1;
            let name = if signal == SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            if received == 1 {
                tracing::info!(signal = name, "stopping: finishing the page in hand and draining sinks; signal again to exit at once");
                first.cancel();
            } else {
                tracing::warn!(signal = name, "second stop signal; exiting at once");
                std::process::exit(128 + signal);
            }
        }
    });
    Ok(token)
}

/// Installs the SIGHUP handler; each signal becomes one reload request
/// (signals that arrive while a reload is pending are folded into it).
/// Must be called inside the tokio runtime.
pub fn reload_requests() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut signals = Signals::new([SIGHUP])?;
    tokio::spawn(async move {
        while signals.next().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reload requested");
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                break;
            }
        }
    });
    Ok(rx)
}
