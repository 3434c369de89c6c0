//! The Kafka sink against a real Kafka-compatible broker (Tansu) on
//! loopback, read back by an independent consumer (confluent-kafka, with
//! its own librdkafka): every event exactly once, with key and headers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A Tansu broker with in-memory storage on a free loopback port.
struct Broker {
    child: Child,
    address: String,
}

fn tansu() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    [home.join(".cargo/bin/tansu"), PathBuf::from("/usr/local/bin/tansu")]
        .into_iter()
        .find(|p| p.exists())
        .expect("tansu is not installed; scripts/test installs it (cargo install tansu --features dynostore)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    fn start(work: &Workdir) -> Self {
        Self::start_on(work, free_port())
    }

    fn start_on(work: &Workdir, port: u16) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(work.path("tansu.out")).unwrap())
            .stderr(std::fs::File::create(work.path("tansu.err")).unwrap())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(30), "tansu to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child,
            address: format!("127.0.0.1:{port}"),
        }
    }

    /// Tansu, like many production clusters, does not create topics on use.
    fn create_topic(&self, topic: &str) {
        let status = Command::new(tansu())
            .args([
                "topic",
                "create",
                topic,
                "--broker",
                &format!("tcp://{}", self.address),
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "creating topic {topic}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `count` messages of `topic` with the independent consumer.
fn consume(broker: &Broker, topic: &str, count: usize) -> Vec<Value> {
    let python = std::env::var("AUDITRELAY_TEST_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-venv/bin/python").to_string()
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_consume.py");
    let output = Command::new(&python)
        .args([script, &broker.address, topic, &count.to_string(), "60"])
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (scripts/test makes this venv with confluent-kafka)")
        });
    let messages: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        output.status.success(),
        "the consumer got {} of {count} messages: {}",
        messages.len(),
        String::from_utf8_lossy(&output.stderr)
    );
    messages
}

fn kafka_config(work: &Workdir, sim: &Sim, brokers: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(work.config(&sim.base_url, ""))
        .unwrap()
        .replace(
            "[sinks.file]\nkind = \"file\"",
            &format!("[sinks.kafka]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\nretry_initial = \"100ms\"\nretry_max = \"1s\"\n{extra}\n[sinks.file]\nkind = \"file\""),
        );
    work.write_config(&text)
}

#[test]
fn every_event_reaches_kafka_once_with_key_and_headers() {
    let sim = Sim::backlog(2_000);
    let work = Workdir::new();
    let broker = Broker::start(&work);
    broker.create_topic("audit.asana.asana_it");
    let config = kafka_config(
        &work,
        &sim,
        &broker.address,
        "topic = \"audit.{source_kind}.{source_id}\"",
    );
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    // The file sink runs beside it: when it has everything, so should Kafka.
    wait_until(Duration::from_secs(60), "the file sink", || {
        Delivered::count(&work.out()) >= 2_000
    });
    wait_until(
        Duration::from_secs(60),
        "kafka to acknowledge everything",
        || outbox_empty(&config),
    );
    assert!(daemon.terminate().success());

    let messages = consume(&broker, "audit.asana.asana_it", 2_000);
    let mut ids = std::collections::BTreeSet::new();
    for message in &messages {
        let envelope: Value = serde_json::from_str(message["value"].as_str().unwrap()).unwrap();
        let id = envelope["id"].as_str().unwrap();
        assert_eq!(message["key"], id, "the key is the event id");
        let headers = &message["headers"];
        assert_eq!(headers["auditrelay.source_id"], "asana_it");
        assert_eq!(headers["auditrelay.source_kind"], "asana");
        assert_eq!(headers["auditrelay.envelope_version"], "1");
        assert_eq!(
            headers["auditrelay.event_type"],
            envelope["type"].as_str().unwrap_or("")
        );
        assert!(ids.insert(id.to_string()), "{id} arrived twice");
    }
    assert_eq!(ids, sim.gids());
}

#[test]
fn a_broker_that_comes_up_late_gets_everything_and_sources_pause_meanwhile() {
    let sim = Sim::backlog(500);
    let work = Workdir::new();
    // Point the sink at a port where nothing listens yet.
    let port = free_port();
    let config = kafka_config(
        &work,
        &sim,
        &format!("127.0.0.1:{port}"),
        "message_timeout = \"2s\"",
    );
    // A small outbox: the source must pause at it, not drop anything.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[state]\n", "[state]\nmax_outbox_events = 100\n");
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(30), "the source to pause", || {
        daemon.logs().contains("outbox full; pausing")
    });
    wait_until(Duration::from_secs(30), "failed deliveries", || {
        daemon.logs().contains("delivery failed")
    });
    let broker = Broker::start_on(&work, port);
    broker.create_topic("auditrelay.asana");
    wait_until(
        Duration::from_secs(60),
        "kafka to acknowledge all 500",
        || acked_seq(&config, "kafka") >= 500,
    );
    assert!(daemon.terminate().success());
    let messages = consume(&broker, "auditrelay.asana", 500);
    let ids: std::collections::BTreeSet<String> = messages
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect();
    // Retried batches may repeat an event; none may be missing.
    assert_eq!(ids, sim.gids());
}

#[test]
fn events_kafka_refuses_go_to_the_dead_letter_table_and_replay() {
    let sim = Sim::backlog(300);
    let work = Workdir::new();
    let broker = Broker::start(&work);
    broker.create_topic("auditrelay.asana");
    // librdkafka refuses, for good, any message over message.max.bytes.
    let small = "[sinks.kafka.properties]\n\"message.max.bytes\" = \"1200\"";
    let config = kafka_config(&work, &sim, &broker.address, small);
    let cfg = config.to_str().unwrap().to_string();
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    // Every outbox row (seq 1..=300) delivered or dead-lettered.
    wait_until(Duration::from_secs(60), "every event settled", || {
        acked_seq(&config, "kafka") >= 300
    });
    assert!(daemon.terminate().success());
    let (code, out, err) = run_cli(
        &["dlq", "list", "--json", "--config", &cfg],
        &Default::default(),
    );
    assert_eq!(code, 0, "{err}");
    let letters: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(!letters.is_empty(), "some envelopes are over 1200 bytes");
    assert!(letters.len() < 300, "and some are not");
    for letter in &letters {
        assert_eq!(letter["sink_id"], "kafka");
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains("MessageSizeTooLarge"),
            "{letter}"
        );
    }
    let delivered = consume(&broker, "auditrelay.asana", 300 - letters.len());
    assert_eq!(
        delivered.len(),
        300 - letters.len(),
        "the rest flowed, each once"
    );

    // Fix the cause, then replay: everything is in Kafka, the table empty.
    let fixed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"1200\"", "\"1000000\"");
    let config = work.write_config(&fixed);
    let (code, out, err) = run_cli(&["dlq", "replay", "--config", &cfg], &Default::default());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("marked {} dead letters", letters.len())),
        "{out}"
    );
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "the replay", || {
        let (_, out, _) = run_cli(
            &["dlq", "list", "--json", "--config", &cfg],
            &Default::default(),
        );
        serde_json::from_str::<Vec<Value>>(&out).is_ok_and(|l| l.is_empty())
    });
    assert!(daemon.terminate().success());
    let all = consume(&broker, "auditrelay.asana", 300);
    let ids: std::collections::BTreeSet<String> = all
        .iter()
        .map(|m| m["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 300, "no event twice");
    assert_eq!(ids, sim.gids());
}
