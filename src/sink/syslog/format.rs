//! Syslog message formats: RFC 5424 (default) and RFC 3164 (old receivers).
//!
//! Provenance travels in the header and, for RFC 5424, in structured data:
//! APP-NAME is the configured application name, MSGID the event type,
//! and the `auditrelay@32473` element names the source, its kind, the event
//! id and type, and the envelope version. (32473 is the private enterprise
//! number RFC 5612 reserves for documentation, used until auditrelay has its
//! own.) The message body is the JSON envelope, one line.

use std::fmt::Write as _;

use crate::envelope::EnvelopeMeta;
use crate::state::OutboxRecord;

/// Which syslog header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rfc5424,
    Rfc3164,
}

/// The fixed parts of every message a sink writes.
#[derive(Debug, Clone)]
pub struct Header {
    pub format: Format,
    /// Facility code (0..=23).
    pub facility: u8,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
}

/// The structured-data element id.
pub const SD_ID: &str = "auditrelay@32473";

/// Syslog severities used for audit events.
const WARNING: u8 = 4;
const NOTICE: u8 = 5;
const INFO: u8 = 6;

/// A failed action (a failed login) is a warning; deletions and changes to
/// roles, access and settings are notices; everything else is info.
fn severity(meta: &EnvelopeMeta<'_>) -> u8 {
    if meta.outcome.as_deref() == Some("failure") {
        return WARNING;
    }
    match meta.category.as_deref() {
        Some("deletion" | "roles" | "access_control" | "admin_settings" | "apps") => NOTICE,
        _ => INFO,
    }
}

/// Keeps printable US-ASCII (RFC 5424 PRINTUSASCII), at most `max` chars;
/// `-` (the nil value) when nothing is left.
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() {
        "-".to_string()
    } else {
        field
    }
}

/// Escapes an SD-PARAM value (RFC 5424 §6.3.3: `"`, `\` and `]`).
/// Control characters are dropped: a line feed would split the message
/// under LF framing.
fn sd_value(out: &mut String, value: &str) {
    for c in value.chars().filter(|c| !c.is_control()) {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
}

impl Header {
    /// One syslog message for one outbox record, without framing.
    pub fn message(&self, record: &OutboxRecord) -> String {
        // The payload is our own envelope; should it ever fail to parse, the
        // message still goes out with neutral header values.
        let meta = EnvelopeMeta::read(&record.payload);
        let pri = u16::from(self.facility) * 8 + u16::from(severity(&meta));
        let event_type = meta.event_type.as_deref().unwrap_or("");
        let mut out = String::with_capacity(record.payload.len() + 256);
        match self.format {
            Format::Rfc5424 => {
                let time = meta
                    .time
                    .as_deref()
                    .map_or_else(|| "-".to_string(), |t| header_field(t, 64));
                let _ = write!(
                    out,
                    "<{pri}>1 {time} {} {} {} {} [{SD_ID} source=\"",
                    header_field(&self.hostname, 255),
                    header_field(&self.app_name, 48),
                    header_field(&self.procid, 128),
                    header_field(event_type, 32),
                );
                sd_value(&mut out, &record.source_id);
                out.push_str("\" kind=\"");
                sd_value(&mut out, meta.source_kind());
                out.push_str("\" event_id=\"");
                sd_value(&mut out, &record.event_id);
                out.push_str("\" event_type=\"");
                sd_value(&mut out, event_type);
                let _ = write!(
                    out,
                    "\" envelope_version=\"{}\"] ",
                    meta.envelope_version.unwrap_or(0)
                );
            }
            Format::Rfc3164 => {
                let time = meta
                    .time
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or_else(chrono::Utc::now, |t| t.with_timezone(&chrono::Utc));
                let _ = write!(
                    out,
                    "<{pri}>{} {} {}[{}]: ",
                    time.format("%b %e %H:%M:%S"),
                    header_field(&self.hostname, 255),
                    header_field(&self.app_name, 32),
                    header_field(&self.procid, 16),
                );
            }
        }
        out.push_str(&record.payload);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &str) -> OutboxRecord {
        OutboxRecord {
            seq: 1,
            source_id: "asana_main".into(),
            event_id: "1209".into(),
            payload: payload.into(),
        }
    }

    fn header(format: Format) -> Header {
        Header {
            format,
            facility: 16,
            hostname: "relay-1".into(),
            app_name: "auditrelay".into(),
            procid: "42".into(),
        }
    }

    const FAILED_LOGIN: &str = r#"{"envelope_version":1,"source":{"kind":"asana","id":"asana_main","tenant":"1"},"id":"1209","time":"2026-01-05T10:15:30.123Z","type":"user_login_failed","category":"logins","outcome":"failure","raw":{"x":"a]b\"c"}}"#;

    #[test]
    fn rfc5424_carries_provenance_in_header_and_structured_data() {
        let message = header(Format::Rfc5424).message(&record(FAILED_LOGIN));
        // local0 (16) * 8 + warning (4) = 132.
        assert_eq!(
            message,
            format!("<132>1 2026-01-05T10:15:30.123Z relay-1 auditrelay 42 user_login_failed [auditrelay@32473 source=\"asana_main\" kind=\"asana\" event_id=\"1209\" event_type=\"user_login_failed\" envelope_version=\"1\"] {FAILED_LOGIN}")
        );
    }

    #[test]
    fn rfc3164_has_a_bsd_header() {
        let message = header(Format::Rfc3164).message(&record(FAILED_LOGIN));
        assert_eq!(
            message,
            format!("<132>Jan  5 10:15:30 relay-1 auditrelay[42]: {FAILED_LOGIN}")
        );
    }

    #[test]
    fn severities_and_escaping() {
        let deletion = r#"{"type":"task_deleted","category":"deletion","outcome":"unknown"}"#;
        assert!(header(Format::Rfc5424)
            .message(&record(deletion))
            .starts_with("<133>1 "));
        let plain = r#"{"type":"user_logged_out","category":"logins","outcome":"unknown"}"#;
        assert!(header(Format::Rfc5424)
            .message(&record(plain))
            .starts_with("<134>1 "));
        let mut odd = record(r#"{"type":"a b\u00e9\"]"}"#);
        odd.source_id = "we\"ird]".into();
        let message = header(Format::Rfc5424).message(&odd);
        assert!(
            message.contains(" ab\"] [auditrelay@32473 source=\"we\\\"ird\\]\""),
            "{message}"
        );
        // A line feed in a value would split the message under LF framing.
        let mut split = record(plain);
        split.event_id = "12\n34\r".into();
        assert!(header(Format::Rfc5424)
            .message(&split)
            .contains("event_id=\"1234\""));
        // Not an envelope at all: still a valid message with nil fields.
        assert!(header(Format::Rfc5424)
            .message(&record("oops"))
            .starts_with("<134>1 - relay-1 auditrelay 42 - ["));
    }
}
