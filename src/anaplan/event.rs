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
use crate::enrich::{enrichment_of, found, Users};
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

/// The user ids a record names (its actor, and its object when the code
/// says the object is a user), for the enricher; `INTERNAL_*` are not
/// users. A record that does not parse names none (it is quarantined).
pub fn named_users(raw: &RawValue) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Names<'a> {
        #[serde(rename = "userId", borrow, default)]
        user: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "objectId", borrow, default)]
        object: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "eventTypeId", borrow, default)]
        code: Option<std::borrow::Cow<'a, str>>,
    }
    let Ok(names) = serde_json::from_str::<Names<'_>>(raw.get()) else {
        return Vec::new();
    };
    let object_is_user = names
        .code
        .as_deref()
        .and_then(catalog::lookup)
        .is_some_and(|i| i.object == ObjectKind::User);
    let mut ids: Vec<String> = Vec::with_capacity(2);
    let object = names.object.filter(|_| object_is_user);
    for id in [names.user, object].into_iter().flatten() {
        if !id.is_empty() && !is_internal(&id) && !ids.iter().any(|known| *known == *id) {
            ids.push(id.into_owned());
        }
    }
    ids
}

/// Reads `raw` into an outbox entry, or says why it cannot be read.
/// `users` holds the enricher's answers (`None`: enrichment is off).
pub fn to_outbox(
    raw: &RawValue,
    origin: Origin<'_>,
    observed_at: &str,
    users: Option<&Users>,
) -> Result<Parsed, String> {
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
    let mut users_list = Vec::new();
    users_list.extend(user.filter(|u| !is_internal(u)).map(str::to_string));
    if object_is_user {
        if let Some(object) = object.filter(|o| !is_internal(o)) {
            if !users_list.iter().any(|u| u == object) {
                users_list.push(object.to_string());
            }
        }
    }
    let named: Vec<&str> = users_list.iter().map(String::as_str).collect();
    let enrichment = enrichment_of(users, &named);
    let actor_info = found(users, user);
    let target_info = found(users, object.filter(|_| object_is_user));
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
        observed_at,
        event_type: code,
        category: info.map(|i| i.category.as_str()),
        outcome,
        actor: user.map(|u| Party {
            kind: Some(if is_internal(u) { "system" } else { "user" }),
            id: Some(u),
            name: actor_info.and_then(|i| i.name.as_deref()),
            email: actor_info.and_then(|i| i.email.as_deref()),
            ..Party::default()
        }),
        target: object.map(|o| Party {
            kind: info.map(|i| i.object.as_str()),
            id: Some(o),
            name: target_info.and_then(|i| i.name.as_deref()),
            email: target_info.and_then(|i| i.email.as_deref()),
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
        enrichment,
        gap: None,
        raw: raw_value,
    };
    let payload = envelope.to_json().map_err(|e| e.to_string())?;
    Ok(Parsed {
        event: NewEvent {
            event_id: id,
            event_time: event_date,
            payload,
        },
        users: users_list,
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
        observed_at,
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
        let parsed = to_outbox(
            &raw,
            Origin { source_id: "ap" },
            "2026-01-01T00:00:00.000Z",
            None,
        )?;
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

    #[test]
    fn users_are_named_and_enriched_from_the_lookups() {
        use crate::enrich::{Resolution, UserInfo};
        let json = r#"{"id": 7, "eventTypeId": "USR-29", "userId": "aa", "objectId": "bb", "eventDate": 1}"#;
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        assert_eq!(named_users(&raw), ["aa", "bb"]);
        let mut users = Users::new();
        users.insert(
            "aa".into(),
            Resolution::Found(UserInfo {
                name: Some("Ada".into()),
                email: Some("ada@example.com".into()),
            }),
        );
        users.insert("bb".into(), Resolution::Unknown);
        let parsed = to_outbox(&raw, Origin { source_id: "ap" }, "x", Some(&users)).unwrap();
        let v: Value = serde_json::from_str(&parsed.event.payload).unwrap();
        assert_eq!(v["actor"]["email"], "ada@example.com");
        assert_eq!(v["actor"]["name"], "Ada");
        assert!(v["target"].get("email").is_none());
        assert_eq!(v["enrichment"], "user_unknown");
        users.insert("bb".into(), Resolution::Unavailable);
        let parsed = to_outbox(&raw, Origin { source_id: "ap" }, "x", Some(&users)).unwrap();
        let v: Value = serde_json::from_str(&parsed.event.payload).unwrap();
        assert_eq!(v["enrichment"], "not_enriched");
        // A model object is not a user.
        let raw: Box<RawValue> = serde_json::from_str(r#"{"id": 8, "eventTypeId": "USR-13", "userId": "aa", "objectId": "m1", "eventDate": 1}"#).unwrap();
        assert_eq!(named_users(&raw), ["aa"]);
    }
}
