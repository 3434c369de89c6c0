//! The systemd notify protocol (`sd_notify(3)`): readiness, status text,
//! reloads, stopping, and watchdog keep-alives, as datagrams to
//! `$NOTIFY_SOCKET`. Without that variable (not under systemd, or not
//! `Type=notify`) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A handle on the service manager's notify socket.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok(),
            std::env::var("WATCHDOG_PID").ok(),
        )
    }

    pub(crate) fn from_vars(
        socket: Option<std::ffi::OsString>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
    ) -> Self {
        let target = socket.and_then(|path| match notify_addr(&path) {
            Ok(addr) => match UnixDatagram::unbound() {
                Ok(socket) => Some((socket, addr)),
                Err(error) => {
                    tracing::warn!(error = %error, "cannot create a socket for systemd notifications");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(error = %error, "NOTIFY_SOCKET is not a usable socket address; systemd notifications are off");
                None
            }
        });
        // WATCHDOG_PID names the process the watchdog is for; when it is
        // another one (a wrapper), keep-alives from here would be ignored.
        let for_us = watchdog_pid
            .map(|pid| pid.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd enforces, if any.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.target.as_ref().and(self.watchdog)
    }

    /// Sends `state` (newline-separated `KEY=value` assignments).
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(error) = socket.send_to_addr(state.as_bytes(), addr) {
                tracing::debug!(error = %error, "systemd notification not sent");
            }
        }
    }

    /// Startup is complete.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// A configuration reload began; [`Notifier::ready`] ends it. The
    /// monotonic timestamp lets systemd (253+, `Type=notify-reload`) match
    /// this notification to the reload it asked for.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000;
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the configuration"
        ));
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining and stopping");
    }

    /// The watchdog keep-alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// A path, or `@name` for the abstract namespace.
fn notify_addr(path: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        Some((b'/', _)) => SocketAddr::from_pathname(path),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "neither an absolute path nor an abstract name",
        )),
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier =
            Notifier::from_vars(Some(path.into_os_string()), Some("30000000".into()), None);
        assert!(notifier.enabled());
        assert_eq!(notifier.watchdog_timeout(), Some(Duration::from_secs(30)));
        notifier.ready("2 sources\nok");
        notifier.watchdog();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=2 sources ok");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_reload_carries_a_monotonic_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::from_vars(Some(path.into_os_string()), None, None);
        notifier.reloading();
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{message}"));
        assert!(usec > 0);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog() {
        let notifier = Notifier::from_vars(None, Some("30000000".into()), None);
        assert!(!notifier.enabled());
        assert_eq!(notifier.watchdog_timeout(), None);
        notifier.ready("ok");
    }

    #[test]
    fn a_watchdog_meant_for_another_process_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_vars(
            Some(path.into_os_string()),
            Some("30000000".into()),
            Some("1".into()),
        );
        assert_eq!(notifier.watchdog_timeout(), None);
    }

    #[test]
    fn relative_paths_are_refused() {
        let notifier = Notifier::from_vars(Some("relative/socket".into()), None, None);
        assert!(!notifier.enabled());
    }
}
