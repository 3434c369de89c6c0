//! Micro-benchmarks of the per-event and per-batch steps of the pipeline,
//! to see where an end-to-end figure of `scripts/bench` goes:
//!
//! - `to_outbox`: an Asana record → its envelope (parse, map, serialize),
//!   per page of 100, with and without enrichment answers;
//! - `compact_json`: the one-line guarantee on a compact and a pretty record;
//! - `state/commit_page_100`: a 100-event page into a SQLite state file
//!   (dedup insert, outbox row, cursor, the WAL write and, now and then, a
//!   checkpoint), as a source commits it; `state/commit_pages_800`: 8
//!   pages in one commit, the most the Asana loop groups;
//! - `state/read_ack_trim_1000`: `read_outbox` + `ack` + `trim_outbox` of
//!   a 1,000-event batch, the state file's share of one delivery;
//! - `file_sink/deliver_1000_fsync`: one 1,000-event delivery of the file
//!   sink (write + fsync).
//!
//! Batches are of 1,000 events, the file and Kafka sinks' default.
//!
//! The records are real simulator output: one page fetched from an
//! in-process simulator on loopback at start.
//!
//! Times are CPU time of the whole process (user + system, every thread:
//! the file sink writes on the blocking pool), not wall-clock time: the
//! machine is shared, and a wall-clock figure moves with whatever else
//! runs on it. Time spent waiting (an fsync's I/O) is not counted.
//!
//! `cargo bench --bench pipeline` (add `-- --quick` for a fast pass).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use auditrelay::asana::event::{named_users, to_outbox, Origin};
use auditrelay::config::FileSinkConfig;
use auditrelay::enrich::{Resolution, UserInfo, Users};
use auditrelay::envelope::compact_json;
use auditrelay::simulator::{SimConfig, Simulator};
use auditrelay::sink::{FileSink, Sink};
use auditrelay::state::{NewEvent, OutboxRecord, SourceCursor, StateDb};
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;

/// CPU time used by this process so far (every thread, user + system).
fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Criterion's measurement: the process's CPU time instead of wall time.
struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds of CPU, shown like criterion shows wall time.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1e3 {
            (1.0, "ns cpu")
        } else if typical_ns < 1e6 {
            (1e-3, "µs cpu")
        } else if typical_ns < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        for value in values {
            *value *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        _typical_ns: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per, unit) = match *throughput {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => {
                (n as f64 / (1 << 20) as f64, "MiB/cpu s")
            }
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => {
                (n as f64 / 1e3, "Kelem/cpu s")
            }
            Throughput::Bits(n) => (n as f64 / 1e6, "Mb/cpu s"),
        };
        for value in values {
            *value = per * 1e9 / *value;
        }
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

const PAGE: usize = 100;
/// The file and Kafka sinks' default `batch_size`.
const BATCH: usize = 1000;
const OBSERVED_AT: &str = "2026-01-05T10:00:00.000Z";
const ORIGIN: Origin<'static> = Origin {
    source_id: "bench",
    workspace_gid: "1200000000000000",
};

/// One page (100 records) as the simulator serves it.
fn simulator_page() -> Vec<Box<RawValue>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sim = Simulator::new(SimConfig {
            backlog: PAGE as u64,
            rate: 0.0,
            max_live: Some(0),
            ..SimConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(sim.serve(listener, stop.clone().cancelled_owned()));
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!(
                "http://{addr}/api/1.0/workspaces/1200000000000000/audit_log_events?limit=100"
            ))
            .bearer_auth("sim-token")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stop.cancel();
        server.await.unwrap().unwrap();
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|record| serde_json::value::to_raw_value(record).unwrap())
            .collect()
    })
}

/// Every user the page names, as found by the enricher.
fn users_of(page: &[Box<RawValue>]) -> Users {
    let mut users = HashMap::new();
    for record in page {
        for id in named_users(record) {
            let info = UserInfo {
                name: Some(format!("User {id}")),
                email: Some(format!("user{id}@example.com")),
            };
            users.insert(id, Resolution::Found(info));
        }
    }
    users
}

fn envelopes(page: &[Box<RawValue>]) -> Vec<NewEvent> {
    page.iter()
        .map(|raw| to_outbox(raw, ORIGIN, OBSERVED_AT, None).unwrap())
        .collect()
}

/// `events` with ids and times no earlier call returned, ascending like an
/// Asana stream's gids and created_at, so dedup lets them in.
fn fresh(events: &[NewEvent], serial: &mut u64) -> Vec<NewEvent> {
    events
        .iter()
        .map(|event| {
            *serial += 1;
            NewEvent {
                event_id: (1_209_000_000_000_000 + *serial).to_string(),
                event_time: 1_767_000_000_000 + *serial as i64,
                payload: event.payload.clone(),
            }
        })
        .collect()
}

fn cursor(serial: u64) -> SourceCursor {
    SourceCursor {
        position: Some(format!("eyJvZmZzZXQiOiJiZW5jaCJ9.{serial}")),
        filters_hash: "0123456789abcdef".into(),
        stream_start: Some(1_767_000_000_000),
        last_event_time: Some(1_767_000_000_000),
        last_event_id: Some(serial.to_string()),
    }
}

fn envelope_benches(c: &mut Criterion<CpuTime>, page: &[Box<RawValue>]) {
    let users = users_of(page);
    let mut group = c.benchmark_group("to_outbox");
    group.throughput(Throughput::Elements(PAGE as u64));
    group.bench_function("page_of_100", |b| {
        b.iter(|| {
            for raw in page {
                black_box(to_outbox(black_box(raw), ORIGIN, OBSERVED_AT, None).unwrap());
            }
        })
    });
    group.bench_function("page_of_100_enriched", |b| {
        b.iter(|| {
            for raw in page {
                black_box(to_outbox(black_box(raw), ORIGIN, OBSERVED_AT, Some(&users)).unwrap());
            }
        })
    });
    group.finish();

    let compact = page[0].get();
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(compact).unwrap())
            .unwrap();
    let mut group = c.benchmark_group("compact_json");
    group.throughput(Throughput::Bytes(compact.len() as u64));
    group.bench_function("compact_record", |b| {
        b.iter(|| black_box(compact_json(black_box(compact))))
    });
    group.bench_function("pretty_record", |b| {
        b.iter(|| black_box(compact_json(black_box(&pretty))))
    });
    group.finish();
}

fn state_benches(c: &mut Criterion<CpuTime>, page: &[Box<RawValue>]) {
    let events = envelopes(page);
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("state.db")).unwrap();
    db.register_sinks(&[("file".to_string(), "file")]).unwrap();
    let mut serial = 0u64;

    let mut group = c.benchmark_group("state");
    // One page per commit, and the most the Asana loop groups into one
    // (GROUP_PAGES: while pages fetched ahead are ready).
    for (pages, name) in [(1, "commit_page_100"), (8, "commit_pages_800")] {
        group.throughput(Throughput::Elements((pages * PAGE) as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let grouped: Vec<NewEvent> = (0..pages)
                        .flat_map(|_| fresh(&events, &mut serial))
                        .collect();
                    let cursor = cursor(serial);
                    let start = cpu_now();
                    db.commit_page("bench", "asana", &grouped, &[], &cursor)
                        .unwrap();
                    total += cpu_now() - start;
                }
                total
            })
        });
    }

    // Start the sink at the end of what the commits above left behind.
    let mut acked = db
        .read_outbox(0, usize::MAX)
        .unwrap()
        .last()
        .map_or(0, |r| r.seq);
    db.ack("file", acked).unwrap();
    db.trim_outbox().unwrap();
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("read_ack_trim_1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..BATCH / PAGE {
                    let page = fresh(&events, &mut serial);
                    db.commit_page("bench", "asana", &page, &[], &cursor(serial))
                        .unwrap();
                }
                let start = cpu_now();
                let batch = db.read_outbox(acked, BATCH).unwrap();
                let last = batch.last().unwrap().seq;
                db.ack("file", last).unwrap();
                db.trim_outbox().unwrap();
                total += cpu_now() - start;
                acked = last;
            }
            total
        })
    });
    group.finish();
}

fn file_sink_bench(c: &mut Criterion<CpuTime>, page: &[Box<RawValue>]) {
    let events = envelopes(page);
    let batch: Vec<OutboxRecord> = (0..BATCH)
        .map(|i| {
            let event = &events[i % PAGE];
            OutboxRecord {
                seq: i as i64 + 1,
                source_id: "bench".into(),
                event_id: event.event_id.clone(),
                payload: event.payload.clone(),
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut sink = FileSink::new(FileSinkConfig {
        path: dir.path().join("events.jsonl"),
        max_bytes: 64 << 20,
        max_files: 1,
    });
    let mut group = c.benchmark_group("file_sink");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("deliver_1000_fsync", |b| {
        b.iter(|| runtime.block_on(sink.deliver(black_box(&batch))).unwrap())
    });
    group.finish();
}

fn benches(c: &mut Criterion<CpuTime>) {
    let page = simulator_page();
    assert_eq!(page.len(), PAGE, "the simulator served a short page");
    envelope_benches(c, &page);
    state_benches(c, &page);
    file_sink_bench(c, &page);
}

criterion_group! {
    name = pipeline;
    config = Criterion::default()
        .with_measurement(CpuTime)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(pipeline);
