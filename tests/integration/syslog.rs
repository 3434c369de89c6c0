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
        Self::start_on(work, free_port(), free_port(), None)
    }

    /// `tls`: serve TLS on the TCP port with this PKI, requiring a valid
    /// client certificate when `mutual`.
    fn start_on(work: &Workdir, udp_port: u16, tcp_port: u16, tls: Option<(&Pki, bool)>) -> Self {
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
global(workDirectory="{dir}" maxMessageSize="64k" {tls_global})
module(load="imudp")
module(load="imtcp" {tls_module})
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
            tls_global = tls.map_or(String::new(), |(pki, _)| format!(
                "DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                pki.ca.display(), pki.server_cert.display(), pki.server_key.display()
            )),
            tls_module = tls.map_or(String::new(), |(_, mutual)| format!(
                "StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"{}\"",
                if mutual { "x509/certvalid" } else { "anon" }
            )),
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
        // Failures are warnings; deletions and role, access, settings and app
        // changes are notices; the rest is info.
        let expected_severity = match (envelope["outcome"].as_str(), envelope["category"].as_str())
        {
            (Some("failure"), _) => 4,
            (_, Some("deletion" | "roles" | "access_control" | "admin_settings" | "apps")) => 5,
            _ => 6,
        };
        assert_eq!(
            line["severity"], expected_severity,
            "severity follows the event: {line}"
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
    let rsyslog = Rsyslog::start_on(&work, udp_port, tcp_port, None);
    wait_until(
        Duration::from_secs(60),
        "the late receiver to get every event",
        || rsyslog.lines().len() >= 300,
    );
    assert!(daemon.terminate().success());
    check_rfc5424(&sim, &rsyslog.lines(), "imtcp");
}

/// A test CA with a server certificate (localhost, 127.0.0.1) and a client
/// certificate, made with the openssl command line.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn generate(work: &Workdir) -> Self {
        let dir = work.path("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=auditrelay test CA",
                ],
            ]
            .concat(),
        );
        for (who, eku, san) in [
            ("server", "serverAuth", "DNS:localhost,IP:127.0.0.1"),
            ("client", "clientAuth", "DNS:client"),
        ] {
            std::fs::write(
                dir.join(format!("{who}.ext")),
                format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={eku}\n"),
            )
            .unwrap();
            let (key, csr, pem, ext) = (
                format!("{who}.key"),
                format!("{who}.csr"),
                format!("{who}.pem"),
                format!("{who}.ext"),
            );
            openssl(
                &[
                    &["req"][..],
                    &ec,
                    &[
                        "-keyout",
                        &key,
                        "-out",
                        &csr,
                        "-subj",
                        &format!("/CN={who}"),
                    ],
                ]
                .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }
}

fn tls_config(work: &Workdir, sim: &Sim, tcp_port: u16, tls_table: &str) -> PathBuf {
    let text = std::fs::read_to_string(work.config(&sim.base_url, ""))
        .unwrap()
        .replace(
            "[sinks.file]\nkind = \"file\"",
            &format!("[sinks.siem]\nkind = \"syslog\"\nhostname = \"relay-it\"\naddress = \"127.0.0.1:{tcp_port}\"\ntransport = \"tls\"\nretry_initial = \"50ms\"\nretry_max = \"300ms\"\n{tls_table}\n[sinks.file]\nkind = \"file\""),
        );
    work.write_config(&text)
}

#[test]
fn tls_with_a_custom_ca_and_a_client_certificate() {
    let sim = Sim::backlog(300);
    let work = Workdir::new();
    let pki = Pki::generate(&work);
    let tcp_port = free_port();
    let rsyslog = Rsyslog::start_on(&work, free_port(), tcp_port, Some((&pki, true)));
    let table = format!(
        "[sinks.siem.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let config = tls_config(&work, &sim, tcp_port, &table);
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(60), "every event over TLS", || {
        rsyslog.lines().len() >= 300
    });
    assert!(daemon.terminate().success());
    check_rfc5424(&sim, &rsyslog.lines(), "imtcp");
}

#[test]
fn tls_verifies_the_server_and_mutual_tls_needs_the_client_certificate() {
    let sim = Sim::backlog(50);
    let work = Workdir::new();
    let pki = Pki::generate(&work);
    let tcp_port = free_port();
    let rsyslog = Rsyslog::start_on(&work, free_port(), tcp_port, Some((&pki, true)));
    // No ca_file: the system's roots do not know the test CA.
    let config = tls_config(&work, &sim, tcp_port, "");
    let daemon = Daemon::start(&config, work.path("daemon.log"));
    wait_until(Duration::from_secs(30), "refused deliveries", || {
        daemon.logs().matches("delivery failed").count() >= 2
    });
    let logs = daemon.logs();
    assert!(daemon.terminate().success());
    assert!(
        logs.contains("certificate"),
        "the error names the certificate problem:\n{logs}"
    );
    // The right CA but no client certificate: the receiver refuses.
    let table = format!("[sinks.siem.tls]\nca_file = \"{}\"", pki.ca.display());
    let config = tls_config(&work, &sim, tcp_port, &table);
    let daemon = Daemon::start(&config, work.path("daemon2.log"));
    wait_until(Duration::from_secs(30), "refused deliveries", || {
        std::fs::read_to_string(work.path("daemon2.log"))
            .unwrap_or_default()
            .matches("delivery failed")
            .count()
            >= 2
    });
    assert!(daemon.terminate().success());
    // Refused sessions acknowledged nothing: every event is still waiting.
    assert_eq!(
        acked_seq(&config, "siem"),
        0,
        "a refused TLS session must not acknowledge"
    );
    assert!(
        rsyslog.lines().is_empty(),
        "nothing may arrive without verification"
    );
}
