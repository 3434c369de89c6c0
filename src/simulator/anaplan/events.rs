//! Deterministic generation of Anaplan audit events.
//!
//! Every event is a pure function of `(seed, tenant, key, eventDate, createdDate)`: the store
//! keeps only those (plus the id and code), and the JSON is rendered on demand. The first
//! draws of an event's stream are its code and its storage delay, so the store can know both
//! without rendering the rest.

use std::fmt::Write as _;
use std::sync::LazyLock;

use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::directory::Directory;
use crate::anaplan::catalog::{self, Category, ObjectKind};
use crate::simulator::events::{mix64, string_key, DetRng};

/// What an event's `objectId` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    /// The acting user (logins, logouts, session time-outs).
    Actor,
    /// Another user of the directory (possibly deleted).
    User,
    Model,
    Process,
    /// A connection configuration (`con_<base62>`).
    Connection,
    /// A CloudWorks integration (32 hex).
    Integration,
    /// No `objectId` at all.
    Absent,
}

/// Which `additionalAttributes` an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attributes {
    Login,
    Model,
    Role,
    Action,
    Export,
    Import,
    Comment,
    Empty,
}

/// One event code the generator draws from.
#[derive(Debug)]
pub(crate) struct Code {
    pub(crate) id: &'static str,
    message: &'static str,
    object: Object,
    /// `None`: the record has no `success`, `ipAddress` or `userAgent` (old BYOK records).
    success: Option<bool>,
    attributes: Attributes,
    /// Relative frequency among the catalog codes.
    weight: u64,
}

/// Codes the catalog does not know: other families (their `type` filters select them) and a
/// `USR-*` code newer than the catalog.
const UNKNOWN_CODES: &[(&str, &str, Object, Option<bool>, Attributes)] = &[
    (
        "AUTHZ-3",
        "Role Assigned",
        Object::User,
        Some(true),
        Attributes::Role,
    ),
    (
        "AUTHZ-2",
        "Access denied",
        Object::Model,
        Some(false),
        Attributes::Empty,
    ),
    (
        "CONN-1",
        "Connection configuration created",
        Object::Connection,
        Some(true),
        Attributes::Empty,
    ),
    (
        "INT-01",
        "Connection created",
        Object::Integration,
        Some(true),
        Attributes::Empty,
    ),
    (
        "PIQ-01",
        "Data collection created",
        Object::Model,
        Some(true),
        Attributes::Model,
    ),
    (
        "COMMENT-1",
        "Comment created",
        Object::Model,
        Some(true),
        Attributes::Comment,
    ),
    (
        "DSM-DAO0267I",
        "user logged in",
        Object::Absent,
        None,
        Attributes::Empty,
    ),
    (
        "USR-60",
        "User activity",
        Object::User,
        Some(true),
        Attributes::Empty,
    ),
];

/// Relative frequency of a catalog code: logins, model and dashboard access dominate.
fn catalog_weight(code: &str) -> u64 {
    match code {
        "USR-8" => 300,
        "USR-13" => 200,
        "USR-10" | "USR-19" => 120,
        "USR-20" => 60,
        "USR-12" => 40,
        "USR-9" | "USR-41" => 30,
        "USR-32" | "USR-36" => 15,
        "USR-51" | "USR-52" => 10,
        _ => 3,
    }
}

/// Every code: the catalog's in CSV order, then [`UNKNOWN_CODES`].
static CODES: LazyLock<Vec<Code>> = LazyLock::new(|| {
    let known = catalog::all().iter().map(|info| {
        let object = match info.object {
            ObjectKind::User
                if info.object_detail.starts_with("user login")
                    || info.object_detail.starts_with("user logout")
                    || info.object_detail.starts_with("user (who timed out)") =>
            {
                Object::Actor
            }
            ObjectKind::User => Object::User,
            ObjectKind::Model => Object::Model,
            ObjectKind::Process => Object::Process,
        };
        let lower = info.name.to_ascii_lowercase();
        let attributes = match info.category {
            Category::Authentication => Attributes::Login,
            Category::Access if lower.contains("role") => Attributes::Role,
            Category::Access if info.object == ObjectKind::Model => Attributes::Model,
            Category::Administration => Attributes::Action,
            Category::DataMovement if lower.contains("export") => Attributes::Export,
            Category::DataMovement => Attributes::Import,
            Category::Access | Category::AccountLifecycle => Attributes::Empty,
        };
        Code {
            id: info.code,
            message: info.name,
            object,
            success: Some(!info.is_failure()),
            attributes,
            weight: catalog_weight(info.code),
        }
    });
    let unknown = UNKNOWN_CODES
        .iter()
        .map(|&(id, message, object, success, attributes)| Code {
            id,
            message,
            object,
            success,
            attributes,
            weight: 1,
        });
    known.chain(unknown).collect()
});

/// Index of the first unknown code in [`CODES`].
fn first_unknown() -> usize {
    catalog::all().len()
}

/// The code with this index.
pub(crate) fn code(index: u16) -> &'static Code {
    &CODES[usize::from(index)]
}

/// Index of the first code whose id starts with `prefix`.
pub(crate) fn first_code_with_prefix(prefix: &str) -> Option<u16> {
    CODES
        .iter()
        .position(|code| code.id.starts_with(prefix))
        .and_then(|index| u16::try_from(index).ok())
}

/// Maps a `type` filter to the `eventTypeId` prefix it selects; `None` means every event
/// (`all`, and any value the API does not know, which it treats as `all`).
pub(crate) fn type_prefix(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "user_activity" => "USR-",
        "access_control" => "AUTHZ-",
        "int" => "INT-",
        "conn_mgmt" => "CONN-",
        "comment" => "COMMENT-",
        "plan_iq" => "PIQ-",
        // Assumed: no forecaster code is documented, so nothing generated matches.
        "forecaster" => "FCST-",
        "byok" => "DSM-",
        _ => return None,
    })
}

/// Parts per million, for deterministic draws.
fn ppm(share: f64) -> u64 {
    (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u64
}

/// Random-looking 32-hex id with Anaplan's usual `8a81b0` prefix.
pub(crate) fn hex_id(seed: u64, kind: &str, index: u64) -> String {
    let a = mix64(seed ^ string_key(kind) ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let b = mix64(a ^ 0x5851_F42D_4C95_7F2D);
    format!("8a81b0{:010x}{:016x}", a & 0xff_ffff_ffff, b)
}

const MODELS: u64 = 30;
const WORKSPACES: u64 = 5;
const PROCESSES: u64 = 50;
const ACTIONS: u64 = 80;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "AnaplanConnect/4.3.0",
    "python-httpx/0.27.0",
];
const CLIENTS: &[&str] = &["Anaplan UX", "Anaplan Connect", "Anaplan API", "CloudWorks"];
const ROLES: &[&str] = &["Full Access", "Planner", "Viewer", "No Access"];
const ACTION_NAMES: &[&str] = &[
    "Import Actuals",
    "Export Forecast",
    "Refresh Hierarchy",
    "Run Monthly Close",
];

/// Per-tenant event generator.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    seed: u64,
    tenant_key: u64,
    unknown_ppm: u64,
    late_ppm: u64,
    max_late_ms: u64,
    internal_ppm: u64,
    catalog_weight_total: u64,
}

/// What the store needs of an event without rendering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) code: u16,
    /// `createdDate - eventDate` for timeline events.
    pub(crate) delay_ms: i64,
}

impl Generator {
    pub(crate) fn new(
        seed: u64,
        tenant_id: &str,
        unknown_share: f64,
        late_share: f64,
        max_late_ms: u64,
        internal_share: f64,
    ) -> Self {
        Self {
            seed,
            tenant_key: string_key(tenant_id),
            unknown_ppm: ppm(unknown_share),
            late_ppm: ppm(late_share),
            max_late_ms,
            internal_ppm: ppm(internal_share),
            catalog_weight_total: CODES[..first_unknown()].iter().map(|c| c.weight).sum(),
        }
    }

    fn stream(&self, key: u64) -> DetRng {
        DetRng::new(&[self.seed, self.tenant_key, key])
    }

    fn draw_head(&self, rng: &mut DetRng) -> Head {
        let code = if rng.below(1_000_000) < self.unknown_ppm {
            first_unknown() + rng.below(UNKNOWN_CODES.len() as u64) as usize
        } else {
            let mut roll = rng.below(self.catalog_weight_total);
            let mut index = 0;
            for (i, code) in CODES[..first_unknown()].iter().enumerate() {
                if roll < code.weight {
                    index = i;
                    break;
                }
                roll -= code.weight;
            }
            index
        };
        let late = rng.below(1_000_000) < self.late_ppm;
        let spread = rng.next_u64();
        let delay_ms = if late && self.max_late_ms > 1000 {
            1000 + spread % (self.max_late_ms - 999)
        } else {
            spread % 2001
        };
        Head {
            // Fewer than 65536 codes exist.
            code: code as u16,
            delay_ms: i64::try_from(delay_ms).unwrap_or(i64::MAX),
        }
    }

    /// Code and storage delay of event `key`.
    pub(crate) fn head(&self, key: u64) -> Head {
        self.draw_head(&mut self.stream(key))
    }

    /// Renders event `key`.
    pub(crate) fn render(
        &self,
        directory: &Directory,
        tenant_id: &str,
        key: u64,
        id: u64,
        event_ms: i64,
        created_ms: i64,
    ) -> AnaplanEvent {
        let mut rng = self.stream(key);
        let head = self.draw_head(&mut rng);
        let code = code(head.code);
        let seed = self.seed;
        let pool = directory.pool_size() as u64;
        let user_id = if rng.below(1_000_000) < self.internal_ppm {
            format!("INTERNAL_{}", 100 + rng.below(20))
        } else {
            directory.pool_user(rng.below(pool)).id.clone()
        };
        let model = rng.below(MODELS);
        let object_id = match code.object {
            Object::Actor => Some(user_id.clone()),
            Object::User => Some(directory.pool_user(rng.below(pool)).id.clone()),
            Object::Model => Some(hex_id(seed, "model", model)),
            Object::Process => Some(hex_id(seed, "process", rng.below(PROCESSES))),
            Object::Integration => Some(hex_id(seed, "integration", rng.below(20))),
            Object::Connection => {
                let mut value = rng.next_u64();
                let mut id = String::from("con_");
                for _ in 0..11 {
                    id.push(char::from(BASE62[(value % 62) as usize]));
                    value /= 62;
                }
                Some(id)
            }
            Object::Absent => None,
        };
        let legacy = code.success.is_none();
        let ip_address = (!legacy).then(|| match code.id {
            "USR-13" => "NA".to_string(),
            _ if user_id.starts_with("INTERNAL_") => "127.0.0.1".to_string(),
            _ => {
                let net = rng.pick(&["203.0.113", "198.51.100", "192.0.2"]);
                format!("{net}.{}", 1 + rng.below(254))
            }
        });
        let user_agent = (!legacy).then(|| match code.id {
            "USR-14" => "NA",
            _ => rng.pick(AGENTS),
        });
        let success = code.success;
        let error_number = match success {
            Some(false) => Some(
                if rng.chance(50) {
                    ""
                } else {
                    rng.pick(&["401", "403", "AUTH-1002"])
                }
                .to_string(),
            ),
            _ => None,
        };
        let optional_roll = rng.below(100);
        let object_type_id = (optional_roll < 10).then_some("");
        let object_tenant_id = match optional_roll {
            10..=29 => Some(tenant_id.to_string()),
            30..=34 => Some(String::new()),
            _ => None,
        };
        let session_id = (rng.below(100) < 3).then(|| hex_id(seed, "session", rng.next_u64()));
        let host_name = if rng.below(100) < 3 {
            ""
        } else {
            *rng.pick(&["us1a.app.anaplan.com", "us1a.app2.anaplan.com"])
        };
        let checksum = if rng.below(100) < 10 {
            let mut hex = String::with_capacity(64);
            for _ in 0..4 {
                let _ = write!(hex, "{:016x}", rng.next_u64());
            }
            hex
        } else {
            (rng.next_u64() % 4_294_967_296).to_string()
        };
        let additional_attributes = if rng.below(1000) < 10 {
            Value::Null
        } else {
            let workspace = hex_id(seed, "workspace", model % WORKSPACES);
            let mut map = Map::new();
            match code.attributes {
                Attributes::Login => {
                    map.insert("clientName".into(), json!(rng.pick(CLIENTS)));
                }
                Attributes::Model => {
                    map.insert("workspaceId".into(), json!(workspace));
                    map.insert("modelId".into(), json!(hex_id(seed, "model", model)));
                    map.insert(
                        "modelAccessLevel".into(),
                        json!(rng.pick(&["READ", "WRITE"])),
                    );
                }
                Attributes::Role => {
                    let role = rng.below(ROLES.len() as u64);
                    map.insert("workspaceId".into(), json!(workspace));
                    map.insert("modelId".into(), json!(hex_id(seed, "model", model)));
                    map.insert("modelRoleName".into(), json!(ROLES[role as usize]));
                    map.insert("modelRoleId".into(), json!(hex_id(seed, "role", role)));
                }
                Attributes::Action | Attributes::Export | Attributes::Import => {
                    let action = rng.below(ACTIONS);
                    map.insert("workspaceId".into(), json!(workspace));
                    map.insert("modelId".into(), json!(hex_id(seed, "model", model)));
                    map.insert(
                        "actionId".into(),
                        json!(format!("{}", 118_000_000_000 + action)),
                    );
                    map.insert(
                        "actionName".into(),
                        json!(ACTION_NAMES[(action % ACTION_NAMES.len() as u64) as usize]),
                    );
                    if code.attributes != Attributes::Action {
                        map.insert(
                            "type".into(),
                            json!(if code.attributes == Attributes::Export {
                                "EXPORT"
                            } else {
                                "IMPORT"
                            }),
                        );
                    }
                }
                Attributes::Comment => {
                    map.insert("modelId".into(), json!(hex_id(seed, "model", model)));
                    map.insert("nux_visible".into(), json!(rng.chance(50)));
                }
                Attributes::Empty => {}
            }
            Value::Object(map)
        };
        AnaplanEvent {
            id,
            event_type_id: code.id,
            user_id,
            tenant_id: tenant_id.to_string(),
            object_id,
            object_type_id,
            object_tenant_id,
            message: code.message,
            success,
            error_number,
            ip_address,
            user_agent,
            session_id,
            host_name,
            service_version: legacy.then_some("6.0.0.3050"),
            event_date: event_ms,
            event_time_zone: "UTC",
            created_date: created_ms,
            created_time_zone: "UTC",
            checksum,
            additional_attributes,
        }
    }
}

/// An audit event as serialised on the wire. `id` is a `u64`, written by serde_json as an
/// exact integer (never through f64). Optional fields are left out when `None`;
/// `additionalAttributes` is always present, sometimes `null`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AnaplanEvent {
    pub(crate) id: u64,
    pub(crate) event_type_id: &'static str,
    pub(crate) user_id: String,
    tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) object_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_type_id: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_tenant_id: Option<String>,
    message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    host_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_version: Option<&'static str>,
    pub(crate) event_date: i64,
    event_time_zone: &'static str,
    pub(crate) created_date: i64,
    created_time_zone: &'static str,
    checksum: String,
    additional_attributes: Value,
}

impl AnaplanEvent {
    /// One CEF line as Anaplan's `Accept: text/plain` output has it: values unescaped.
    pub(crate) fn to_cef(&self) -> String {
        let time = DateTime::from_timestamp_millis(self.event_date)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default();
        let mut line = format!(
            "{time}  CEF:0|Anaplan, Inc.|{}|null|{}|{}|id={} userId={} tenantId={} \
             eventTimeZone={} createdDate={} createdTimeZone={}",
            self.host_name,
            self.event_type_id,
            self.message,
            self.id,
            self.user_id,
            self.tenant_id,
            self.event_time_zone,
            self.created_date,
            self.created_time_zone,
        );
        if let Some(success) = self.success {
            let _ = write!(line, " success={success}");
        }
        if let Some(object_id) = &self.object_id {
            let _ = write!(line, " objectId={object_id}");
        }
        let _ = write!(line, " additionalAttributes={}", self.additional_attributes);
        if let Some(ip) = &self.ip_address {
            let _ = write!(line, " ipAddress={ip}");
        }
        if let Some(agent) = self.user_agent {
            let _ = write!(line, " userAgent={agent}");
        }
        let _ = write!(line, " checksum={}", self.checksum);
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator(unknown: f64, late: f64) -> Generator {
        Generator::new(
            7,
            "8a81b09a5e1f2a3b015e1f2a3b4c0002",
            unknown,
            late,
            600_000,
            0.05,
        )
    }

    #[test]
    fn codes_cover_the_catalog_and_unknown_families() {
        assert_eq!(CODES.len(), catalog::all().len() + UNKNOWN_CODES.len());
        for code in &CODES[first_unknown()..] {
            assert!(catalog::lookup(code.id).is_none(), "{}", code.id);
        }
        assert_eq!(type_prefix("user_activity"), Some("USR-"));
        assert_eq!(type_prefix("access_control"), Some("AUTHZ-"));
        assert_eq!(type_prefix("all"), None);
        assert_eq!(type_prefix("no_such_type"), None);
        let login = CODES.iter().find(|c| c.id == "USR-8").unwrap();
        assert_eq!(login.object, Object::Actor);
        assert_eq!(login.success, Some(true));
        let failure = CODES.iter().find(|c| c.id == "USR-9").unwrap();
        assert_eq!(failure.success, Some(false));
    }

    #[test]
    fn heads_follow_the_shares_and_are_deterministic() {
        let g = generator(0.1, 0.2);
        let heads: Vec<Head> = (0..5000).map(|k| g.head(k)).collect();
        assert_eq!(heads, (0..5000).map(|k| g.head(k)).collect::<Vec<_>>());
        let unknown = heads
            .iter()
            .filter(|h| usize::from(h.code) >= first_unknown())
            .count();
        assert!((350..650).contains(&unknown), "{unknown}");
        let late = heads.iter().filter(|h| h.delay_ms > 2000).count();
        assert!((800..1200).contains(&late), "{late}");
        assert!(heads.iter().all(|h| (0..=600_000).contains(&h.delay_ms)));
        let none = generator(0.0, 0.0);
        assert!((0..2000).all(|k| {
            let h = none.head(k);
            usize::from(h.code) < first_unknown() && h.delay_ms <= 2000
        }));
    }

    #[test]
    fn hex_ids_look_like_anaplan_ids() {
        let id = hex_id(1, "model", 3);
        assert_eq!(id.len(), 32);
        assert!(id.starts_with("8a81b0"));
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, hex_id(1, "model", 4));
        assert_ne!(id, hex_id(1, "process", 3));
    }
}
