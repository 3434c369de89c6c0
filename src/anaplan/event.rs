//! One Anaplan audit record → one envelope.
//!
//! Records are read leniently (audit-apis.md §1.7): only `id` (an unsigned
//! integer, never through f64, or a string of digits) and `eventDate` (Unix
//! ms) are required; every other field may be missing, null or of another
//! type, and unknown fields are kept in `raw`. The event code is looked up
//! in the catalog; an unknown code passes through marked `known: false`.

use serde_json::value::RawValue;
use serde_json::Value;

use super::catalog::{self, ObjectKind};
use crate::envelope::{
    compact_json, format_time, CodeInfo, Envelope, Gap, Outcome, Party, SourceRef,
};
use crate::state::NewEvent;

/// What a source stamps on each of its events.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source_id: &'a str,
}

/// A record read far enough to be stored.
#[derive(Debug)]
pub struct Parsed {
    pub event: NewEvent,
    /// The user ids it names (actor, and the object when it is a user).
    pub users: Vec<String>,
}

/// Reads `raw` into an outbox entry, or says why it cannot be read.
pub fn to_outbox(raw: &RawValue, origin: Origin<'_>, observed_at: &str) -> Result<Parsed, String> {
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(record) = &value else {
        return Err("not a JSON object".to_string());
    };
    let id = match record.get("id") {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|n| n.to_string())
            .ok_or_else(|| format!("`id` {n} is not an unsigned integer"))?,
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.clone()
        }
        Some(other) => return Err(format!("`id` is not an integer: {other}")),
        None => return Err("no `id`".to_string()),
    };
    let event_date = record
        .get("eventDate")
        .and_then(Value::as_i64)
        .ok_or_else(|| "no integer `eventDate`".to_string())?;
    let text = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let code = text("eventTypeId");
    let info = code.and_then(catalog::lookup);
    let user = text("userId");
    let object = text("objectId");
    let outcome = match record.get("success").and_then(Value::as_bool) {
        Some(true) => Outcome::Success,
        Some(false) => Outcome::Failure,
        None if info.is_some_and(|i| i.is_failure()) => Outcome::Failure,
        None => Outcome::Unknown,
    };
    let object_is_user = info.is_some_and(|i| i.object == ObjectKind::User);
    let mut users = Vec::new();
    users.extend(user.filter(|u| !is_internal(u)).map(str::to_string));
    if object_is_user {
        if let Some(object) = object.filter(|o| !is_internal(o)) {
            if !users.iter().any(|u| u == object) {
                users.push(object.to_string());
            }
        }
    }
    let compact = compact_json(raw.get());
    let raw_value: &RawValue = serde_json::from_str(&compact).map_err(|e| e.to_string())?;
    let envelope = Envelope {
        envelope_version: crate::envelope::ENVELOPE_VERSION,
        source: SourceRef {
            kind: "anaplan",
            id: origin.source_id,
            tenant: text("tenantId").unwrap_or(""),
        },
        id: &id,
        time: format_time(event_date),
        observed_at: observed_at.to_string(),
        event_type: code,
        category: info.map(|i| i.category.as_str()),
        outcome,
        actor: user.map(|u| Party {
            kind: Some(if is_internal(u) { "system" } else { "user" }),
            id: Some(u),
            ..Party::default()
        }),
        target: object.map(|o| Party {
            kind: info.map(|i| i.object.as_str()),
            id: Some(o),
            ..Party::default()
        }),
        client: (text("ipAddress").is_some() || text("userAgent").is_some()).then(|| {
            crate::envelope::Client {
                ip: text("ipAddress"),
                user_agent: text("userAgent"),
                ..crate::envelope::Client::default()
            }
        }),
        code: code.map(|code| CodeInfo {
            id: code,
            known: info.is_some(),
            name: info.map(|i| i.name),
            object: info.map(|i| i.object.as_str()),
            category: info.map(|i| i.category.as_str()),
        }),
        enrichment: None,
        gap: None,
        raw: raw_value,
    };
    let payload = serde_json::to_string(&envelope).map_err(|e| e.to_string())?;
    Ok(Parsed {
        event: NewEvent {
            event_id: id,
            event_time: event_date,
            payload,
        },
        users,
    })
}

/// System actors (`INTERNAL_*`): never a user to look up.
pub fn is_internal(id: &str) -> bool {
    id.starts_with("INTERNAL_")
}

/// A gap marker: nothing could be read in `[from, to)` because the API no
/// longer keeps it. Delivered like an event, so the SIEM sees the hole.
pub fn gap_marker(origin: Origin<'_>, from: i64, to: i64, observed_at: &str) -> NewEvent {
    let id = format!("gap-{}-{from}-{to}", origin.source_id);
    let raw =
        serde_json::value::to_raw_value(&serde_json::json!({"gap": {"from": from, "to": to}}))
            .unwrap_or_default();
    let raw_value: &RawValue = &raw;
    let envelope = Envelope {
        envelope_version: crate::envelope::ENVELOPE_VERSION,
        source: SourceRef {
            kind: "anaplan",
            id: origin.source_id,
            tenant: "",
        },
        id: &id,
        time: format_time(to),
        observed_at: observed_at.to_string(),
        event_type: Some("auditrelay.gap"),
        category: None,
        outcome: Outcome::Unknown,
        actor: None,
        target: None,
        client: None,
        code: None,
        enrichment: None,
        gap: Some(Gap {
            from: format_time(from),
            to: format_time(to),
            reason: "the source was behind by more than anaplan's 30-day retention; events in this span are lost upstream".to_string(),
        }),
        raw: raw_value,
    };
    NewEvent {
        event_id: id.clone(),
        event_time: to,
        payload: serde_json::to_string(&envelope).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(json: &str) -> Result<(Parsed, Value), String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let parsed = to_outbox(&raw, Origin { source_id: "ap" }, "2026-01-01T00:00:00.000Z")?;
        let value = serde_json::from_str(&parsed.event.payload).unwrap();
        Ok((parsed, value))
    }

    #[test]
    fn a_record_becomes_an_envelope_with_its_catalog_entry_and_exact_id() {
        let (parsed, v) = build(r#"{"id": 9007199254740993, "eventTypeId": "USR-8", "userId": "8a81b01c7a1e4f5a017a2b3c4d5e0001", "tenantId": "t1", "objectId": "8a81b01c7a1e4f5a017a2b3c4d5e0001", "message": "User login success", "success": true, "ipAddress": "203.0.113.10", "eventDate": 1767225601000, "additionalAttributes": null}"#).unwrap();
        assert_eq!(parsed.event.event_id, "9007199254740993");
        assert_eq!(v["id"], "9007199254740993");
        assert!(parsed
            .event
            .payload
            .contains(r#""raw":{"id":9007199254740993,"#));
        assert_eq!(v["source"]["kind"], "anaplan");
        assert_eq!(v["source"]["tenant"], "t1");
        assert_eq!(v["type"], "USR-8");
        assert_eq!(v["code"]["known"], true);
        assert_eq!(v["code"]["category"], "authentication");
        assert_eq!(v["category"], "authentication");
        assert_eq!(v["outcome"], "success");
        assert_eq!(v["actor"]["type"], "user");
        assert_eq!(v["client"]["ip"], "203.0.113.10");
        assert_eq!(parsed.users, ["8a81b01c7a1e4f5a017a2b3c4d5e0001"]);
    }

    #[test]
    fn unknown_codes_pass_through_and_internal_actors_are_not_users() {
        let (parsed, v) =
            build(r#"{"id": 5, "eventTypeId": "ZZZ-1", "userId": "INTERNAL_42", "eventDate": 1}"#)
                .unwrap();
        assert_eq!(v["code"]["id"], "ZZZ-1");
        assert_eq!(v["code"]["known"], false);
        assert!(v["code"].get("name").is_none());
        assert_eq!(v["actor"]["type"], "system");
        assert!(parsed.users.is_empty());
    }

    #[test]
    fn unreadable_records_say_why() {
        assert!(build(r#"{"id": 1.5e17, "eventDate": 1}"#)
            .unwrap_err()
            .contains("`id`"));
        assert!(build(r#"{"id": -3, "eventDate": 1}"#)
            .unwrap_err()
            .contains("`id`"));
        assert!(build(r#"{"id": 3}"#).unwrap_err().contains("eventDate"));
        assert!(build(r#"[1]"#).unwrap_err().contains("object"));
        // Wrong types of optional fields are tolerated.
        assert!(build(r#"{"id": "12", "eventDate": 1, "success": "yes", "userId": 7}"#).is_ok());
    }

    #[test]
    fn a_gap_marker_names_its_span() {
        let marker = gap_marker(Origin { source_id: "ap" }, 1_000, 2_000, "x");
        let v: Value = serde_json::from_str(&marker.payload).unwrap();
        assert_eq!(v["type"], "auditrelay.gap");
        assert_eq!(v["gap"]["from"], "1970-01-01T00:00:01.000Z");
        assert_eq!(marker.event_id, "gap-ap-1000-2000");
    }
}
