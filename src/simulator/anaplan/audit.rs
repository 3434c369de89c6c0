//! The Audit API: `GET /audit/api/1/events` and `POST /audit/api/1/events/search` [A7–A10].
//!
//! Window rules:
//!
//! - GET: `intervalInHours` (1..=720) means the last N hours of the simulated clock and wins
//!   over dates. Otherwise `dateTo` defaults to now and `dateFrom` to `dateTo` minus 30 days;
//!   `dateFrom > dateTo` or a span over 30 days gets 400. Bounds are inclusive, on
//!   `eventDate`. `nextUrl`/`previousUrl` pin `dateFrom`/`dateTo` (or repeat
//!   `intervalInHours`), and carry the effective `limit`.
//! - POST: the body `{from?, to?, interval?}`; `to` defaults to now, `from` to the oldest
//!   retained event; the 30-day span rule applies only when both are given (`{"from": 0}`
//!   works), and to `interval`. `type`, `limit` and `offset` stay in the query, and `nextUrl`
//!   is the same path with the next offset, to be POSTed with the same body.
//!
//! Paging: `limit` (default `default_limit`, `0` returns counts only) and `offset` over the
//! ordered result; `meta.paging` has `currentPageSize`, `totalSize`, `offSet`, plus
//! `nextOffset`/`nextUrl` while more remain and `previousUrl` when `offSet > 0`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::config::THIRTY_DAYS;
use super::events::{type_prefix, AnaplanEvent};
use super::store::Selection;
use super::{lock, status_error, take, AnaplanEndpoint, AnaplanSim, Service};
use crate::simulator::api::percent_encode;

/// Message of the 400 for a window over 30 days [A8].
pub(crate) const RANGE_TOO_LONG: &str = "Date range cannot exceed 30 days";
const HOUR_MS: i64 = 3_600_000;
const MAX_INTERVAL_HOURS: i64 = 720;

/// A 400 `FAILURE_BAD_REQUEST` with this message.
#[derive(Debug, PartialEq, Eq)]
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        status_error(StatusCode::BAD_REQUEST, "FAILURE_BAD_REQUEST", &self.0)
    }
}

fn bad_request(message: &str) -> BadRequest {
    BadRequest(message.to_string())
}

/// How the window is repeated in `nextUrl`/`previousUrl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Echo {
    /// GET with dates (given or defaulted): pin them.
    Dates,
    /// GET with `intervalInHours`: repeat it (the window moves with the clock).
    Interval(i64),
    /// POST: the body carries the window.
    Search,
}

/// A validated audit request.
#[derive(Debug)]
struct AuditRequest {
    /// `type` as sent, repeated in links.
    event_type: Option<String>,
    prefix: Option<&'static str>,
    from_ms: i64,
    to_ms: i64,
    echo: Echo,
    limit: Option<u64>,
    offset: u64,
}

/// The last non-empty value of a query parameter.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(key, value)| key == name && !value.is_empty())
        .map(|(_, value)| value.as_str())
}

fn int_param(params: &[(String, String)], name: &str) -> Result<Option<i64>, BadRequest> {
    param(params, name)
        .map(|value| {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| bad_request(&format!("Invalid value for {name}: {value}")))
        })
        .transpose()
}

/// `type`, `limit` and `offset`: the query parameters both endpoints take.
fn paging_params(
    params: &[(String, String)],
) -> Result<(Option<String>, Option<u64>, u64), BadRequest> {
    let event_type = param(params, "type").map(str::to_string);
    let limit = match int_param(params, "limit")? {
        Some(limit) if limit < 0 => return Err(bad_request("limit must not be negative")),
        limit => limit.map(|l| l.unsigned_abs()),
    };
    let offset = match int_param(params, "offset")? {
        Some(offset) if offset < 0 => return Err(bad_request("offset must not be negative")),
        offset => offset.map_or(0, |o| o.unsigned_abs()),
    };
    Ok((event_type, limit, offset))
}

/// The window of the last `hours` hours, or the 400 for a bad value.
fn interval_window(hours: i64, now_ms: i64) -> Result<(i64, i64), BadRequest> {
    if hours > MAX_INTERVAL_HOURS {
        return Err(bad_request(RANGE_TOO_LONG));
    }
    if hours <= 0 {
        return Err(bad_request("interval must be a positive number of hours"));
    }
    Ok((now_ms - hours * HOUR_MS, now_ms))
}

fn check_span(from_ms: i64, to_ms: i64) -> Result<(), BadRequest> {
    if from_ms > to_ms {
        return Err(bad_request("dateFrom must not be after dateTo"));
    }
    let max_ms = i64::try_from(THIRTY_DAYS.as_millis()).unwrap_or(i64::MAX);
    if to_ms.saturating_sub(from_ms) > max_ms {
        return Err(bad_request(RANGE_TOO_LONG));
    }
    Ok(())
}

fn parse_get(params: &[(String, String)], now_ms: i64) -> Result<AuditRequest, BadRequest> {
    let (event_type, limit, offset) = paging_params(params)?;
    let (from_ms, to_ms, echo) = match int_param(params, "intervalInHours")? {
        Some(hours) => {
            let (from, to) = interval_window(hours, now_ms)?;
            (from, to, Echo::Interval(hours))
        }
        None => {
            let max_ms = i64::try_from(THIRTY_DAYS.as_millis()).unwrap_or(i64::MAX);
            let to = int_param(params, "dateTo")?.unwrap_or(now_ms);
            let from = int_param(params, "dateFrom")?.unwrap_or(to.saturating_sub(max_ms));
            check_span(from, to)?;
            (from, to, Echo::Dates)
        }
    };
    Ok(AuditRequest {
        prefix: event_type.as_deref().and_then(type_prefix),
        event_type,
        from_ms,
        to_ms,
        echo,
        limit,
        offset,
    })
}

/// Body of `POST /events/search`; unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct SearchBody {
    from: Option<i64>,
    to: Option<i64>,
    interval: Option<i64>,
}

fn parse_search(
    params: &[(String, String)],
    body: &[u8],
    now_ms: i64,
    oldest_ms: i64,
) -> Result<AuditRequest, BadRequest> {
    let (event_type, limit, offset) = paging_params(params)?;
    let body: SearchBody = if body.iter().all(u8::is_ascii_whitespace) {
        SearchBody::default()
    } else {
        serde_json::from_slice(body).map_err(|_| {
            bad_request("Request body must be JSON with optional from, to and interval")
        })?
    };
    let (from_ms, to_ms) = match body.interval {
        Some(hours) => interval_window(hours, now_ms)?,
        None => {
            let to = body.to.unwrap_or(now_ms);
            let from = body.from.unwrap_or(oldest_ms.min(to));
            if body.from.is_some() && body.to.is_some() {
                check_span(from, to)?;
            } else if from > to {
                return Err(bad_request("from must not be after to"));
            }
            (from, to)
        }
    };
    Ok(AuditRequest {
        prefix: event_type.as_deref().and_then(type_prefix),
        event_type,
        from_ms,
        to_ms,
        echo: Echo::Search,
        limit,
        offset,
    })
}

/// `meta.paging` of the Audit API (note `offSet`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditPaging {
    current_page_size: usize,
    total_size: usize,
    #[serde(rename = "offSet")]
    off_set: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_url: Option<String>,
}

#[derive(Debug, Serialize)]
struct Meta {
    paging: AuditPaging,
}

#[derive(Debug, Serialize)]
struct PageBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta>,
    response: Vec<AnaplanEvent>,
}

fn wants_cef(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/plain") && !accept.contains("json"))
}

/// `GET /audit/api/1/events`.
pub(super) async fn events(
    State(sim): State<Arc<AnaplanSim>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::AuditEvents, &headers, &uri);
    let _in_flight = sim.event_request_in_flight();
    let response = match sim.admit(&call, &headers, Service::Audit).await {
        Ok(_) => match parse_get(&params, sim.now_ms()) {
            Ok(request) => sim.audit_page(&request, &call.base, wants_cef(&headers)),
            Err(bad) => bad.into_response(),
        },
        Err(response) => response,
    };
    sim.finish(call, response)
}

/// `POST /audit/api/1/events/search`.
pub(super) async fn search(
    State(sim): State<Arc<AnaplanSim>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::AuditSearch, &headers, &uri);
    let response = match sim.admit(&call, &headers, Service::Audit).await {
        Ok(_) => {
            let now_ms = sim.now_ms();
            match parse_search(&params, &body, now_ms, sim.retention_cutoff_ms(now_ms)) {
                Ok(request) => sim.audit_page(&request, &call.base, wants_cef(&headers)),
                Err(bad) => bad.into_response(),
            }
        }
        Err(response) => response,
    };
    sim.finish(call, response)
}

impl AnaplanSim {
    /// Inserts `drift_events` events into the request's window before its offset, if a
    /// `drift_next` fault is pending and the request continues a paging (`offset > 0`).
    fn maybe_drift(&self, request: &AuditRequest, selection: Selection<'_>) {
        if request.offset == 0 {
            return;
        }
        let count = {
            let mut faults = lock(&self.faults);
            if !take(&mut faults.drift_next) {
                return;
            }
            faults.drift_events
        };
        let current = self.select(selection);
        let now_ms = self.now_ms();
        let low = request.from_ms.max(self.retention_cutoff_ms(now_ms));
        // Strictly before the event that `count` insertions move to the offset: that is
        // the event `count` places before it, not the one at it, or an inserted event
        // placed just before the offset would be moved onto the page (inserted ids are
        // larger, so an equal eventDate would sort after it). If there is no such event,
        // the page is past the end even after the insertions.
        let high = usize::try_from(request.offset)
            .ok()
            .and_then(|offset| current.get(offset.saturating_sub(count as usize)))
            .map_or(request.to_ms.min(now_ms), |e| e.event_ms - 1)
            .max(low);
        let span = u64::try_from(high - low).unwrap_or(0) + 1;
        let inserted = self.insert_events(
            u64::from(count),
            |_| low + i64::try_from(rand::random_range(0..span)).unwrap_or(0),
            request.prefix,
        );
        lock(&self.counters).drift_events += inserted.len() as u64;
        debug!(
            count,
            offset = request.offset,
            ids = ?inserted.iter().map(|e| e.id).collect::<Vec<_>>(),
            "inserted drift events"
        );
    }

    fn audit_page(&self, request: &AuditRequest, base: &str, cef: bool) -> Response {
        let selection = Selection {
            from_ms: request.from_ms,
            to_ms: request.to_ms,
            prefix: request.prefix,
        };
        self.maybe_drift(request, selection);
        let selected = self.select(selection);
        let render = |entry: &super::store::Entry| {
            self.generator.render(
                &self.directory,
                &self.config.tenant_id,
                entry.key,
                entry.id,
                entry.event_ms,
                entry.created_ms,
            )
        };
        if cef {
            // CEF ignores limit and offset and has no paging [A8].
            let mut text = String::new();
            for entry in &selected {
                text.push_str(&render(entry).to_cef());
                text.push('\n');
            }
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                text,
            )
                .into_response();
        }
        let limit = request
            .limit
            .unwrap_or_else(|| u64::from(self.config.default_limit));
        if self
            .config
            .max_limit
            .is_some_and(|max| limit > u64::from(max))
        {
            // "204 – Requested limit is more than the Specified limit" (docs; not live).
            return StatusCode::NO_CONTENT.into_response();
        }
        let total = selected.len();
        let start = usize::try_from(request.offset)
            .unwrap_or(usize::MAX)
            .min(total);
        let end = start
            .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
            .min(total);
        let page: Vec<AnaplanEvent> = selected[start..end].iter().map(render).collect();
        let link = |offset: u64| self.link(request, base, limit, offset);
        let more = limit > 0 && end < total;
        let paging = AuditPaging {
            current_page_size: page.len(),
            total_size: total,
            off_set: request.offset,
            next_offset: more.then_some(end as u64),
            next_url: more.then(|| link(end as u64)),
            previous_url: (request.offset > 0)
                .then(|| link(request.offset.saturating_sub(limit.max(1)))),
        };
        let omit_meta =
            request.offset == 0 && total as u64 <= limit && lock(&self.faults).omit_small_meta;
        {
            let mut counters = lock(&self.counters);
            counters.pages_served += 1;
            counters.events_served += page.len() as u64;
        }
        debug!(
            from_ms = request.from_ms,
            to_ms = request.to_ms,
            offset = request.offset,
            events = page.len(),
            total,
            "served audit page"
        );
        let body = PageBody {
            meta: (!omit_meta).then_some(Meta { paging }),
            response: page,
        };
        self.respond_json(serde_json::to_vec(&body).expect("page serialises"))
    }

    /// `nextUrl`/`previousUrl` of a page.
    fn link(&self, request: &AuditRequest, base: &str, limit: u64, offset: u64) -> String {
        let mut query = Vec::new();
        if let Some(event_type) = &request.event_type {
            query.push(format!("type={}", percent_encode(event_type)));
        }
        let path = match request.echo {
            Echo::Dates => {
                query.push(format!("dateFrom={}", request.from_ms));
                query.push(format!("dateTo={}", request.to_ms));
                "events"
            }
            Echo::Interval(hours) => {
                query.push(format!("intervalInHours={hours}"));
                "events"
            }
            Echo::Search => "events/search",
        };
        query.push(format!("limit={limit}"));
        query.push(format!("offset={offset}"));
        format!("{base}/audit/api/1/{path}?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const NOW: i64 = 1_767_225_600_000;
    const DAY: i64 = 86_400_000;

    #[test]
    fn get_windows_follow_the_rules() {
        let request = parse_get(&params(&[]), NOW).unwrap();
        assert_eq!((request.from_ms, request.to_ms), (NOW - 30 * DAY, NOW));
        assert_eq!(request.echo, Echo::Dates);
        let request = parse_get(&params(&[("dateFrom", "5"), ("dateTo", "10")]), NOW).unwrap();
        assert_eq!((request.from_ms, request.to_ms), (5, 10));
        // Exactly 30 days (720 hours) is fine, one millisecond more is not.
        let to = (30 * DAY).to_string();
        assert!(parse_get(&params(&[("dateFrom", "0"), ("dateTo", &to)]), NOW).is_ok());
        let to = (30 * DAY + 1).to_string();
        assert!(parse_get(&params(&[("dateFrom", "0"), ("dateTo", &to)]), NOW).is_err());
        assert!(parse_get(&params(&[("dateFrom", "0")]), NOW).is_err());
        assert!(parse_get(&params(&[("dateFrom", "11"), ("dateTo", "10")]), NOW).is_err());
        let request = parse_get(&params(&[("intervalInHours", "720")]), NOW).unwrap();
        assert_eq!(
            (request.from_ms, request.echo),
            (NOW - 30 * DAY, Echo::Interval(720))
        );
        assert!(parse_get(&params(&[("intervalInHours", "721")]), NOW).is_err());
        assert!(parse_get(&params(&[("limit", "-1")]), NOW).is_err());
        assert!(parse_get(&params(&[("offset", "x")]), NOW).is_err());
        let request = parse_get(&params(&[("type", "nonsense")]), NOW).unwrap();
        assert_eq!(request.prefix, None);
        let request = parse_get(&params(&[("type", "user_activity")]), NOW).unwrap();
        assert_eq!(request.prefix, Some("USR-"));
    }

    #[test]
    fn search_windows_follow_the_rules() {
        let oldest = NOW - 30 * DAY;
        let request = parse_search(&params(&[]), b"", NOW, oldest).unwrap();
        assert_eq!((request.from_ms, request.to_ms), (oldest, NOW));
        let request = parse_search(&params(&[]), br#"{"from":0}"#, NOW, oldest).unwrap();
        assert_eq!((request.from_ms, request.to_ms), (0, NOW));
        let body = format!(r#"{{"from":0,"to":{}}}"#, 31 * DAY);
        assert!(parse_search(&params(&[]), body.as_bytes(), NOW, oldest).is_err());
        assert!(parse_search(&params(&[]), br#"{"interval":721}"#, NOW, oldest).is_err());
        let request = parse_search(&params(&[]), br#"{"interval":2}"#, NOW, oldest).unwrap();
        assert_eq!(request.from_ms, NOW - 2 * HOUR_MS);
        assert!(parse_search(&params(&[]), b"{", NOW, oldest).is_err());
        let request = parse_search(
            &params(&[("limit", "7"), ("offset", "3")]),
            b"{}",
            NOW,
            oldest,
        )
        .unwrap();
        assert_eq!((request.limit, request.offset), (Some(7), 3));
    }
}
