//! Liveness and readiness of the daemon's tasks.
//!
//! Each source and sink holds a [`Component`] and reports into it: what it
//! is doing and by when it promises to report again (a *deadline
//! heartbeat*), and each success and failure. From these:
//!
//! - the systemd watchdog is fed only while no task has overrun its
//!   deadline, so a poller hung in a request or a commit gets the process
//!   restarted, while one sleeping out a 15-minute rate limit does not;
//! - `/readyz` says which source has not polled successfully lately and
//!   which sink keeps failing, and why;
//! - the state file gets each component's last success and error, for
//!   `auditrelay status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::secret::Secret;
use crate::state::{unix_ms_now, ComponentRecord};

/// Deliveries that must fail in a row before a sink counts as not ready.
pub const SINK_FAILURES_NOT_READY: u64 = 3;

/// A source or a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Source,
    Sink,
}

impl Role {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Sink => "sink",
        }
    }
}

/// Every component of the process.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    components: Mutex<BTreeMap<(Role, String), Arc<Component>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            components: Mutex::default(),
        }
    }
}

impl Health {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers (or replaces) a component. `ready_within`: for a source,
    /// how recent its last successful poll must be for it to count as
    /// ready. `secrets` are cut out of every error message it records.
    pub fn register(
        &self,
        role: Role,
        id: &str,
        kind: &str,
        ready_within: Duration,
        secrets: Vec<Secret>,
    ) -> Arc<Component> {
        let component = self.component(role, id, kind, ready_within, secrets);
        self.insert(Arc::clone(&component));
        component
    }

    /// A component not registered yet (see [`Health::insert`]).
    pub fn component(
        &self,
        role: Role,
        id: &str,
        kind: &str,
        ready_within: Duration,
        secrets: Vec<Secret>,
    ) -> Arc<Component> {
        Arc::new(Component {
            role,
            id: id.to_string(),
            kind: kind.to_string(),
            epoch: self.epoch,
            ready_within,
            secrets,
            deadline_ms: AtomicU64::new(IDLE),
            activity: Mutex::new("starting"),
            state: Mutex::new(ComponentRecord::new(role.as_str(), id, kind)),
            dirty: std::sync::atomic::AtomicBool::new(true),
            succeeded_here: std::sync::atomic::AtomicBool::new(false),
            parent: None,
            lanes: Mutex::default(),
        })
    }

    /// Registers a component, replacing one with the same role and id.
    pub fn insert(&self, component: Arc<Component>) {
        lock(&self.components).insert((component.role, component.id.clone()), component);
    }

    /// The registered component `role`/`id`.
    pub fn get(&self, role: Role, id: &str) -> Option<Arc<Component>> {
        lock(&self.components).get(&(role, id.to_string())).cloned()
    }

    /// Forgets a removed component.
    pub fn remove(&self, role: Role, id: &str) {
        lock(&self.components).remove(&(role, id.to_string()));
    }

    fn all(&self) -> Vec<Arc<Component>> {
        lock(&self.components).values().cloned().collect()
    }

    /// Components past the deadline they promised (or one of their lanes
    /// did), with what they were doing and by how much they are late.
    pub fn overdue(&self) -> Vec<(Arc<Component>, &'static str, Duration)> {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.all()
            .into_iter()
            .filter_map(|c| {
                let lanes: Vec<Arc<Component>> =
                    lock(&c.lanes).iter().filter_map(Weak::upgrade).collect();
                let late = std::iter::once(&c)
                    .chain(lanes.iter())
                    .filter_map(|task| {
                        let deadline = task.deadline_ms.load(Ordering::Relaxed);
                        (deadline != IDLE && now > deadline)
                            .then(|| (*lock(&task.activity), now - deadline))
                    })
                    .max_by_key(|(_, late)| *late);
                late.map(|(activity, late)| (c, activity, Duration::from_millis(late)))
            })
            .collect()
    }

    /// Records of the components that changed since the last call, to
    /// store.
    pub fn changed_records(&self) -> Vec<ComponentRecord> {
        self.all()
            .iter()
            .filter(|c| c.dirty.swap(false, Ordering::Relaxed))
            .map(|c| c.record())
            .collect()
    }

    /// Marks every component as changed (after a failed store).
    pub fn mark_all_changed(&self) {
        for c in self.all() {
            c.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Readiness of every component, at `now_ms` (Unix ms).
    pub fn readiness(&self, now_ms: i64) -> Vec<Check> {
        self.all().iter().map(|c| c.check(now_ms)).collect()
    }
}

/// One component's verdict in `/readyz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub component: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

const IDLE: u64 = u64::MAX;

/// One source's or sink's health.
#[derive(Debug)]
pub struct Component {
    role: Role,
    id: String,
    kind: String,
    epoch: Instant,
    ready_within: Duration,
    secrets: Vec<Secret>,
    /// Milliseconds since `epoch` by which the task reports again;
    /// [`IDLE`] while it waits for something that may take forever.
    deadline_ms: AtomicU64,
    activity: Mutex<&'static str>,
    state: Mutex<ComponentRecord>,
    dirty: std::sync::atomic::AtomicBool,
    /// A success in this process (a stored one from before a restart does
    /// not make a source ready).
    succeeded_here: std::sync::atomic::AtomicBool,
    /// Set on a lane: where its successes and failures go.
    parent: Option<Arc<Component>>,
    /// Lanes of this component that are still alive.
    lanes: Mutex<Vec<Weak<Component>>>,
}

impl Component {
    /// `source/ID` or `sink/ID`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.role.as_str(), self.id)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// A lane: for a task that works beside the component's own (a slice
    /// of a backfill). It promises its own deadlines, so a hung lane is
    /// overdue even while the main task keeps beating. Its failures count
    /// for the component; its successes and "caught up" do not, so a lane
    /// doing well never hides a main task that fails (readiness is the
    /// main task's). It stops counting when dropped.
    pub fn lane(self: &Arc<Self>) -> Arc<Component> {
        let lane = Arc::new(Component {
            role: self.role,
            id: self.id.clone(),
            kind: self.kind.clone(),
            epoch: self.epoch,
            ready_within: self.ready_within,
            secrets: self.secrets.clone(),
            deadline_ms: AtomicU64::new(IDLE),
            activity: Mutex::new("starting"),
            state: Mutex::new(ComponentRecord::new(
                self.role.as_str(),
                &self.id,
                &self.kind,
            )),
            dirty: std::sync::atomic::AtomicBool::new(false),
            succeeded_here: std::sync::atomic::AtomicBool::new(false),
            parent: Some(Arc::clone(self)),
            lanes: Mutex::default(),
        });
        let mut lanes = lock(&self.lanes);
        lanes.retain(|l| l.strong_count() > 0);
        lanes.push(Arc::downgrade(&lane));
        lane
    }

    /// Promises to report again within `within`, while doing `activity`.
    pub fn beat(&self, activity: &'static str, within: Duration) {
        let now = self.epoch.elapsed();
        let deadline = (now + within).as_millis().min(u128::from(IDLE - 1)) as u64;
        *lock(&self.activity) = activity;
        self.deadline_ms.store(deadline, Ordering::Relaxed);
    }

    /// Waits for something outside its control (new events) with no bound.
    pub fn idle(&self, activity: &'static str) {
        *lock(&self.activity) = activity;
        self.deadline_ms.store(IDLE, Ordering::Relaxed);
    }

    /// Takes the stored record as the starting point (after a restart).
    pub fn restore(&self, stored: ComponentRecord) {
        let mut state = lock(&self.state);
        state.last_success_at = stored.last_success_at;
        state.caught_up_at = stored.caught_up_at;
        state.last_error_at = stored.last_error_at;
        state.last_error = stored.last_error;
        state.consecutive_failures = stored.consecutive_failures;
    }

    /// A poll or a delivery worked.
    pub fn succeeded(&self) {
        if self.parent.is_some() {
            return;
        }
        let mut state = lock(&self.state);
        state.last_success_at = Some(unix_ms_now());
        state.consecutive_failures = 0;
        self.dirty.store(true, Ordering::Relaxed);
        self.succeeded_here.store(true, Ordering::Relaxed);
    }

    /// A poll reached the end of the stream: everything up to now is read.
    pub fn caught_up(&self) {
        if self.parent.is_some() {
            return;
        }
        lock(&self.state).caught_up_at = Some(unix_ms_now());
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// A poll or a delivery failed. Configured credentials are cut out of
    /// the message before it is kept.
    pub fn failed(&self, error: &str) {
        if let Some(parent) = &self.parent {
            return parent.failed(error);
        }
        let message = redact(error, &self.secrets);
        let mut state = lock(&self.state);
        state.last_error_at = Some(unix_ms_now());
        state.last_error = Some(message);
        state.consecutive_failures += 1;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The current record.
    pub fn record(&self) -> ComponentRecord {
        let mut record = lock(&self.state).clone();
        record.updated_at = unix_ms_now();
        record
    }

    fn check(&self, now_ms: i64) -> Check {
        let record = lock(&self.state).clone();
        let last_error = record
            .last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        let doing = *lock(&self.activity);
        let last_error = format!("{last_error}; now: {doing}");
        let problem = match self.role {
            Role::Source => {
                let limit = i64::try_from(self.ready_within.as_millis()).unwrap_or(i64::MAX);
                let here = self.succeeded_here.load(Ordering::Relaxed);
                match record.last_success_at.filter(|_| here) {
                    None => Some(format!("no successful poll yet{last_error}")),
                    Some(at) if now_ms.saturating_sub(at) > limit => Some(format!(
                        "no successful poll for {}s{last_error}",
                        now_ms.saturating_sub(at) / 1000
                    )),
                    Some(_) => None,
                }
            }
            Role::Sink => (record.consecutive_failures >= SINK_FAILURES_NOT_READY).then(|| {
                format!(
                    "{} deliveries failed in a row{last_error}",
                    record.consecutive_failures
                )
            }),
        };
        Check {
            component: self.name(),
            ok: problem.is_none(),
            problem,
        }
    }
}

/// `message` with every credential replaced by `[redacted]`.
pub fn redact(message: &str, secrets: &[Secret]) -> String {
    let mut out = message.to_string();
    for secret in secrets {
        let value = secret.expose();
        // Very short values would match ordinary text; no credential is
        // that short.
        if value.len() >= 6 {
            out = out.replace(value, "[redacted]");
        }
    }
    out
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_ready_only_after_a_recent_success() {
        let health = Health::new();
        let source = health.register(Role::Source, "a", "asana", Duration::from_secs(60), vec![]);
        let now = unix_ms_now();
        let check = &health.readiness(now)[0];
        assert!(!check.ok);
        assert_eq!(check.component, "source/a");
        assert_eq!(
            check.problem.as_deref(),
            Some("no successful poll yet; now: starting")
        );
        source.failed("HTTP 503");
        let check = &health.readiness(now)[0];
        assert!(
            check.problem.as_deref().unwrap().contains("HTTP 503"),
            "{check:?}"
        );
        source.succeeded();
        assert!(health.readiness(unix_ms_now())[0].ok);
        // Two minutes later without another success: not ready.
        let later = health.readiness(unix_ms_now() + 120_000);
        assert!(!later[0].ok);
        assert!(later[0]
            .problem
            .as_deref()
            .unwrap()
            .contains("no successful poll for 1"));
    }

    #[test]
    fn a_success_from_before_a_restart_does_not_make_a_source_ready() {
        let health = Health::new();
        let source = health.register(Role::Source, "a", "asana", Duration::from_secs(60), vec![]);
        let mut stored = ComponentRecord::new("source", "a", "asana");
        stored.last_success_at = Some(unix_ms_now());
        source.restore(stored);
        assert!(!health.readiness(unix_ms_now())[0].ok);
        source.beat("paused: the outbox is full", Duration::from_secs(30));
        let check = &health.readiness(unix_ms_now())[0];
        assert!(
            check
                .problem
                .as_deref()
                .unwrap()
                .ends_with("now: paused: the outbox is full"),
            "{check:?}"
        );
        source.succeeded();
        assert!(health.readiness(unix_ms_now())[0].ok);
    }

    #[test]
    fn a_sink_is_not_ready_after_repeated_failures() {
        let health = Health::new();
        let sink = health.register(Role::Sink, "k", "kafka", Duration::ZERO, vec![]);
        assert!(health.readiness(unix_ms_now())[0].ok);
        for _ in 0..SINK_FAILURES_NOT_READY {
            sink.failed("broker down");
        }
        let check = &health.readiness(unix_ms_now())[0];
        assert!(!check.ok);
        assert!(check
            .problem
            .as_deref()
            .unwrap()
            .starts_with("3 deliveries failed"));
        sink.succeeded();
        assert!(health.readiness(unix_ms_now())[0].ok);
    }

    #[test]
    fn errors_never_keep_a_credential() {
        let health = Health::new();
        let secret = Secret::new("s3cr3t-token-value");
        let source = health.register(Role::Source, "a", "asana", Duration::ZERO, vec![secret]);
        source.failed("server said: bad token s3cr3t-token-value");
        let record = source.record();
        assert_eq!(
            record.last_error.as_deref(),
            Some("server said: bad token [redacted]")
        );
        let check = format!("{:?}", health.readiness(unix_ms_now()));
        assert!(!check.contains("s3cr3t"), "{check}");
    }

    #[test]
    fn overdue_names_the_late_task_and_idle_is_never_late() {
        let health = Health::new();
        let late = health.register(Role::Source, "late", "asana", Duration::ZERO, vec![]);
        let idle = health.register(Role::Sink, "idle", "file", Duration::ZERO, vec![]);
        late.beat("fetching a page", Duration::ZERO);
        idle.idle("waiting for events");
        std::thread::sleep(Duration::from_millis(5));
        let overdue = health.overdue();
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].0.name(), "source/late");
        assert_eq!(overdue[0].1, "fetching a page");
        late.beat("sleeping", Duration::from_secs(60));
        assert!(health.overdue().is_empty());
    }

    #[test]
    fn only_changed_components_are_stored_again() {
        let health = Health::new();
        let source = health.register(Role::Source, "a", "asana", Duration::ZERO, vec![]);
        assert_eq!(health.changed_records().len(), 1);
        assert!(health.changed_records().is_empty());
        source.succeeded();
        let records = health.changed_records();
        assert_eq!(records.len(), 1);
        assert!(records[0].last_success_at.is_some());
    }

    #[test]
    fn a_lane_has_its_own_deadline_and_reports_to_its_component() {
        let health = Health::new();
        let source = health.register(Role::Source, "a", "asana", Duration::from_secs(60), vec![]);
        let lane = source.lane();
        source.beat("fetching a page", Duration::from_secs(60));
        lane.beat("committing a slice", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        // The main task is on time; the lane is not, so the source is late.
        let late = health.overdue();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].0.name(), "source/a");
        assert_eq!(late[0].1, "committing a slice");
        // Failures count for the source; successes and "caught up" do not:
        // readiness is the main task's.
        lane.failed("slice request failed");
        assert_eq!(source.record().consecutive_failures, 1);
        lane.succeeded();
        lane.caught_up();
        let record = source.record();
        assert_eq!(record.consecutive_failures, 1);
        assert_eq!((record.last_success_at, record.caught_up_at), (None, None));
        assert!(!source.check(unix_ms_now()).ok);
        source.succeeded();
        assert_eq!(source.record().consecutive_failures, 0);
        assert!(source.check(unix_ms_now()).ok);
        // A finished lane no longer counts.
        drop(lane);
        assert!(health.overdue().is_empty());
    }
}
