//! The syslog sink against a real rsyslog on loopback: what rsyslog parsed
//! from each message (hostname, app-name, msgid, structured data, message)
//! is checked for every transport.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// rsyslogd with a UDP and a TCP listener on loopback, writing the fields it
/// parsed from every message as one JSON object per line.
struct Rsyslog {
    child: Child,
    udp_port: u16,
    tcp_port: u16,
    received: PathBuf,
}

fn free_port() -> u16 {
    // Free for both protocols at the moment of asking.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Rsyslog {
    fn start(work: &Workdir) -> Self {
        Self::start_on(work, free_port(), free_port())
    }

    fn start_on(work: &Workdir, udp_port: u16, tcp_port: u16) -> Self {
        let binary = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect(
                "rsyslogd is not installed; scripts/test installs it (apt-get install rsyslog)",
            );
        let dir = work.path("rsyslog");
        std::fs::create_dir_all(&dir).unwrap();

        let received = dir.join("received.jsonl");
        let config = format!(
            r#"
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf" datatype="number")
  property(outname="facility" name="syslogfacility" format="jsonf" datatype="number")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}}
ruleset(name="collect") {{
  action(type="omfile" file="{received}" template="fields" flushOnTXEnd="on" asyncWriting="off")
}}
input(type="imudp" address="127.0.0.1" port="{udp_port}" ruleset="collect" rcvbufSize="16m")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" ruleset="collect")
"#,
            dir = dir.display(),
            received = received.display(),
        );
        let conf = dir.join("rsyslog.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new(binary)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("rsyslogd.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("rsyslogd.err")).unwrap())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(20), "rsyslogd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", tcp_port)).is_ok()
        });
        Self {
            child,
            udp_port,
            tcp_port,
            received,
        }
    }

    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.received).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| serde_json::from_str(l.trim_end()).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the daemon with one syslog sink (`sink` lines added to its table)
/// until rsyslog has received every event, and returns what it parsed.
fn deliver(events: u64, sink: impl Fn(&Rsyslog) -> String) -> (Sim, Vec<Value>) {
    let sim = Sim::backlog(events);
    let work = Workdir::new();
    let rsyslog = Rsyslog::start(&work);
    let text = std::fs::read_to_string(work.config(&sim.base_url, ""))
        .unwrap()
        .replace(
            "[sinks.file]\nkind = \"file\"",
            &format!("[sinks.siem]\nkind = \"syslog\"\nhostname = \"relay-it\"\n{}\n[sinks.file]\nkind = \"file\"", sink(&rsyslog)),
        );
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(
        Duration::from_secs(60),
        "rsyslog to receive every event",
        || rsyslog.lines().len() as u64 >= events,
    );
    assert!(daemon.terminate().success());
    (sim, rsyslog.lines())
}

/// Every event arrived once, and rsyslog parsed each field as intended.
fn check_rfc5424(sim: &Sim, lines: &[Value], input: &str) {
    let mut ids = std::collections::BTreeSet::new();
    for line in lines {
        assert_eq!(line["input"], input, "{line}");
        assert_eq!(line["version"], "1", "{line}");
        assert_eq!(line["hostname"], "relay-it", "{line}");
        assert_eq!(line["app_name"], "auditrelay", "{line}");
        assert_eq!(line["facility"], 16, "local0: {line}");
        let envelope: Value = serde_json::from_str(line["msg"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("the message is not the JSON envelope ({e}): {line}"));
        let id = envelope["id"].as_str().unwrap();
        let event_type = envelope["type"].as_str().unwrap_or("-");
        // MSGID holds at most 32 characters (RFC 5424); the full type is
        // in the structured data.
        let msgid: String = event_type.chars().take(32).collect();
        assert_eq!(line["msgid"], msgid.as_str(), "{line}");
        let sd = line["structured_data"].as_str().unwrap();
        assert!(
            sd.starts_with("[auditrelay@32473 source=\"asana_it\" kind=\"asana\""),
            "{sd}"
        );
        assert!(sd.contains(&format!("event_id=\"{id}\"")), "{sd}");
        assert!(sd.contains(&format!("event_type=\"{event_type}\"")), "{sd}");
        let expected_severity = if envelope["outcome"] == "failure" {
            4
        } else {
            line["severity"].as_i64().unwrap().max(5)
        };
        assert_eq!(
            line["severity"], expected_severity,
            "failures are warnings: {line}"
        );
        assert!(ids.insert(id.to_string()), "{id} arrived twice");
    }
    assert_eq!(ids, sim.gids());
}

#[test]
fn rfc5424_over_tcp_with_octet_counting() {
    let (sim, lines) = deliver(500, |r| format!("address = \"127.0.0.1:{}\"", r.tcp_port));
    check_rfc5424(&sim, &lines, "imtcp");
}

#[test]
fn rfc5424_over_tcp_with_lf_framing() {
    let (sim, lines) = deliver(500, |r| {
        format!("address = \"127.0.0.1:{}\"\nframing = \"lf\"", r.tcp_port)
    });
    check_rfc5424(&sim, &lines, "imtcp");
}

#[test]
fn rfc5424_over_udp() {
    // Loopback does not drop datagrams at this rate; on a real network UDP
    // is best effort, as the README says.
    let (sim, lines) = deliver(200, |r| {
        format!(
            "address = \"127.0.0.1:{}\"\ntransport = \"udp\"\nmax_message_bytes = \"16KiB\"",
            r.udp_port
        )
    });
    check_rfc5424(&sim, &lines, "imudp");
}

#[test]
fn rfc3164_over_tcp() {
    let (sim, lines) = deliver(200, |r| {
        format!(
            "address = \"127.0.0.1:{}\"\nframing = \"lf\"\nformat = \"rfc3164\"",
            r.tcp_port
        )
    });
    let mut ids = std::collections::BTreeSet::new();
    for line in &lines {
        assert_eq!(line["version"], "0", "{line}");
        assert_eq!(line["hostname"], "relay-it", "{line}");
        assert_eq!(line["app_name"], "auditrelay", "{line}");
        let envelope: Value =
            serde_json::from_str(line["msg"].as_str().unwrap().trim_start()).unwrap();
        ids.insert(envelope["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), lines.len(), "no event twice");
    assert_eq!(ids, sim.gids());
}

#[test]
fn a_receiver_that_comes_up_late_gets_everything() {
    let sim = Sim::backlog(300);
    let work = Workdir::new();
    let (udp_port, tcp_port) = (free_port(), free_port());
    let text = std::fs::read_to_string(work.config(&sim.base_url, ""))
        .unwrap()
        .replace(
            "[sinks.file]\nkind = \"file\"",
            &format!("[sinks.siem]\nkind = \"syslog\"\nhostname = \"relay-it\"\naddress = \"127.0.0.1:{tcp_port}\"\nretry_initial = \"50ms\"\nretry_max = \"300ms\"\n[sinks.file]\nkind = \"file\""),
        );
    let config = work.write_config(&text);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    // Nothing listens yet: deliveries fail and are retried.
    wait_until(Duration::from_secs(30), "failed deliveries", || {
        daemon.logs().matches("delivery failed").count() >= 3
    });
    let rsyslog = Rsyslog::start_on(&work, udp_port, tcp_port);
    wait_until(
        Duration::from_secs(60),
        "the late receiver to get every event",
        || rsyslog.lines().len() >= 300,
    );
    assert!(daemon.terminate().success());
    check_rfc5424(&sim, &rsyslog.lines(), "imtcp");
}
