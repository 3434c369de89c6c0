//! Test harness: an in-process simulator on loopback, the real binary as a
//! child process, and readers for what reached the sinks.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrelay::simulator::{FaultUpdate, SimConfig, Simulator};
use tokio_util::sync::CancellationToken;

pub(crate) const TOKEN: &str = "it-token-5f3c9a2e";
pub(crate) const WORKSPACE: &str = "1200000000000000";

/// The simulator, served on 127.0.0.1 from its own runtime.
pub(crate) struct Sim {
    pub(crate) sim: Arc<Simulator>,
    pub(crate) base_url: String,
    runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
}

impl Sim {
    pub(crate) fn start(config: SimConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sim = Simulator::new(config);
        let stop = CancellationToken::new();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base_url = format!("http://{}/api/1.0", listener.local_addr().unwrap());
        runtime.spawn(Arc::clone(&sim).serve(listener, stop.clone().cancelled_owned()));
        Self {
            sim,
            base_url,
            runtime,
            stop,
        }
    }

    /// A simulator with `backlog` events in one workspace and no live ones.
    pub(crate) fn backlog(backlog: u64) -> Self {
        Self::start(SimConfig {
            seed: 7,
            workspaces: vec![WORKSPACE.into()],
            tokens: vec![TOKEN.into()],
            backlog,
            rate: 0.0,
            max_live: Some(0),
            ..SimConfig::default()
        })
    }

    pub(crate) fn faults(&self, update: FaultUpdate) {
        self.sim.update_faults(update).unwrap();
    }

    pub(crate) fn gids(&self) -> BTreeSet<String> {
        self.gids_of(WORKSPACE)
    }

    pub(crate) fn gids_of(&self, workspace: &str) -> BTreeSet<String> {
        self.sim.visible_gids(workspace).into_iter().collect()
    }

    /// `GET /_sim/stats`.
    pub(crate) fn stats(&self) -> serde_json::Value {
        let url = self.base_url.replace("/api/1.0", "/_sim/stats");
        self.runtime
            .block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() })
    }

    /// How many requests got `status`.
    pub(crate) fn status_count(&self, status: u16) -> u64 {
        self.stats()["by_status"][status.to_string()]
            .as_u64()
            .unwrap_or(0)
    }

    /// How many requests to `endpoint` (`audit_log_events`, `users`) got
    /// `status`, or any status.
    pub(crate) fn endpoint_count(&self, endpoint: &str, status: Option<u16>) -> u64 {
        let stats = self.stats();
        let by_status = &stats["by_endpoint"][endpoint];
        match status {
            Some(status) => by_status[status.to_string()].as_u64().unwrap_or(0),
            None => by_status
                .as_object()
                .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum()),
        }
    }

    /// `GET /_sim/requests?limit=N`: the paths of the last N requests.
    pub(crate) fn request_paths(&self, limit: usize) -> Vec<String> {
        let url = self
            .base_url
            .replace("/api/1.0", &format!("/_sim/requests?limit={limit}"));
        let log: serde_json::Value = self
            .runtime
            .block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() });
        log.as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A temporary directory holding a config, the state and the sink output.
pub(crate) struct Workdir {
    pub(crate) dir: tempfile::TempDir,
}

impl Workdir {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn out(&self) -> PathBuf {
        self.path("out/events.jsonl")
    }

    /// A config with one Asana source (`extra_source` lines appended to its
    /// table) and one file sink, tuned for fast tests.
    pub(crate) fn config(&self, base_url: &str, extra_source: &str) -> PathBuf {
        let text = format!(
            r#"
shutdown_grace = "5s"
[state]
path = "{state}"
[log]
level = "info"
[sources.asana_it]
kind = "asana"
base_url = "{base_url}"
workspace_gid = "{WORKSPACE}"
token = "{TOKEN}"
start_at = "2h"
poll_interval = "200ms"
request_timeout = "5s"
retry_initial = "20ms"
retry_max = "300ms"
slow_retry_interval = "1s"
{extra_source}
[sinks.file]
kind = "file"
path = "{out}"
batch_size = 500
retry_initial = "20ms"
retry_max = "300ms"
"#,
            state = self.path("state/state.db").display(),
            out = self.out().display(),
        );
        self.write_config(&text)
    }

    pub(crate) fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path("auditrelay.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_auditrelay")
}

/// The release binary, as the container image ships it: `scripts/test`
/// builds it (`LIBZ_SYS_STATIC=1 cargo build --release`) and names it in
/// `AUDITRELAY_RELEASE_BIN`.
pub(crate) fn release_binary() -> PathBuf {
    let path = std::env::var_os("AUDITRELAY_RELEASE_BIN").map(PathBuf::from);
    match path {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "this test runs the release binary: run scripts/test, or `LIBZ_SYS_STATIC=1 cargo build --release` and set AUDITRELAY_RELEASE_BIN=target/release/auditrelay"
        ),
    }
}

/// The daemon as a child process, its logs in a file.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(config: &Path, log: PathBuf) -> Self {
        Self::start_with_env(config, log, &[])
    }

    pub(crate) fn start_with_env(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        signal(self.pid(), "TERM");
        wait_exit(self.child.take().unwrap(), Duration::from_secs(30))
    }

    /// Waits (bounded) for an exit that was asked for otherwise.
    pub(crate) fn wait(mut self) -> ExitStatus {
        wait_exit(self.child.take().unwrap(), Duration::from_secs(30))
    }

    /// SIGKILL: no chance to clean up.
    pub(crate) fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub(crate) fn wait_exit(mut child: Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
pub(crate) fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a file sink wrote: the id of every line (rotated files included).
pub(crate) struct Delivered {
    pub(crate) ids: Vec<String>,
    pub(crate) lines: Vec<serde_json::Value>,
}

impl Delivered {
    pub(crate) fn read(path: &Path) -> Self {
        let mut files = vec![path.to_path_buf()];
        for n in 1..=64 {
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(format!(".{n}"));
            files.push(PathBuf::from(rotated));
        }
        let mut lines = Vec::new();
        for file in files.iter().rev() {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            // Only complete lines: the daemon may be writing the last one.
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let line = line.trim_end();
                let value: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("sink line is not JSON ({e}): {line}"));
                lines.push(value);
            }
        }
        let ids = lines
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        Self { ids, lines }
    }

    pub(crate) fn unique(&self) -> BTreeSet<String> {
        self.ids.iter().cloned().collect()
    }

    pub(crate) fn duplicates(&self) -> usize {
        self.ids.len() - self.unique().len()
    }

    /// Complete lines in the active file and the rotated ones, without
    /// parsing them (cheap enough to poll).
    pub(crate) fn total(path: &Path) -> usize {
        (0..=64)
            .map(|n| {
                let mut file = path.as_os_str().to_owned();
                if n > 0 {
                    file.push(format!(".{n}"));
                }
                Self::count(Path::new(&file))
            })
            .sum()
    }

    /// Complete lines in the active file.
    pub(crate) fn count(path: &Path) -> usize {
        std::fs::read(path).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
    }
}

/// Runs the binary to completion with a time limit; returns (code, stdout, stderr).
pub(crate) fn run_cli(args: &[&str], env: &HashMap<&str, &str>) -> (i32, String, String) {
    let child = Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_output(child, Duration::from_secs(60));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn wait_output(child: Child, limit: Duration) -> std::process::Output {
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("command did not finish within {limit:?}");
        }
    }
}

/// Runs `auditrelay state show --json`: (exit code, stdout, stderr).
fn state_show(config: &Path) -> (i32, String, String) {
    run_cli(
        &[
            "state",
            "show",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
        &HashMap::new(),
    )
}

/// `state show --json`, or `None` while the state file does not exist yet
/// (the daemon is still starting).
fn try_state_json(config: &Path) -> Option<serde_json::Value> {
    let (code, out, _) = state_show(config);
    (code == 0)
        .then(|| serde_json::from_str(&out).ok())
        .flatten()
}

/// Whether the outbox is empty (false until the state file exists).
pub(crate) fn outbox_empty(config: &Path) -> bool {
    try_state_json(config).is_some_and(|s| s["outbox_events"] == 0)
}

/// How far `sink` acknowledged the outbox (0 until the state file exists).
pub(crate) fn acked_seq(config: &Path, sink: &str) -> i64 {
    try_state_json(config)
        .and_then(|state| {
            state["sinks"]
                .as_array()?
                .iter()
                .find(|s| s["sink_id"] == sink)?["acked_seq"]
                .as_i64()
        })
        .unwrap_or(0)
}

/// `auditrelay state show --json` for a config.
pub(crate) fn state_json(config: &Path) -> serde_json::Value {
    let (code, out, err) = state_show(config);
    assert_eq!(code, 0, "state show failed: {err}");
    serde_json::from_str(&out).unwrap()
}
