//! Turning one Asana `AuditLogEvent` into an envelope.
//!
//! Parsing is lenient about everything but the two fields the pipeline
//! cannot work without: `gid` (the dedup key) and `created_at` (the cursor's
//! time). Unknown fields, unknown event types and `null` where an object was
//! expected all pass; a record without a usable id or time is quarantined by
//! the caller with the reason returned here.
//!
//! Enrichment: [`named_users`] lists the user ids an event names (a user
//! actor, a user resource); the source resolves them and hands the answers
//! to [`to_outbox`], which fills in `name` and `email` (the directory's
//! value where it has one, else the event's own) and sets `enrichment`.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::{self, Client, Envelope, Outcome, Party, SourceRef};
use crate::state::NewEvent;

/// The fields of an `AuditLogEvent` the envelope uses; everything else stays
/// in `raw` only.
#[derive(Debug, Deserialize)]
struct AuditLogEvent<'a> {
    #[serde(borrow)]
    gid: Option<Id<'a>>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_category: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    actor: Lenient<Actor<'a>>,
    #[serde(borrow, default)]
    resource: Lenient<Resource<'a>>,
    #[serde(borrow, default)]
    context: Lenient<Context<'a>>,
}

/// Asana ids are numeric strings; accept a bare number too. (`Cow`
/// everywhere: a string with JSON escapes cannot be borrowed.)
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Id<'a> {
    Str(#[serde(borrow)] Cow<'a, str>),
    Num(u64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Actor<'a> {
    #[serde(borrow)]
    actor_type: Text<'a>,
    #[serde(borrow)]
    gid: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    email: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resource<'a> {
    #[serde(borrow)]
    resource_type: Text<'a>,
    #[serde(borrow)]
    resource_subtype: Text<'a>,
    #[serde(borrow)]
    gid: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    #[serde(borrow)]
    email: Text<'a>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Context<'a> {
    #[serde(borrow)]
    context_type: Text<'a>,
    #[serde(borrow)]
    api_authentication_method: Text<'a>,
    #[serde(borrow)]
    client_ip_address: Text<'a>,
    #[serde(borrow)]
    user_agent: Text<'a>,
    #[serde(borrow)]
    oauth_app_name: Text<'a>,
}

/// Visitor methods that read a number, a boolean, `null` or an array (its
/// elements skipped) as `$absent`.
macro_rules! absent_values {
    ($absent:expr) => {
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok($absent)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($absent)
        }
    };
}

/// An object field that is the wrong shape (a string, a number, an array
/// where an object was expected) reads as absent instead of failing the
/// record: the original is in `raw` anyway. Decided on the JSON value's
/// own type as it streams by, so nothing is buffered (serde's untagged
/// enums copy the whole value first).
#[derive(Debug)]
struct Lenient<T>(Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Lenient<T> {
    fn as_ref(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                // The objects read this way have only `Text` fields, which
                // take any value. What still fails is an object that is not
                // one (a key given twice): the record is quarantined with
                // the reason, as it is for a key twice at the top level.
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|v| Lenient(Some(v)))
            }
            absent_values!(Lenient(None));
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// A string field of a nested object; any other value (a number, an
/// object) reads as absent. Borrowed from the page unless it has escapes.
#[derive(Debug, Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Text(None))
            }
            absent_values!(Text(None));
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

pub use crate::enrich::Users;
use crate::enrich::{enrichment_of, found};

/// The actor's gid when the actor is a user.
fn actor_user<'x>(actor: Option<&'x Actor<'_>>) -> Option<&'x str> {
    let actor = actor?;
    if actor.actor_type.as_deref() != Some("user") {
        return None;
    }
    actor.gid.as_deref().filter(|gid| !gid.trim().is_empty())
}

/// The resource's gid when the resource is a user.
fn resource_user<'x>(resource: Option<&'x Resource<'_>>) -> Option<&'x str> {
    let resource = resource?;
    if resource.resource_type.as_deref() != Some("user") {
        return None;
    }
    resource.gid.as_deref().filter(|gid| !gid.trim().is_empty())
}

/// One record read once, for both [`Parsed::named_users`] (before the
/// lookups) and [`Parsed::to_outbox`] (after them); borrows from the page.
#[derive(Debug)]
pub struct Parsed<'a> {
    raw: &'a RawValue,
    event: Result<AuditLogEvent<'a>, String>,
}

/// Reads one record of a page.
pub fn parse(raw: &RawValue) -> Parsed<'_> {
    Parsed {
        raw,
        event: serde_json::from_str(raw.get()).map_err(|e| format!("not an audit log event: {e}")),
    }
}

impl Parsed<'_> {
    /// The user ids it names (actor, target), for the enricher. A record
    /// that does not parse names none (it is quarantined anyway).
    pub fn named_users(&self) -> impl Iterator<Item = &str> {
        let (actor, target) = match &self.event {
            Ok(event) => (
                actor_user(event.actor.as_ref()),
                resource_user(event.resource.as_ref()),
            ),
            Err(_) => (None, None),
        };
        actor
            .into_iter()
            .chain(target.filter(|t| Some(*t) != actor))
    }

    /// Builds its outbox entry, or says why it cannot. `users`: the
    /// enricher's answers for the page (`None`: enrichment off).
    pub fn to_outbox(
        &self,
        origin: Origin<'_>,
        observed_at: &str,
        users: Option<&Users>,
    ) -> Result<NewEvent, String> {
        match &self.event {
            Ok(event) => map(self.raw, event, origin, observed_at, users),
            Err(reason) => Err(reason.clone()),
        }
    }
}

/// The user ids a record names (actor, target): [`Parsed::named_users`]
/// of a record read on its own.
pub fn named_users(raw: &RawValue) -> Vec<String> {
    parse(raw).named_users().map(str::to_string).collect()
}

/// Where an event came from, for its envelope.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub source_id: &'a str,
    pub workspace_gid: &'a str,
}

/// Builds the outbox entry for one raw record, or says why it cannot:
/// [`Parsed::to_outbox`] of a record read on its own.
pub fn to_outbox(
    raw: &RawValue,
    origin: Origin<'_>,
    observed_at: &str,
    users: Option<&Users>,
) -> Result<NewEvent, String> {
    parse(raw).to_outbox(origin, observed_at, users)
}

fn map(
    raw: &RawValue,
    event: &AuditLogEvent<'_>,
    origin: Origin<'_>,
    observed_at: &str,
    users: Option<&Users>,
) -> Result<NewEvent, String> {
    let id: String = match &event.gid {
        Some(Id::Str(s)) if !s.trim().is_empty() => s.to_string(),
        Some(Id::Num(n)) => n.to_string(),
        _ => return Err("missing or empty `gid`".to_string()),
    };
    let created_at = event
        .created_at
        .as_deref()
        .ok_or_else(|| format!("event {id}: missing `created_at`"))?;
    let time: DateTime<Utc> = DateTime::parse_from_rfc3339(created_at)
        .map_err(|e| format!("event {id}: `created_at` {created_at:?} is not RFC 3339: {e}"))?
        .with_timezone(&Utc);
    let event_time = time.timestamp_millis();

    let actor_id = actor_user(event.actor.as_ref());
    let target_id = resource_user(event.resource.as_ref());
    let actor_found = found(users, actor_id);
    let target_found = found(users, target_id);
    let actor = event.actor.as_ref().map(|a| Party {
        kind: a.actor_type.as_deref(),
        subtype: None,
        id: a.gid.as_deref(),
        name: actor_found
            .and_then(|u| u.name.as_deref())
            .or(a.name.as_deref()),
        email: actor_found
            .and_then(|u| u.email.as_deref())
            .or(a.email.as_deref()),
    });
    let target = event.resource.as_ref().map(|r| Party {
        kind: r.resource_type.as_deref(),
        subtype: r.resource_subtype.as_deref(),
        id: r.gid.as_deref(),
        name: target_found
            .and_then(|u| u.name.as_deref())
            .or(r.name.as_deref()),
        email: target_found
            .and_then(|u| u.email.as_deref())
            .or(r.email.as_deref()),
    });
    let named: Vec<&str> = [actor_id, target_id].into_iter().flatten().collect();
    let enrichment = enrichment_of(users, &named);
    let client = event.context.as_ref().map(|c| Client {
        ip: c.client_ip_address.as_deref(),
        user_agent: c.user_agent.as_deref(),
        context: c.context_type.as_deref(),
        auth_method: c.api_authentication_method.as_deref(),
        app_name: c.oauth_app_name.as_deref(),
    });
    // One line per event: a pretty-printed page (a proxy, a debug flag)
    // must not split an event over several lines of a JSON-lines sink.
    let compact = envelope::compact_json(raw.get());
    let owned_raw;
    let raw: &RawValue = match compact {
        Cow::Borrowed(_) => raw,
        Cow::Owned(text) => {
            owned_raw = RawValue::from_string(text).map_err(|e| format!("event {id}: {e}"))?;
            &owned_raw
        }
    };
    let envelope = Envelope {
        code: None,
        enrichment,
        gap: None,
        envelope_version: envelope::ENVELOPE_VERSION,
        source: SourceRef {
            kind: "asana",
            id: origin.source_id,
            tenant: origin.workspace_gid,
        },
        id: &id,
        time: envelope::format_time(event_time),
        observed_at,
        event_type: event.event_type.as_deref(),
        category: event.event_category.as_deref(),
        outcome: outcome(event.event_type.as_deref()),
        actor,
        target,
        client,
        raw,
    };
    let payload = envelope.to_json().map_err(|e| format!("event {id}: {e}"))?;
    Ok(NewEvent {
        event_id: id,
        event_time,
        payload,
    })
}

/// Asana names outcomes in the event type (`user_login_failed`).
fn outcome(event_type: Option<&str>) -> Outcome {
    match event_type {
        Some(t) if t.ends_with("_failed") => Outcome::Failure,
        Some(t) if t.ends_with("_succeeded") => Outcome::Success,
        _ => Outcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{Resolution, UserInfo};
    use serde_json::Value;

    const ORIGIN: Origin<'static> = Origin {
        source_id: "asana_main",
        workspace_gid: "1200000000000000",
    };

    fn build(json: &str) -> Result<(NewEvent, Value), String> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let event = to_outbox(&raw, ORIGIN, "2026-01-05T10:20:00.000Z", None)?;
        let value = serde_json::from_str(&event.payload).unwrap();
        Ok((event, value))
    }

    #[test]
    fn full_event_maps_every_field_and_keeps_raw_verbatim() {
        let json = r#"{"gid":"1209000000000001","created_at":"2026-01-05T10:15:30.123Z","event_type":"user_login_failed","event_category":"logins","actor":{"actor_type":"user","gid":"1200000000000001","name":"Greg Sanchez","email":"gsanchez@example.com"},"resource":{"resource_type":"user","gid":"1200000000000001","name":null,"email":"gsanchez@example.com"},"details":{"method":["ONE_TIME_KEY"],"big":12345678901234567890},"context":{"context_type":"api","api_authentication_method":"oauth","oauth_app_name":"SCIM","client_ip_address":"198.51.100.7","user_agent":"curl/8","on_behalf_of_user_id":42}}"#;
        let (event, v) = build(json).unwrap();
        assert_eq!(event.event_id, "1209000000000001");
        assert_eq!(event.event_time, 1_767_608_130_123);
        assert_eq!(v["envelope_version"], 1);
        assert_eq!(v["source"]["kind"], "asana");
        assert_eq!(v["source"]["tenant"], "1200000000000000");
        assert_eq!(v["id"], "1209000000000001");
        assert_eq!(v["time"], "2026-01-05T10:15:30.123Z");
        assert_eq!(v["type"], "user_login_failed");
        assert_eq!(v["outcome"], "failure");
        assert_eq!(v["actor"]["email"], "gsanchez@example.com");
        assert_eq!(v["target"].get("name"), None);
        assert_eq!(v["client"]["ip"], "198.51.100.7");
        assert_eq!(v["client"]["app_name"], "SCIM");
        // A compact record travels byte for byte: the u64 above 2^53 survives.
        assert!(
            event.payload.ends_with(&format!("\"raw\":{json}}}")),
            "{}",
            event.payload
        );
    }

    #[test]
    fn odd_shapes_pass_and_bad_records_say_why() {
        let (_, v) = build(r#"{"gid":123,"created_at":"2026-01-05T10:15:30Z","actor":"nobody","resource":null,"event_type":"future_thing","context":{"user_agent":"say \"hi\" \u00e9"}}"#).unwrap();
        assert_eq!(v["client"]["user_agent"], "say \"hi\" \u{e9}");
        assert_eq!(v["id"], "123");
        assert_eq!(v["outcome"], "unknown");
        assert!(v.get("actor").is_none());
        let err = build(r#"{"gid":"9","actor":"x"}"#).unwrap_err();
        assert!(
            err.contains("event 9") && err.contains("created_at"),
            "{err}"
        );
        let err = build(r#"{"created_at":"2026-01-05T10:15:30Z"}"#).unwrap_err();
        assert!(err.contains("gid"), "{err}");
        let err = build(r#"{"gid":"9","created_at":"yesterday"}"#).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
        let err = build(r#"[1,2]"#).unwrap_err();
        assert!(err.contains("not an audit log event"), "{err}");
    }

    #[test]
    fn objects_of_the_wrong_shape_read_as_absent_field_by_field() {
        // A string where an object belongs, an array, a number: no party.
        for actor in [r#""someone""#, "[1,2]", "7", "true", "null"] {
            let json = format!(
                r#"{{"gid":"1","created_at":"2026-01-05T10:15:30Z","actor":{actor},"resource":{{"resource_type":"task","gid":"9"}}}}"#
            );
            let (_, v) = build(&json).unwrap();
            assert!(v.get("actor").is_none(), "{actor}: {v}");
            assert_eq!(v["target"]["id"], "9", "{actor}: the rest still maps");
        }
        // Inside an object, a value that is not a string drops only that
        // field: the party keeps the fields that are strings.
        let (_, v) = build(r#"{"gid":"1","created_at":"2026-01-05T10:15:30Z","actor":{"actor_type":"user","gid":42,"name":{"first":"A"},"email":["a@example.com"]},"context":{"client_ip_address":false,"user_agent":"ua"}}"#).unwrap();
        assert_eq!(v["actor"]["type"], "user", "{v}");
        assert!(v["actor"].get("id").is_none(), "{v}");
        assert!(v["actor"].get("name").is_none(), "{v}");
        assert!(v["actor"].get("email").is_none(), "{v}");
        assert_eq!(v["client"]["user_agent"], "ua");
        assert!(v["client"].get("ip").is_none(), "{v}");
        // A user actor without a usable gid names nobody to look up.
        let raw: Box<RawValue> = serde_json::from_str(
            r#"{"actor":{"actor_type":"user","gid":42},"resource":{"resource_type":"user","gid":"5"}}"#,
        )
        .unwrap();
        assert_eq!(named_users(&raw), ["5"]);
        // The record itself must be an object with a gid and a time.
        assert!(build(r#"{"gid":"1","created_at":7}"#).is_err());
        // A key given twice inside a party is no object: the record goes to
        // quarantine with the reason (it is never dropped silently).
        let twice = build(
            r#"{"gid":"1","created_at":"2026-01-05T10:15:30Z","actor":{"gid":"1","gid":"2"}}"#,
        )
        .unwrap_err();
        assert!(twice.contains("duplicate field `gid`"), "{twice}");
    }

    #[test]
    fn a_record_is_read_once_for_lookups_and_mapping() {
        let raw: Box<RawValue> = serde_json::from_str(LOGIN).unwrap();
        let parsed = parse(&raw);
        assert_eq!(parsed.named_users().collect::<Vec<_>>(), ["11", "22"]);
        let users = Users::from([("11".into(), user(Some("New Name"), None))]);
        let event = parsed
            .to_outbox(ORIGIN, "2026-01-05T10:20:00.000Z", Some(&users))
            .unwrap();
        let v: Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(v["actor"]["name"], "New Name");
        // The same record built in one step gives the same payload.
        let again = to_outbox(&raw, ORIGIN, "2026-01-05T10:20:00.000Z", Some(&users)).unwrap();
        assert_eq!(again.payload, event.payload);
        // A record that does not parse gives its reason at mapping time.
        let bad: Box<RawValue> = serde_json::from_str("[1]").unwrap();
        let parsed = parse(&bad);
        assert_eq!(parsed.named_users().count(), 0);
        let err = parsed.to_outbox(ORIGIN, "x", None).unwrap_err();
        assert!(err.contains("not an audit log event"), "{err}");
    }

    const LOGIN: &str = r#"{"gid":"1","created_at":"2026-01-05T10:15:30Z","event_type":"user_role_changed","actor":{"actor_type":"user","gid":"11","name":"Old Name","email":"old@example.com"},"resource":{"resource_type":"user","gid":"22","name":"Target Event","email":"target@example.com"}}"#;

    fn enriched(json: &str, users: &Users) -> Value {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        let event = to_outbox(&raw, ORIGIN, "2026-01-05T10:20:00.000Z", Some(users)).unwrap();
        serde_json::from_str(&event.payload).unwrap()
    }

    fn user(name: Option<&str>, email: Option<&str>) -> Resolution {
        Resolution::Found(UserInfo {
            name: name.map(String::from),
            email: email.map(String::from),
        })
    }

    #[test]
    fn named_users_are_user_actors_and_user_resources() {
        let raw = |json: &str| -> Box<RawValue> { serde_json::from_str(json).unwrap() };
        assert_eq!(named_users(&raw(LOGIN)), ["11", "22"]);
        let same = r#"{"actor":{"actor_type":"user","gid":"5"},"resource":{"resource_type":"user","gid":"5"}}"#;
        assert_eq!(named_users(&raw(same)), ["5"]);
        let none =
            r#"{"actor":{"actor_type":"asana"},"resource":{"resource_type":"task","gid":"9"}}"#;
        assert!(named_users(&raw(none)).is_empty());
        let odd = r#"{"actor":"x","resource":{"resource_type":"user","gid":" "}}"#;
        assert!(named_users(&raw(odd)).is_empty());
        assert!(named_users(&raw("[1]")).is_empty());
    }

    #[test]
    fn lookups_fill_names_and_emails_and_say_how_it_went() {
        // Both found: the directory's values win; a value it lacks keeps
        // the event's.
        let users = Users::from([
            ("11".into(), user(Some("New Name"), None)),
            ("22".into(), user(None, Some("t@example.com"))),
        ]);
        let v = enriched(LOGIN, &users);
        assert_eq!(v["actor"]["name"], "New Name");
        assert_eq!(v["actor"]["email"], "old@example.com");
        assert_eq!(v["target"]["name"], "Target Event");
        assert_eq!(v["target"]["email"], "t@example.com");
        assert_eq!(v["enrichment"], "enriched");

        // A deleted target: what the event says stays.
        let users = Users::from([
            ("11".into(), user(Some("New Name"), Some("new@example.com"))),
            ("22".into(), Resolution::Unknown),
        ]);
        let v = enriched(LOGIN, &users);
        assert_eq!(v["enrichment"], "user_unknown");
        assert_eq!(v["actor"]["email"], "new@example.com");
        assert_eq!(v["target"]["email"], "target@example.com");

        // Not known in time (or not asked): not enriched, which wins over
        // unknown.
        let users = Users::from([
            ("11".into(), Resolution::Unavailable),
            ("22".into(), Resolution::Unknown),
        ]);
        let v = enriched(LOGIN, &users);
        assert_eq!(v["enrichment"], "not_enriched");
        assert_eq!(v["actor"]["name"], "Old Name");
        let v = enriched(LOGIN, &Users::new());
        assert_eq!(v["enrichment"], "not_enriched");

        // Naming nobody: no field; enrichment off: no field.
        let v = enriched(
            r#"{"gid":"2","created_at":"2026-01-05T10:15:30Z","actor":{"actor_type":"asana"},"resource":{"resource_type":"task","gid":"9"}}"#,
            &Users::new(),
        );
        assert!(v.get("enrichment").is_none(), "{v}");
        let (_, v) = build(LOGIN).unwrap();
        assert!(v.get("enrichment").is_none(), "{v}");
        assert_eq!(v["actor"]["name"], "Old Name");
    }
}
