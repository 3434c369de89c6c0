//! The output envelope: one JSON object per audit event, the contract with
//! the SIEM. Documented field by field in README.md ("Output format").
//!
//! Stability rules: fields are only ever added; a change that removes or
//! retypes a field bumps [`ENVELOPE_VERSION`]. Absent information is left
//! out, never sent as a guess. The source's record travels under
//! `raw`: verbatim but for whitespace between tokens, which is removed so an
//! event is always one line (ids above 2^53 and key order survive).

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

/// Version of the envelope schema, carried in every event.
pub const ENVELOPE_VERSION: u32 = 1;

/// One audit event as every sink receives it.
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// Schema version, [`ENVELOPE_VERSION`].
    pub envelope_version: u32,
    /// Where the event came from.
    pub source: SourceRef<'a>,
    /// The source's own event id: stable, the key for downstream dedup.
    pub id: &'a str,
    /// When it happened, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// When auditrelay stored it, RFC 3339 UTC with milliseconds.
    pub observed_at: &'a str,
    /// The source's event type (Asana `event_type`).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<&'a str>,
    /// The source's category (Asana `event_category`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'a str>,
    /// `success`, `failure` or `unknown`.
    ///
    /// [`EnvelopeMeta::read`] stops here: every field it reads comes
    /// before this one.
    pub outcome: Outcome,
    /// Who did it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<Party<'a>>,
    /// What it was done to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Party<'a>>,
    /// From where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<Client<'a>>,
    /// What the source's event code means, from auditrelay's catalog
    /// (Anaplan `USR-*` codes); absent for sources without codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeInfo<'a>>,
    /// Whether the users the event names (actor, target user) were looked
    /// up; absent when it names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
    /// A gap, not an event: the source could not read events in
    /// [`Gap::from`, `Gap::to`) because the API no longer keeps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
    /// The source's record, verbatim but for whitespace between tokens.
    pub raw: &'a RawValue,
}

impl Envelope<'_> {
    /// The envelope as one line of JSON (`serde_json::to_string`), written
    /// into a buffer sized for it up front rather than grown by doubling
    /// from 128 bytes: the fields repeat parts of `raw`, so it is about
    /// twice as long as `raw`.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let mut out = Vec::with_capacity(2 * self.raw.get().len() + 256);
        serde_json::to_writer(&mut out, self)?;
        // serde_json writes UTF-8 only; checking it costs less than growing.
        String::from_utf8(out).map_err(serde::ser::Error::custom)
    }
}

/// An event code looked up in auditrelay's catalog.
#[derive(Debug, Serialize)]
pub struct CodeInfo<'a> {
    /// The code as the source sent it (`USR-001`).
    pub id: &'a str,
    /// Whether the catalog knows it; an unknown code passes through with
    /// only `id` and `known: false`.
    pub known: bool,
    /// What happened, e.g. "User login success".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// What the event's object id refers to (`user`, `model`, `process`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<&'a str>,
    /// `authentication`, `account_lifecycle`, `access`, `administration`
    /// or `data_movement`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<&'a str>,
}

/// How user enrichment went for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enrichment {
    /// Every user it names was found: `name` and `email` are filled in.
    Enriched,
    /// At least one user is unknown to the API (deleted, internal): what
    /// could be filled in is.
    UserUnknown,
    /// A lookup failed or did not finish within the bound: the event went
    /// out without waiting (the ids are there, names and emails may not).
    NotEnriched,
}

/// The span of a gap marker (RFC 3339 UTC with milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub from: String,
    pub to: String,
    /// Why nothing could be read there.
    pub reason: String,
}

/// Provenance of an event.
#[derive(Debug, Serialize)]
pub struct SourceRef<'a> {
    /// `asana` (later `anaplan`).
    pub kind: &'static str,
    /// The source's id in the configuration.
    pub id: &'a str,
    /// The tenant in that API (Asana: the workspace gid).
    pub tenant: &'a str,
}

/// Whether the action succeeded, as far as the event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Unknown,
}

/// An actor or a target.
#[derive(Debug, Default, Serialize)]
pub struct Party<'a> {
    /// The source's type for it (`user`, `task`, `asana_support`, …).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'a str>,
    /// A subtype where the source has one (`milestone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

/// The client the action came from.
#[derive(Debug, Default, Serialize)]
pub struct Client<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    /// How it was reached (`web`, `mobile`, `api`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<&'a str>,
    /// For API calls: how the caller authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<&'a str>,
    /// For OAuth calls: the app's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_name: Option<&'a str>,
}

/// The few envelope fields sinks put in their own headers (syslog MSGID
/// and severity, Kafka headers), read back from a stored envelope.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub struct EnvelopeMeta<'a> {
    #[serde(borrow)]
    pub time: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    pub event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub outcome: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub category: Option<Cow<'a, str>>,
    pub envelope_version: Option<u32>,
    #[serde(borrow)]
    pub source: Option<EnvelopeSource<'a>>,
}

/// `source` of [`EnvelopeMeta`].
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
pub struct EnvelopeSource<'a> {
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
}

impl<'a> EnvelopeMeta<'a> {
    /// Reads `payload` up to its `outcome`, without going through the
    /// rest: [`Envelope`] writes every field read here before `outcome`,
    /// and `actor`, `target`, `client` and `raw` after it make up most of
    /// an envelope. On a payload that is not an envelope (which the
    /// pipeline never stores), the fields found before what stopped the
    /// reading are kept and the others are empty; there is no error.
    pub fn read(payload: &'a str) -> Self {
        let mut meta = Self::default();
        let mut reader = serde_json::Deserializer::from_str(payload);
        // Stopping at `outcome` leaves the object unfinished, which
        // serde_json reports as an error after `meta` has what it needs.
        let _ = serde::de::DeserializeSeed::deserialize(MetaReader(&mut meta), &mut reader);
        meta
    }

    /// The source's kind (`asana`), or empty.
    pub fn source_kind(&self) -> &str {
        self.source
            .as_ref()
            .and_then(|s| s.kind.as_deref())
            .unwrap_or("")
    }
}

/// Fills an [`EnvelopeMeta`] from an envelope's first fields.
struct MetaReader<'m, 'a>(&'m mut EnvelopeMeta<'a>);

/// A string borrowed from the payload where it has no escapes.
#[derive(serde::Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> serde::de::DeserializeSeed<'a> for MetaReader<'_, 'a> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'a>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_map(self)
    }
}

impl<'a> serde::de::Visitor<'a> for MetaReader<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an envelope")
    }

    fn visit_map<M: serde::de::MapAccess<'a>>(self, mut fields: M) -> Result<(), M::Error> {
        let text = |value: Option<Text<'a>>| value.map(|Text(text)| text);
        while let Some(Text(key)) = fields.next_key::<Text<'a>>()? {
            match key.as_ref() {
                "envelope_version" => self.0.envelope_version = fields.next_value()?,
                "source" => self.0.source = fields.next_value()?,
                "time" => self.0.time = text(fields.next_value()?),
                "type" => self.0.event_type = text(fields.next_value()?),
                "category" => self.0.category = text(fields.next_value()?),
                "outcome" => {
                    self.0.outcome = text(fields.next_value()?);
                    return Ok(());
                }
                _ => {
                    fields.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// `json` without the whitespace between tokens, so that an event is one
/// line whatever the API's formatting. Strings, numbers (however large) and
/// key order are untouched. Borrows when there is nothing to remove.
///
/// A byte scan: whitespace, quotes and backslashes are ASCII, and no byte of
/// a multi-byte UTF-8 character is ASCII, so every cut falls on a character
/// boundary. Inside a string only `"` and `\` matter. Input that is not
/// JSON is treated the same way (an unterminated string runs to the end).
pub fn compact_json(json: &str) -> Cow<'_, str> {
    let bytes = json.as_bytes();
    let mut out: Option<String> = None;
    // Start of the bytes not yet copied into `out`.
    let mut kept_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                let out = out.get_or_insert_with(|| String::with_capacity(bytes.len()));
                out.push_str(&json[kept_from..i]);
                i += 1;
                kept_from = i;
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(json),
        Some(mut out) => {
            out.push_str(&json[kept_from..]);
            Cow::Owned(out)
        }
    }
}

/// The index just past the `"` that closes the string whose contents start
/// at `from`, or the length when it is not closed.
fn string_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return i + 1,
            // The escaped byte is never the end, whatever it is.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// RFC 3339 UTC with milliseconds, the envelope's one time format.
pub fn format_time(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_removes_only_whitespace_between_tokens() {
        let pretty =
            "{\n  \"a\" : [ 1 ,\t12345678901234567890 ],\r\n  \"s\": \"x  y\\\" \\n z\"\n}";
        let compact = compact_json(pretty);
        assert_eq!(
            compact,
            r#"{"a":[1,12345678901234567890],"s":"x  y\" \n z"}"#
        );
        assert!(matches!(compact_json(r#"{"a":"b c"}"#), Cow::Borrowed(_)));
        let value: serde_json::Value = serde_json::from_str(&compact).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(pretty).unwrap()
        );
    }

    #[test]
    fn to_json_is_serde_json_to_string() {
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"gid":"1","note":"é \" \u2028","n":12345678901234567890}"#)
                .unwrap();
        let envelope = sample(&raw);
        assert_eq!(
            envelope.to_json().unwrap(),
            serde_json::to_string(&envelope).unwrap()
        );
    }

    /// An envelope naming an actor, with a type that needs an escape.
    fn sample(raw: &RawValue) -> Envelope<'_> {
        Envelope {
            envelope_version: ENVELOPE_VERSION,
            source: SourceRef {
                kind: "asana",
                id: "a",
                tenant: "1",
            },
            id: "1",
            time: format_time(0),
            observed_at: "2026-01-05T10:20:00.000Z",
            event_type: Some("t\"q"),
            category: None,
            outcome: Outcome::Unknown,
            actor: Some(Party {
                name: Some("Zoë"),
                ..Party::default()
            }),
            target: None,
            client: None,
            code: None,
            enrichment: Some(Enrichment::Enriched),
            gap: None,
            raw,
        }
    }

    #[test]
    fn the_meta_read_up_to_outcome_is_the_whole_read_of_every_envelope() {
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"outcome":"failure","type":"inner","time":"x"}"#).unwrap();
        let full = Envelope {
            event_type: Some("project_deleted"),
            category: Some("deletion"),
            outcome: Outcome::Failure,
            target: Some(Party::default()),
            client: Some(Client::default()),
            code: Some(CodeInfo {
                id: "USR-001",
                known: true,
                name: Some("n"),
                object: Some("user"),
                category: Some("authentication"),
            }),
            ..sample(&raw)
        };
        let bare = Envelope {
            event_type: None,
            actor: None,
            enrichment: None,
            ..sample(&raw)
        };
        let gap = Envelope {
            gap: Some(Gap {
                from: format_time(0),
                to: format_time(1),
                reason: "r".into(),
            }),
            ..Envelope {
                source: SourceRef {
                    kind: "anaplan",
                    id: "b",
                    tenant: "t",
                },
                ..bare
            }
        };
        for envelope in [sample(&raw), full, gap] {
            let json = envelope.to_json().unwrap();
            let whole: EnvelopeMeta<'_> = serde_json::from_str(&json).unwrap();
            assert_eq!(EnvelopeMeta::read(&json), whole, "{json}");
            assert!(whole.outcome.is_some() && whole.envelope_version.is_some());
        }
        let json = full_meta_json();
        let meta = EnvelopeMeta::read(&json);
        assert_eq!(meta.event_type.as_deref(), Some("t\"q"));
        assert_eq!(meta.category.as_deref(), Some("c"));
        assert_eq!(meta.source_kind(), "asana");
        assert!(matches!(meta.time, Some(Cow::Borrowed(_))), "{meta:?}");
    }

    fn full_meta_json() -> String {
        let raw: Box<RawValue> = serde_json::from_str("{}").unwrap();
        let envelope = Envelope {
            category: Some("c"),
            ..sample(&raw)
        };
        envelope.to_json().unwrap()
    }

    #[test]
    fn the_meta_read_stops_at_outcome_and_never_fails() {
        // Whatever follows `outcome` is not read: not even broken JSON.
        let json = full_meta_json();
        let cut = json.find(r#","actor""#).unwrap();
        let broken = format!("{},\"raw\":{{nope", &json[..cut]);
        assert_eq!(EnvelopeMeta::read(&broken), EnvelopeMeta::read(&json));
        // A field after `outcome` is not looked for.
        let late = EnvelopeMeta::read(r#"{"outcome":"success","type":"t"}"#);
        assert_eq!(late.outcome.as_deref(), Some("success"));
        assert_eq!(late.event_type, None);
        // Not an envelope: empty fields, or those found before it broke.
        for text in ["", "[1]", "nope", "null", r#"{"source":3}"#] {
            assert_eq!(EnvelopeMeta::read(text), EnvelopeMeta::default(), "{text}");
        }
        let half = EnvelopeMeta::read(r#"{"type":"t","time":[}"#);
        assert_eq!(half.event_type.as_deref(), Some("t"));
        assert_eq!(half.time, None);
    }

    /// The char-by-char scan `compact_json` replaced: the specification.
    fn compact_reference(json: &str) -> Option<String> {
        let mut in_string = false;
        let mut escaped = false;
        let mut out: Option<String> = None;
        for (i, c) in json.char_indices() {
            let keep = if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                true
            } else {
                if c == '"' {
                    in_string = true;
                }
                !matches!(c, ' ' | '\n' | '\r' | '\t')
            };
            match (&mut out, keep) {
                (Some(out), true) => out.push(c),
                (None, false) => out = Some(json[..i].to_string()),
                _ => {}
            }
        }
        out
    }

    fn agrees_with_reference(input: &str) {
        let got = compact_json(input);
        match compact_reference(input) {
            None => assert!(
                matches!(got, Cow::Borrowed(s) if s == input),
                "{input:?} → {got:?}, expected borrowed"
            ),
            Some(expected) => assert!(
                matches!(&got, Cow::Owned(s) if *s == expected),
                "{input:?} → {got:?}, expected {expected:?}"
            ),
        }
    }

    #[test]
    fn compaction_handles_escapes_unicode_and_nesting() {
        let cases = [
            "",
            " ",
            "\"",
            "\"\\",
            "\"a\\\"",
            r#"{"a":"x\\"}"#,
            "{\"a\":\"x\\\\\" , \"b\" : 1}",
            "{\"a\":\"\\\" \" , \"b\":\"\\\\\\\" \\\\\"}",
            "{\"é ü\" : \"𝄞 \\u00e9 \\\"\t\" ,\"k\":[ \"\\\\\" ,{ \"x\" :[ [ ] ] } ]}",
            "[\"\\é\" , \"\\𝄞 \" ]",
            "\n\r\t {}\n",
            "{\"unterminated\": \"a b\\",
            "{\"a\":\u{a0}1}",
        ];
        for case in cases {
            agrees_with_reference(case);
        }
        let nested = "{\"a\" : [ {\"b\\\\\" : \"c \\\" d\"} , \"e\\\\\" ] ,\n \"f\":\"𝄞\"}";
        let value: serde_json::Value = serde_json::from_str(&compact_json(nested)).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(nested).unwrap()
        );
    }

    #[test]
    fn compaction_agrees_with_the_char_scan_on_generated_inputs() {
        // Pieces that are hard for a byte scan: quotes, backslashes (also
        // doubled and before a quote or a multi-byte character), whitespace
        // inside and outside strings, 2-, 3- and 4-byte characters.
        const PIECES: [&str; 22] = [
            "\"", "\\", "\\\\", "\\\"", " ", "\n", "\r", "\t", "{", "}", "[", "]", ",", ":", "a",
            "0", "é", "€", "𝄞", "\u{a0}", "\\u00e9", "\u{2028}",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*: deterministic, no dependency.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let input: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            agrees_with_reference(&input);
        }
        // And valid JSON, pretty and compact, against serde_json itself.
        for seed in 0..200u64 {
            let value = serde_json::json!({
                "s": format!("q\"{seed} \\ {}\\", "é𝄞".repeat((seed % 3) as usize)),
                "n": [seed, u64::MAX, -1.5e-7],
                "o": {"k\\\"": [" ", "\t", {}], "": null},
            });
            for text in [
                serde_json::to_string(&value).unwrap(),
                serde_json::to_string_pretty(&value).unwrap(),
            ] {
                agrees_with_reference(&text);
                let compact = compact_json(&text);
                assert_eq!(compact, serde_json::to_string(&value).unwrap());
            }
        }
    }
}
