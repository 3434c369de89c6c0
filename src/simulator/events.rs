//! Deterministic generation of Asana `AuditLogEvent` objects.
//!
//! Every event is a pure function of `(seed, workspace, key)`: the same inputs always give the
//! same JSON, so a simulator restarted with the same seed and epoch serves the same stream. The
//! in-memory log only stores the key, the creation time and the event-type index; everything
//! else is re-derived here when a page is rendered or a filter needs the actor or resource.
//!
//! A hand-rolled SplitMix64 generator is used instead of `rand` so that the stream stays stable
//! across `rand` releases (their seeded generators do not promise value stability).

use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;

/// Stateless-seeded SplitMix64 stream (also used by the Anaplan simulator).
#[derive(Debug, Clone)]
pub(crate) struct DetRng(u64);

/// SplitMix64 finaliser: a bijective 64-bit mixer with good avalanche.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable 64-bit key for a string (FNV-1a, then mixed); used to seed per-workspace streams.
pub(crate) fn string_key(s: &str) -> u64 {
    let hash = s.bytes().fold(0xCBF2_9CE4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    });
    mix64(hash)
}

impl DetRng {
    pub(crate) fn new(parts: &[u64]) -> Self {
        let state = parts
            .iter()
            .fold(0x6A09_E667_F3BC_C908_u64, |acc, &p| mix64(acc ^ p));
        Self(state)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform value in `0..n` (`n > 0`); the modulo bias is irrelevant for fake data.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // Slices here are small constant tables, so the cast cannot truncate.
        &items[self.below(items.len() as u64) as usize]
    }
}

/// What kind of object an event is about; decides the resource's gid space and naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceKind {
    User,
    Workspace,
    Task,
    Project,
    Team,
    Portfolio,
    Goal,
    Attachment,
    Comment,
    CustomField,
    App,
    ServiceAccount,
    Widget,
}

/// Which shape the `details` object takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DetailsKind {
    Login,
    Empty,
    Role,
    Setting,
    Membership(ResourceKind),
    Privacy,
    App,
    Future,
}

#[derive(Debug)]
struct EventType {
    name: &'static str,
    category: &'static str,
    resource: ResourceKind,
    details: DetailsKind,
    /// Relative frequency in the generated mix.
    weight: u64,
}

const fn ev(
    name: &'static str,
    category: &'static str,
    resource: ResourceKind,
    details: DetailsKind,
    weight: u64,
) -> EventType {
    EventType {
        name,
        category,
        resource,
        details,
        weight,
    }
}

use DetailsKind as D;
use ResourceKind as R;

/// The event mix. Logins, uploads and deletions dominate, as in real audit logs; a small
/// share of unknown future types checks that consumers never hard-fail on new types.
static EVENT_TYPES: &[EventType] = &[
    ev("user_login_succeeded", "logins", R::User, D::Login, 250),
    ev("user_login_failed", "logins", R::User, D::Login, 40),
    ev("user_logged_out", "logins", R::User, D::Empty, 90),
    ev("user_invited", "user_updates", R::User, D::Empty, 15),
    ev("user_deprovisioned", "user_updates", R::User, D::Empty, 5),
    ev("user_reprovisioned", "user_updates", R::User, D::Empty, 2),
    ev(
        "user_password_changed",
        "user_updates",
        R::User,
        D::Empty,
        8,
    ),
    ev("user_password_reset", "user_updates", R::User, D::Empty, 5),
    ev(
        "user_forgot_password_started",
        "user_updates",
        R::User,
        D::Empty,
        5,
    ),
    ev(
        "user_two_factor_auth_enabled",
        "user_updates",
        R::User,
        D::Empty,
        5,
    ),
    ev(
        "user_two_factor_auth_disabled",
        "user_updates",
        R::User,
        D::Empty,
        2,
    ),
    ev(
        "user_workspace_admin_role_changed",
        "roles",
        R::User,
        D::Role,
        8,
    ),
    ev(
        "user_division_admin_role_changed",
        "roles",
        R::User,
        D::Role,
        3,
    ),
    ev(
        "workspace_saml_settings_changed",
        "admin_settings",
        R::Workspace,
        D::Setting,
        3,
    ),
    ev(
        "workspace_password_requirements_changed",
        "admin_settings",
        R::Workspace,
        D::Setting,
        2,
    ),
    ev(
        "workspace_require_two_factor_auth_enabled",
        "admin_settings",
        R::Workspace,
        D::Setting,
        2,
    ),
    ev(
        "workspace_default_session_duration_changed",
        "admin_settings",
        R::Workspace,
        D::Setting,
        3,
    ),
    ev(
        "workspace_guest_invite_permissions_changed",
        "admin_settings",
        R::Workspace,
        D::Setting,
        2,
    ),
    ev(
        "workspace_personal_access_token_disabled",
        "admin_settings",
        R::Workspace,
        D::Setting,
        1,
    ),
    ev(
        "workspace_associated_email_domain_added",
        "admin_settings",
        R::Workspace,
        D::Setting,
        1,
    ),
    ev(
        "workspace_export_started",
        "content_export",
        R::Workspace,
        D::Empty,
        4,
    ),
    ev(
        "workspace_members_export_started",
        "content_export",
        R::Workspace,
        D::Empty,
        3,
    ),
    ev(
        "project_csv_export_started",
        "content_export",
        R::Project,
        D::Empty,
        15,
    ),
    ev(
        "attachment_downloaded",
        "content_export",
        R::Attachment,
        D::Empty,
        60,
    ),
    ev(
        "project_member_added",
        "access_control",
        R::User,
        D::Membership(R::Project),
        60,
    ),
    ev(
        "project_member_removed",
        "access_control",
        R::User,
        D::Membership(R::Project),
        20,
    ),
    ev(
        "team_member_added",
        "access_control",
        R::User,
        D::Membership(R::Team),
        30,
    ),
    ev(
        "team_member_removed",
        "access_control",
        R::User,
        D::Membership(R::Team),
        10,
    ),
    ev(
        "portfolio_member_added",
        "access_control",
        R::User,
        D::Membership(R::Portfolio),
        8,
    ),
    ev(
        "project_share_link_enabled",
        "access_control",
        R::Project,
        D::Empty,
        6,
    ),
    ev(
        "project_privacy_settings_changed",
        "access_control",
        R::Project,
        D::Privacy,
        10,
    ),
    ev(
        "team_privacy_settings_changed",
        "access_control",
        R::Team,
        D::Privacy,
        4,
    ),
    ev("user_app_authorized", "apps", R::App, D::App, 20),
    ev("user_app_revoked", "apps", R::App, D::App, 6),
    ev(
        "user_personal_access_token_authorized",
        "apps",
        R::User,
        D::Empty,
        6,
    ),
    ev(
        "user_personal_access_token_revoked",
        "apps",
        R::User,
        D::Empty,
        3,
    ),
    ev(
        "service_account_created",
        "apps",
        R::ServiceAccount,
        D::Empty,
        1,
    ),
    ev("team_created", "creation", R::Team, D::Empty, 8),
    ev(
        "attachment_uploaded",
        "creation",
        R::Attachment,
        D::Empty,
        80,
    ),
    ev("task_deleted", "deletion", R::Task, D::Empty, 120),
    ev(
        "task_permanently_deleted",
        "deletion",
        R::Task,
        D::Empty,
        10,
    ),
    ev("task_undeleted", "deletion", R::Task, D::Empty, 8),
    ev("project_deleted", "deletion", R::Project, D::Empty, 8),
    ev("project_undeleted", "deletion", R::Project, D::Empty, 2),
    ev("portfolio_deleted", "deletion", R::Portfolio, D::Empty, 2),
    ev("goal_deleted", "deletion", R::Goal, D::Empty, 2),
    ev("comment_deleted", "deletion", R::Comment, D::Empty, 15),
    ev(
        "attachment_deleted",
        "deletion",
        R::Attachment,
        D::Empty,
        10,
    ),
    ev(
        "custom_field_deleted",
        "deletion",
        R::CustomField,
        D::Empty,
        2,
    ),
    ev(
        "future_widget_created",
        "unknown_future_category",
        R::Widget,
        D::Future,
        10,
    ),
    ev(
        "future_widget_recalibrated",
        "unknown_future_category",
        R::Widget,
        D::Future,
        5,
    ),
];

/// Index into [`EVENT_TYPES`] of the type called `name`, if the catalogue knows it.
pub(crate) fn event_type_index(name: &str) -> Option<u16> {
    EVENT_TYPES
        .iter()
        .position(|t| t.name == name)
        .and_then(|i| u16::try_from(i).ok())
}

const FIRST_NAMES: &[&str] = &[
    "Greg", "Amara", "Bart", "Chen", "Dolores", "Emeka", "Freya", "Hiro", "Ines", "Jonas",
];
const LAST_NAMES: &[&str] = &["Sanchez", "Okafor", "Byte", "Lindqvist", "Novak"];

/// Number of distinct users in the pool (every first/last name combination).
const USER_COUNT: u64 = 50;
const USER_GID_BASE: u64 = 1_200_000_000_100_001;

/// One member of the fixed user pool, shared by every workspace.
struct User {
    gid: String,
    name: String,
    email: String,
}

/// Every first/last name combination, built once.
static USERS: LazyLock<Vec<User>> = LazyLock::new(|| {
    (0..USER_COUNT)
        .map(|index| {
            let first = FIRST_NAMES[(index % 10) as usize];
            let last = LAST_NAMES[(index / 10 % 5) as usize];
            User {
                gid: (USER_GID_BASE + index).to_string(),
                name: format!("{first} {last}"),
                email: format!(
                    "{}.{}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
            }
        })
        .collect()
});

fn user(index: u64) -> &'static User {
    &USERS[index as usize]
}

/// A user as `GET /users/{user_gid}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserRecord {
    pub(crate) gid: &'static str,
    pub(crate) name: &'static str,
    pub(crate) email: &'static str,
}

/// The pool user with this gid or email (the forms `GET /users/{user_gid}` accepts besides
/// `me`). Every user that can appear as an actor or a resource is in the pool.
pub(crate) fn find_user(gid_or_email: &str) -> Option<UserRecord> {
    USERS
        .iter()
        .find(|u| u.gid == gid_or_email || u.email.eq_ignore_ascii_case(gid_or_email))
        .map(|u| UserRecord {
            gid: &u.gid,
            name: &u.name,
            email: &u.email,
        })
}

/// The user behind the simulator's service-account tokens (`GET /users/me`); not in the pool,
/// so it never appears in events.
pub(crate) const SERVICE_ACCOUNT: UserRecord = UserRecord {
    gid: "1200000000099999",
    name: "SIEM export bot",
    email: "siem-export-bot@example.com",
};

/// Who performed an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Actor {
    User(u64),
    /// A non-user actor (`asana`, `anonymous`, ...), which has no gid.
    Other(&'static str),
}

impl Actor {
    pub(crate) fn actor_type(self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::Other(kind) => kind,
        }
    }

    pub(crate) fn gid(self) -> Option<u64> {
        match self {
            Actor::User(index) => Some(USER_GID_BASE + index),
            Actor::Other(_) => None,
        }
    }
}

/// Identity of the workspace an event belongs to, as needed to render it.
#[derive(Debug, Clone)]
pub(crate) struct WorkspaceIdentity {
    pub(crate) gid: String,
    pub(crate) name: String,
    /// Mixed into every per-event stream so workspaces get different events.
    pub(crate) key: u64,
}

/// The parts of an event that filters look at; cheap to compute for a scan.
#[derive(Debug, Clone)]
pub(crate) struct EventCore {
    kind: u16,
    pub(crate) actor: Actor,
    pub(crate) resource_gid: u64,
    /// Index used to name the resource (user index for user resources).
    resource_pick: u64,
    /// The stream positioned after the core draws; rendering continues from here so that the
    /// remaining fields are as deterministic as the core.
    rng: DetRng,
}

fn stream(seed: u64, workspace: &WorkspaceIdentity, key: u64) -> DetRng {
    DetRng::new(&[seed, workspace.key, key])
}

fn draw_kind(rng: &mut DetRng) -> u16 {
    let total: u64 = EVENT_TYPES.iter().map(|t| t.weight).sum();
    let mut roll = rng.below(total);
    for (index, event_type) in EVENT_TYPES.iter().enumerate() {
        if roll < event_type.weight {
            // The catalogue has far fewer than 65536 entries.
            return index as u16;
        }
        roll -= event_type.weight;
    }
    unreachable!("roll is below the sum of all weights")
}

/// Event-type index of event `key`: the first draw of its stream, so the log can store it
/// without computing the rest of the event.
pub(crate) fn event_kind(seed: u64, workspace: &WorkspaceIdentity, key: u64) -> u16 {
    draw_kind(&mut stream(seed, workspace, key))
}

/// Workspace gid as a number (for `group.gid` and workspace resources); falls back to a
/// derived value when an operator configured a non-numeric workspace id.
fn workspace_gid_number(workspace: &WorkspaceIdentity) -> u64 {
    workspace
        .gid
        .parse()
        .unwrap_or(1_200_000_000_000_000 + workspace.key % 1_000_000_000)
}

/// Size of each resource kind's gid pool. Small pools make `resource_gid` filters match
/// several events.
fn resource_pool(kind: ResourceKind) -> (u64, u64) {
    match kind {
        R::User => (USER_GID_BASE, USER_COUNT),
        R::Workspace => (0, 1),
        R::Task => (1_203_000_000_000_000, 20_000),
        R::Project => (1_202_000_000_000_000, 300),
        R::Team => (1_202_100_000_000_000, 25),
        R::Portfolio => (1_202_200_000_000_000, 30),
        R::Goal => (1_202_300_000_000_000, 40),
        R::Attachment => (1_204_000_000_000_000, 50_000),
        R::Comment => (1_205_000_000_000_000, 50_000),
        R::CustomField => (1_202_400_000_000_000, 60),
        R::App => (1_206_000_000_000_000, APP_NAMES.len() as u64),
        R::ServiceAccount => (1_206_100_000_000_000, 5),
        R::Widget => (1_207_000_000_000_000, 500),
    }
}

/// Computes the filterable core of event `key` in `workspace`.
pub(crate) fn event_core(seed: u64, workspace: &WorkspaceIdentity, key: u64) -> EventCore {
    let mut rng = stream(seed, workspace, key);
    let kind = draw_kind(&mut rng);
    let event_type = &EVENT_TYPES[usize::from(kind)];
    let user_index = rng.below(USER_COUNT);
    let actor_roll = rng.below(100);
    let actor = if event_type.name == "user_login_failed" && actor_roll < 30 {
        Actor::Other("anonymous")
    } else {
        match actor_roll {
            0..=87 => Actor::User(user_index),
            88..=92 => Actor::Other("asana"),
            93..=95 => Actor::Other("asana_support"),
            96..=97 => Actor::Other("external_administrator"),
            _ => Actor::Other("anonymous"),
        }
    };
    let (resource_gid, resource_pick) = match event_type.resource {
        // A login or logout is about the acting user themself.
        R::User
            if matches!(event_type.details, D::Login) || event_type.name == "user_logged_out" =>
        {
            let index = match actor {
                Actor::User(index) => index,
                Actor::Other(_) => rng.below(USER_COUNT),
            };
            (USER_GID_BASE + index, index)
        }
        R::Workspace => (workspace_gid_number(workspace), 0),
        kind => {
            let (base, size) = resource_pool(kind);
            let pick = rng.below(size);
            (base + pick, pick)
        }
    };
    EventCore {
        kind,
        actor,
        resource_gid,
        resource_pick,
        rng,
    }
}

const APP_NAMES: &[&str] = &[
    "Slack",
    "Zoom",
    "Google Drive",
    "Jira Cloud",
    "Microsoft Teams",
    "Salesforce",
    "Tableau",
    "Example SCIM app",
];
const TASK_NAMES: &[&str] = &[
    "Draft Q3 launch plan",
    "Review vendor contract",
    "Update onboarding checklist",
    "Fix login page copy",
    "Prepare board deck",
    "Migrate billing reports",
    "Security questionnaire for ACME",
    "Plan offsite agenda",
];
const PROJECT_NAMES: &[&str] = &[
    "Website Redesign",
    "Customer Onboarding",
    "Q3 Roadmap",
    "Hiring Pipeline",
    "Compliance Review",
    "Mobile App 2.0",
];
const TEAM_NAMES: &[&str] = &[
    "Engineering",
    "Marketing",
    "Sales",
    "Finance",
    "Legal",
    "Support",
];
const FILE_NAMES: &[&str] = &[
    "contract.pdf",
    "roadmap.xlsx",
    "screenshot.png",
    "notes.docx",
    "export.csv",
];
const OAUTH_APPS: &[&str] = &["Example SCIM app", "Zapier", "Slack", "Okta Provisioning"];
const RULE_NAMES: &[&str] = &["Move to Done on approval", "Archive stale tasks"];
const BROWSER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
];
const API_AGENTS: &[&str] = &["python-requests/2.32", "Asana/5.0.7 python", "curl/8.5.0"];

fn resource_name(kind: ResourceKind, pick: u64, workspace: &WorkspaceIdentity) -> String {
    // The table lengths are small, so the index casts cannot truncate.
    let from =
        |table: &[&str]| format!("{} #{}", table[(pick % table.len() as u64) as usize], pick);
    match kind {
        R::User => user(pick).name.clone(),
        R::Workspace => workspace.name.clone(),
        R::Task => from(TASK_NAMES),
        R::Project | R::Portfolio => from(PROJECT_NAMES),
        R::Team => TEAM_NAMES[(pick % TEAM_NAMES.len() as u64) as usize].to_string(),
        R::Goal => format!("Goal {pick}: grow retention"),
        R::Attachment => from(FILE_NAMES),
        R::Comment => format!("Comment {pick}"),
        R::CustomField => format!("Priority field {pick}"),
        R::App => APP_NAMES[pick as usize].to_string(),
        R::ServiceAccount => format!("SIEM export bot {pick}"),
        R::Widget => format!("Widget {pick}"),
    }
}

fn resource_type(kind: ResourceKind) -> &'static str {
    match kind {
        R::User => "user",
        R::Workspace => "workspace",
        R::Task => "task",
        R::Project => "project",
        R::Team => "team",
        R::Portfolio => "portfolio",
        R::Goal => "goal",
        R::Attachment => "attachment",
        R::Comment => "story",
        R::CustomField => "custom_field",
        R::App => "app",
        R::ServiceAccount => "service_account",
        R::Widget => "widget",
    }
}

/// An `AuditLogEvent` as serialised on the wire. Typed (rather than `serde_json::Value`) so
/// that pages of a million-event benchmark render without a map allocation per field; optional
/// fields are omitted when `None` unless Asana documents them as nullable.
#[derive(Debug, Serialize)]
pub(crate) struct AuditLogEvent {
    gid: String,
    created_at: String,
    event_type: &'static str,
    event_category: &'static str,
    actor: ActorJson,
    resource: ResourceJson,
    details: Details,
    context: Context,
}

#[derive(Debug, Serialize)]
struct ActorJson {
    actor_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ResourceJson {
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_subtype: Option<&'static str>,
    gid: String,
    /// Nullable: serialised as `null` when the name is gone.
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'static str>,
}

/// `details` takes a different shape per event type. Double options serialise as an explicit
/// `null` when `Some(None)`.
#[derive(Debug, Default, Serialize)]
struct Details {
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<[&'static str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    saml_response: Option<Option<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_value: Option<Option<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_value: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Group>,
    #[serde(skip_serializing_if = "Option::is_none")]
    widget_color: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    widget_count: Option<u64>,
    /// An undocumented extra key: `details` allows additional properties and consumers must
    /// pass unknown keys through.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct Group {
    gid: String,
    name: String,
    resource_type: &'static str,
}

#[derive(Debug, Default, Serialize)]
struct Context {
    context_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_authentication_method: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth_app_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule_name: Option<&'static str>,
    /// Deliberately a JSON integer, unlike every other id in the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    on_behalf_of_user_id: Option<u64>,
}

/// Renders event `key` as a full `AuditLogEvent`.
pub(crate) fn render_event(
    seed: u64,
    workspace: &WorkspaceIdentity,
    key: u64,
    gid: u64,
    created_ms: i64,
) -> AuditLogEvent {
    let core = event_core(seed, workspace, key);
    let mut rng = core.rng.clone();
    let event_type = &EVENT_TYPES[usize::from(core.kind)];
    // Field order matters for determinism: each render step continues the same stream.
    let resource = render_resource(event_type, &core, workspace, &mut rng);
    let details = render_details(event_type, workspace, &mut rng);
    let context = render_context(core.actor, &mut rng);
    AuditLogEvent {
        gid: gid.to_string(),
        created_at: format_millis(created_ms),
        event_type: event_type.name,
        event_category: event_type.category,
        actor: render_actor(core.actor),
        resource,
        details,
        context,
    }
}

/// RFC 3339 with millisecond precision and a `Z` suffix, as the Asana examples show.
pub(crate) fn format_millis(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn render_actor(actor: Actor) -> ActorJson {
    match actor {
        Actor::User(index) => {
            let user = user(index);
            ActorJson {
                actor_type: "user",
                gid: Some(&user.gid),
                name: Some(&user.name),
                email: Some(&user.email),
            }
        }
        Actor::Other(kind) => ActorJson {
            actor_type: kind,
            gid: None,
            name: None,
            email: None,
        },
    }
}

fn render_resource(
    event_type: &EventType,
    core: &EventCore,
    workspace: &WorkspaceIdentity,
    rng: &mut DetRng,
) -> ResourceJson {
    let kind = event_type.resource;
    // Deleted objects have often lost their name; `name` is nullable.
    let name_lost = event_type.category == "deletion" && rng.chance(20);
    let subtype = match kind {
        R::Task => match rng.below(100) {
            0..=14 => Some("milestone"),
            15..=19 => Some("approval"),
            20..=29 => Some("default_task"),
            _ => None,
        },
        R::CustomField => Some(*rng.pick(&["enum", "number", "text"])),
        _ => None,
    };
    ResourceJson {
        resource_type: resource_type(kind),
        resource_subtype: subtype,
        gid: core.resource_gid.to_string(),
        name: (!name_lost).then(|| resource_name(kind, core.resource_pick, workspace)),
        email: (kind == R::User).then(|| user(core.resource_pick).email.as_str()),
    }
}

fn render_details(
    event_type: &EventType,
    workspace: &WorkspaceIdentity,
    rng: &mut DetRng,
) -> Details {
    let mut details = Details::default();
    match event_type.details {
        D::Login => {
            let method = *rng.pick(&["PASSWORD", "ONE_TIME_KEY", "SAML", "GOOGLE"]);
            details.method = Some([method]);
            if method == "SAML" {
                details.saml_response = Some(None);
            }
        }
        D::Empty => {}
        D::Role => {
            let roles = ["member", "domain_admin", "super_admin"];
            let old = rng.below(3) as usize;
            let new = (old + 1 + rng.below(2) as usize) % 3;
            details.old_value = Some(Some(roles[old]));
            details.new_value = Some(roles[new]);
            details.group = Some(Group {
                gid: workspace_gid_number(workspace).to_string(),
                name: workspace.name.clone(),
                resource_type: "workspace",
            });
        }
        D::Setting => {
            // `old_value` is nullable: a setting may be set for the first time.
            let (old, new) = *rng.pick(&[
                (Some("false"), "true"),
                (Some("true"), "false"),
                (Some("12h"), "24h"),
                (None, "enabled"),
            ]);
            details.old_value = Some(old);
            details.new_value = Some(new);
        }
        D::Membership(kind) => {
            let (base, size) = resource_pool(kind);
            let pick = rng.below(size);
            details.group = Some(Group {
                gid: (base + pick).to_string(),
                name: resource_name(kind, pick, workspace),
                resource_type: resource_type(kind),
            });
            if kind == R::Project {
                details.new_value = Some(*rng.pick(&["editor", "commenter", "viewer"]));
            }
        }
        D::Privacy => {
            let levels = ["public_to_workspace", "private_to_team", "private"];
            let old = rng.below(3) as usize;
            details.old_value = Some(Some(levels[old]));
            details.new_value = Some(levels[(old + 1) % 3]);
        }
        D::App => {
            details.new_value = Some(*rng.pick(&["default", "full_permissions"]));
        }
        D::Future => {
            details.widget_color = Some(*rng.pick(&["teal", "ochre"]));
            details.widget_count = Some(rng.below(10));
        }
    }
    if rng.chance(10) {
        details.request_id = Some(format!("{:016x}", rng.next_u64()));
    }
    details
}

fn render_context(actor: Actor, rng: &mut DetRng) -> Context {
    let context_type = match actor {
        Actor::Other("asana_support") => "asana_support",
        Actor::Other("asana") => "asana",
        _ => match rng.below(100) {
            0..=49 => "web",
            50..=69 => "api",
            70..=79 => "desktop",
            80..=91 => "mobile",
            _ => "email",
        },
    };
    let mut context = Context {
        context_type,
        ..Context::default()
    };
    // Documentation-only address ranges (RFC 5737).
    if !rng.chance(5) {
        let prefix = *rng.pick(&["198.51.100", "203.0.113"]);
        context.client_ip_address = Some(format!("{prefix}.{}", 1 + rng.below(254)));
    }
    let agent = match context_type {
        "api" => Some(*rng.pick(API_AGENTS)),
        "desktop" => Some("Asana Desktop/2.3.1 (Electron)"),
        "mobile" => Some(*rng.pick(&["Asana/8.91 (iPhone; iOS 17.4)", "Asana/8.91 (Android 14)"])),
        "web" => Some(*rng.pick(BROWSER_AGENTS)),
        _ => None,
    };
    context.user_agent = agent.filter(|_| !rng.chance(5));
    if context_type == "api" {
        let method = *rng.pick(&[
            "oauth",
            "personal_access_token",
            "service_account",
            "cookie",
        ]);
        context.api_authentication_method = Some(method);
        if method == "oauth" {
            context.oauth_app_name = Some(*rng.pick(OAUTH_APPS));
        }
    }
    if context_type == "asana_support" && rng.chance(60) {
        context.on_behalf_of_user_id = Some(USER_GID_BASE + rng.below(USER_COUNT));
    }
    if rng.chance(2) {
        context.rule_name = Some(*rng.pick(RULE_NAMES));
    }
    context
}
