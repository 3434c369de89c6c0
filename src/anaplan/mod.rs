//! The Anaplan audit source (tenant-level events, audit-apis.md Part 1):
//! `auth` (basic, certificate and token logins, refresh), `client` (one
//! page of `GET /events` over a pinned window), `event` (record →
//! envelope, gap markers), `stream` (windows, overlap, drift-safe paging),
//! `pager` (pages requested ahead of the cursor, handed out in offset
//! order), and `catalog` (what each `USR-*` code means).

pub mod auth;
pub mod catalog;
pub mod client;
pub mod event;
mod pager;
mod stream;
pub mod users;

pub use stream::{AnaplanSource, RETENTION};

/// What the Anaplan unit tests share: a configuration and the simulator on
/// loopback.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::config::{AnaplanConfig, AnaplanCredentials, StartAt};
    use crate::retry::BackoffPolicy;
    use crate::simulator::anaplan::{AnaplanSim, AnaplanSimConfig};

    /// The simulator's default auditor login and password.
    pub(crate) const LOGIN: (&str, &str) = ("auditor@example.com", "sim-password");

    /// A source `ap` whose auth, audit and users APIs are all at `url` (the
    /// simulator serves them on one origin), logging in as [`LOGIN`], with
    /// fast retries and enrichment off.
    pub(crate) fn config(url: &str) -> AnaplanConfig {
        AnaplanConfig {
            id: "ap".into(),
            auth_url: url.into(),
            audit_url: format!("{url}/audit/api/1"),
            api_url: format!("{url}/2/0"),
            credentials: AnaplanCredentials::Basic {
                user: LOGIN.0.into(),
                password: crate::secret::Secret::new(LOGIN.1),
            },
            event_type: "all".into(),
            page_size: 100,
            parallel_pages: crate::config::ANAPLAN_PARALLEL_PAGES,
            start_at: StartAt::Lookback(Duration::from_secs(3 * 3600)),
            poll_interval: Duration::from_millis(50),
            request_timeout: Duration::from_secs(10),
            overlap: Duration::from_secs(600),
            retry: BackoffPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            slow_retry_interval: Duration::from_secs(1),
            requests_per_minute: 100_000,
            enrich: crate::enrich::EnrichConfig {
                enabled: false,
                ..crate::enrich::EnrichConfig::default()
            },
        }
    }

    /// `config`'s simulator served on 127.0.0.1 until the token is
    /// cancelled; its URL.
    pub(crate) async fn serve(
        config: AnaplanSimConfig,
    ) -> (Arc<AnaplanSim>, String, CancellationToken) {
        let sim = AnaplanSim::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&sim).serve(listener, stop.clone().cancelled_owned()));
        (sim, url, stop)
    }
}
