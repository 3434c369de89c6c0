//! The baseline of `scripts/bench`: the fastest a client can page through
//! an Asana audit log stream, nothing else.
//!
//! It makes the daemon's requests (same `start_at`, `limit` and `offset`
//! parameters, one request at a time, following `next_page.offset`) with
//! reqwest on a current-thread runtime, and parses each page just enough to
//! count its records and find the next offset. No envelopes, no state file,
//! no sink. It stops at `--events` records, at an empty page (caught up), or
//! at `--timeout`, and prints one JSON object:
//! `{"events": N, "pages": P, "seconds": S, "events_per_second": R}`.
//!
//! ```sh
//! auditrelay simulate --listen 127.0.0.1:8787 --events 100000 --rate 0 --rate-limit 100000000 &
//! cargo run --release --example fetch_loop -- --base-url http://127.0.0.1:8787/api/1.0 --events 100000
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Parser)]
struct Args {
    /// The API root, as in a source's `base_url`.
    #[arg(long)]
    base_url: String,
    #[arg(long, default_value = "1200000000000000")]
    workspace: String,
    #[arg(long, default_value = "sim-token")]
    token: String,
    /// Stop after this many records.
    #[arg(long)]
    events: u64,
    /// Records per request (Asana allows 1..=100).
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// The stream's `start_at` (RFC 3339); default: 7 days ago, like the
    /// daemon's default lookback.
    #[arg(long)]
    start_at: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    next_page: Option<NextPage>,
}

#[derive(Deserialize)]
struct NextPage {
    offset: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start_at = args.start_at.clone().unwrap_or_else(|| {
        (chrono::Utc::now() - chrono::Duration::days(7))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    });
    let url = format!(
        "{}/workspaces/{}/audit_log_events",
        args.base_url.trim_end_matches('/'),
        args.workspace
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let auth = format!("Bearer {}", args.token);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let started = Instant::now();
    let (mut events, mut pages, mut failures) = (0u64, 0u64, 0u32);
    let mut offset: Option<String> = None;
    while events < args.events {
        if Instant::now() > deadline {
            bail!("timed out after {}s with {events} events", args.timeout);
        }
        let mut query = vec![
            ("start_at", start_at.clone()),
            ("limit", args.page_size.to_string()),
        ];
        if let Some(offset) = &offset {
            query.push(("offset", offset.clone()));
        }
        let response = http
            .get(&url)
            .query(&query)
            .header("authorization", &auth)
            .header("accept", "application/json")
            .send()
            .await
            .context("request")?;
        let status = response.status();
        let body = response.bytes().await.context("body")?;
        if !status.is_success() {
            failures += 1;
            if failures > 20 {
                bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let page: Page<'_> = serde_json::from_slice(&body).context("page JSON")?;
        pages += 1;
        events += page.data.len() as u64;
        if page.data.is_empty() {
            break;
        }
        match page.next_page {
            Some(next) => offset = Some(next.offset),
            None => break,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "pages": pages,
            "seconds": seconds,
            "events_per_second": events as f64 / seconds,
        })
    );
    Ok(())
}
