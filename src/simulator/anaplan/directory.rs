//! The tenant's users and the Integration API users endpoints: `GET /2/0/users`,
//! `GET /2/0/users/me` and `GET /2/0/users/{id}`.
//!
//! The directory is a pure function of the seed: `users` active or inactive users, then
//! `deleted_users` deleted ones (they act in events, but are not listed and get 404), then one
//! user per configured login.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use serde_json::{json, Value};

use super::events::hex_id;
use super::{integration_error, AnaplanEndpoint, AnaplanSim, Service};
use crate::simulator::api::percent_encode;
use crate::simulator::events::DetRng;

/// Message of the 404 for an unknown, deleted or `INTERNAL_*` user (assumed wording).
pub(crate) const USER_NOT_FOUND: &str = "User not found";
/// Page size when `/users` has no `limit` [A12].
const DEFAULT_LIMIT: u64 = 5000;
/// Fields `sort` accepts, after its mandatory `+` or `-`.
const SORT_FIELDS: &[&str] = &["firstName", "lastName", "email", "active", "lastLoginDate"];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Bob", "Chloe", "Dmitri", "Elif", "Farid", "Grace", "Hugo", "Ingrid", "Jamal",
];
const LAST_NAMES: &[&str] = &["Lovelace", "Byte", "Moreau", "Ivanova", "Santos"];

/// When a user last logged in, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LastLogin {
    At(String),
    /// `"lastLoginDate": null`.
    Null,
    /// No `lastLoginDate` key.
    Absent,
}

/// One user of the tenant.
#[derive(Debug, Clone)]
pub(crate) struct DirectoryUser {
    pub(crate) id: String,
    pub(crate) email: String,
    first_name: String,
    last_name: String,
    active: bool,
    email_opt_in: bool,
    last_login: LastLogin,
    pub(crate) deleted: bool,
}

impl DirectoryUser {
    /// The user object of the users API.
    fn to_json(&self, customer_id: &str) -> Value {
        let mut user = json!({
            "id": self.id,
            "active": self.active,
            "email": self.email,
            "emailOptIn": self.email_opt_in,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "customerId": customer_id,
        });
        match &self.last_login {
            LastLogin::At(at) => user["lastLoginDate"] = json!(at),
            LastLogin::Null => user["lastLoginDate"] = Value::Null,
            LastLogin::Absent => {}
        }
        user
    }

    fn sort_key(&self, field: &str) -> (String, bool) {
        match field {
            "firstName" => (self.first_name.to_lowercase(), true),
            "lastName" => (self.last_name.to_lowercase(), true),
            "email" => (self.email.to_lowercase(), true),
            "active" => (u8::from(self.active).to_string(), true),
            _ => match &self.last_login {
                LastLogin::At(at) => (at.clone(), true),
                // Users who never logged in sort after everyone else.
                LastLogin::Null | LastLogin::Absent => (String::new(), false),
            },
        }
    }
}

/// Every user of the tenant.
#[derive(Debug)]
pub(crate) struct Directory {
    users: Vec<DirectoryUser>,
    by_id: HashMap<String, usize>,
    /// Users `0..pool` can act in events (listed ones and deleted ones).
    pool: usize,
    /// Index of the first login user.
    first_login: usize,
}

impl Directory {
    /// The directory of `seed`: `users` listed users, `deleted` deleted ones, and one user per
    /// login email. `epoch_ms` anchors the last-login dates.
    pub(crate) fn new(
        seed: u64,
        users: u32,
        deleted: u32,
        logins: &[String],
        epoch_ms: i64,
    ) -> Self {
        let mut list = Vec::new();
        for index in 0..u64::from(users) + u64::from(deleted) {
            let mut rng = DetRng::new(&[seed, 0xD1EC, index]);
            let first = FIRST_NAMES[(index % 10) as usize];
            let last = LAST_NAMES[(index / 10 % 5) as usize];
            let suffix = if index < 50 {
                String::new()
            } else {
                (index / 50).to_string()
            };
            let last_login = match rng.below(10) {
                0 => LastLogin::Null,
                1 => LastLogin::Absent,
                _ => {
                    let ago_ms = i64::try_from(rng.below(30 * 86_400_000)).unwrap_or_default();
                    let at = DateTime::from_timestamp_millis(epoch_ms - ago_ms)
                        .unwrap_or_default()
                        .to_rfc3339_opts(SecondsFormat::Millis, true)
                        .replace('Z', "+0000");
                    LastLogin::At(at)
                }
            };
            list.push(DirectoryUser {
                id: hex_id(seed, "user", index),
                email: format!(
                    "{}.{}{suffix}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase()
                ),
                first_name: first.to_string(),
                last_name: last.to_string(),
                active: rng.below(10) != 0,
                email_opt_in: rng.chance(30),
                last_login,
                deleted: index >= u64::from(users),
            });
        }
        let pool = list.len();
        for email in logins {
            let local = email.split('@').next().unwrap_or(email);
            let mut first = local.to_string();
            if let Some(c) = first.get_mut(..1) {
                c.make_ascii_uppercase();
            }
            list.push(DirectoryUser {
                id: hex_id(seed, "login", crate::simulator::events::string_key(email)),
                email: email.to_lowercase(),
                first_name: first,
                last_name: "Account".to_string(),
                active: true,
                email_opt_in: false,
                last_login: LastLogin::Null,
                deleted: false,
            });
        }
        let by_id = list
            .iter()
            .enumerate()
            .map(|(index, user)| (user.id.clone(), index))
            .collect();
        Self {
            users: list,
            by_id,
            pool,
            first_login: pool,
        }
    }

    /// Users that can act in events.
    pub(crate) fn pool_size(&self) -> usize {
        self.pool
    }

    /// Pool user `index` (below [`Self::pool_size`]).
    pub(crate) fn pool_user(&self, index: u64) -> &DirectoryUser {
        &self.users[usize::try_from(index).unwrap_or_default() % self.pool]
    }

    /// The user of login `index` (order of the configured credentials).
    pub(crate) fn login_user(&self, index: usize) -> &DirectoryUser {
        &self.users[self.first_login + index]
    }

    /// A user the API shows (not deleted).
    pub(crate) fn get(&self, id: &str) -> Option<&DirectoryUser> {
        self.by_id
            .get(id)
            .map(|&index| &self.users[index])
            .filter(|user| !user.deleted)
    }

    /// Every user, deleted ones included (for the admin endpoint).
    pub(crate) fn all(&self) -> &[DirectoryUser] {
        &self.users
    }

    fn listed(&self) -> impl Iterator<Item = &DirectoryUser> {
        self.users.iter().filter(|user| !user.deleted)
    }
}

/// SQL `LIKE` with `%` and `_`, case-insensitive. Without wildcards the pattern matches as a
/// substring (assumed: the search parameter is undocumented).
fn like(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.to_lowercase().chars().collect();
    let text: Vec<char> = text.to_lowercase().chars().collect();
    if !pattern.iter().any(|c| matches!(c, '%' | '_')) {
        let needle: String = pattern.iter().collect();
        return text.iter().collect::<String>().contains(&needle);
    }
    // Classic wildcard matching with backtracking on the last `%`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '%')
}

/// Paging block of the users API (lowercase `offset`, `next`/`previous` URLs).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UsersPaging {
    current_page_size: usize,
    offset: u64,
    total_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
}

fn schema(base: &str) -> String {
    format!("{base}/2/0/objects/user")
}

fn success_status() -> Value {
    json!({ "code": 200, "message": "Success" })
}

/// `GET /2/0/users`.
pub(super) async fn list(
    State(sim): State<Arc<AnaplanSim>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::UsersList, &headers, &uri);
    let response = match sim.admit(&call, &headers, Service::Users).await {
        Ok(_) => sim.list_users(&params, &call.base),
        Err(response) => response,
    };
    sim.finish(call, response)
}

/// `GET /2/0/users/me`.
pub(super) async fn me(
    State(sim): State<Arc<AnaplanSim>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::UsersMe, &headers, &uri);
    let response = match sim.admit(&call, &headers, Service::Users).await {
        Ok(login) => sim.user_response(sim.directory.login_user(login), &call.base),
        Err(response) => response,
    };
    sim.finish(call, response)
}

/// `GET /2/0/users/{id}`.
pub(super) async fn get(
    State(sim): State<Arc<AnaplanSim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::UsersGet, &headers, &uri);
    let response = match sim.admit(&call, &headers, Service::Users).await {
        Ok(_) => {
            sim.note_user_lookup(&id);
            match sim.directory.get(&id) {
                Some(user) => sim.user_response(user, &call.base),
                None => integration_error(StatusCode::NOT_FOUND, USER_NOT_FOUND),
            }
        }
        Err(response) => response,
    };
    sim.finish(call, response)
}

impl AnaplanSim {
    fn user_response(&self, user: &DirectoryUser, base: &str) -> Response {
        let body = json!({
            "meta": { "schema": schema(base) },
            "status": success_status(),
            "user": user.to_json(&self.config.tenant_id),
        });
        self.respond_json(serde_json::to_vec(&body).expect("user serialises"))
    }

    fn list_users(&self, params: &[(String, String)], base: &str) -> Response {
        let get = |name: &str| {
            params
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let limit = match get("limit").map(str::parse::<u64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(limit)) if limit >= 1 => limit,
            Some(_) => {
                return integration_error(
                    StatusCode::BAD_REQUEST,
                    "limit must be a positive integer",
                )
            }
        };
        let offset = match get("offset").map(str::parse::<u64>) {
            None => 0,
            Some(Ok(offset)) => offset,
            Some(Err(_)) => {
                return integration_error(
                    StatusCode::BAD_REQUEST,
                    "offset must be a non-negative integer",
                )
            }
        };
        let sort = match get("sort").filter(|s| !s.is_empty()) {
            None => None,
            Some(sort) => {
                let (descending, field) = match sort.split_at_checked(1) {
                    Some(("+", field)) => (false, field),
                    // A `+` that arrived unencoded in a query string reads as a space.
                    Some((" ", field)) => (false, field),
                    Some(("-", field)) => (true, field),
                    _ => {
                        return integration_error(
                            StatusCode::BAD_REQUEST,
                            "sort must start with + or -",
                        )
                    }
                };
                if !SORT_FIELDS.contains(&field) {
                    return integration_error(
                        StatusCode::BAD_REQUEST,
                        &format!("sort field {field:?} is not supported"),
                    );
                }
                Some((field, descending))
            }
        };
        let search = get("s").filter(|s| !s.is_empty());

        let mut users: Vec<&DirectoryUser> = self
            .directory
            .listed()
            .filter(|user| {
                search.is_none_or(|pattern| {
                    [
                        user.email.as_str(),
                        user.first_name.as_str(),
                        user.last_name.as_str(),
                        &format!("{} {}", user.first_name, user.last_name),
                    ]
                    .iter()
                    .any(|text| like(pattern, text))
                })
            })
            .collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some((field, descending)) = sort {
            users.sort_by(|a, b| {
                let (ka, present_a) = a.sort_key(field);
                let (kb, present_b) = b.sort_key(field);
                // Missing values last in both directions; stable on id.
                present_b.cmp(&present_a).then_with(|| {
                    if descending {
                        kb.cmp(&ka)
                    } else {
                        ka.cmp(&kb)
                    }
                })
            });
        }
        let total = users.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
        let end = start
            .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
            .min(total);
        let page: Vec<Value> = users[start..end]
            .iter()
            .map(|user| user.to_json(&self.config.tenant_id))
            .collect();
        let link = |offset: u64| {
            let mut query = vec![format!("limit={limit}"), format!("offset={offset}")];
            if let Some((field, descending)) = sort {
                let sign = if descending { "-" } else { "+" };
                query.push(format!(
                    "sort={}",
                    percent_encode(&format!("{sign}{field}"))
                ));
            }
            if let Some(pattern) = search {
                query.push(format!("s={}", percent_encode(pattern)));
            }
            format!("{base}/2/0/users?{}", query.join("&"))
        };
        let paging = UsersPaging {
            current_page_size: page.len(),
            offset,
            total_size: total,
            next: (end < total).then(|| link(end as u64)),
            previous: (offset > 0).then(|| link(offset.saturating_sub(limit))),
        };
        let body = json!({
            "meta": { "paging": paging, "schema": schema(base) },
            "status": success_status(),
            "users": page,
        });
        self.respond_json(serde_json::to_vec(&body).expect("users serialise"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_is_deterministic_and_marks_deleted_users() {
        let logins = ["auditor@example.com".to_string()];
        let a = Directory::new(1, 40, 5, &logins, 1_767_225_600_000);
        let b = Directory::new(1, 40, 5, &logins, 1_767_225_600_000);
        assert_eq!(a.pool_size(), 45);
        assert_eq!(a.all().len(), 46);
        assert_eq!(a.pool_user(3).id, b.pool_user(3).id);
        assert!(a.pool_user(44).deleted && !a.pool_user(39).deleted);
        assert!(a.get(&a.pool_user(44).id).is_none());
        assert!(a.get(&a.pool_user(39).id).is_some());
        assert_eq!(a.login_user(0).email, "auditor@example.com");
        assert_eq!(a.login_user(0).first_name, "Auditor");
        assert_eq!(a.listed().count(), 41);
        let ids: std::collections::HashSet<_> = a.all().iter().map(|u| &u.id).collect();
        assert_eq!(ids.len(), 46);
        let emails: std::collections::HashSet<_> = a.all().iter().map(|u| &u.email).collect();
        assert_eq!(emails.len(), 46);
    }

    #[test]
    fn like_matches_sql_wildcards() {
        assert!(like("ada%", "ada.lovelace@example.com"));
        assert!(like("%LOVELACE%", "ada.lovelace@example.com"));
        assert!(like("a_a", "Ada"));
        assert!(!like("a_a", "Adda"));
        assert!(like("love", "ada.lovelace@example.com"));
        assert!(!like("bob%", "ada.lovelace@example.com"));
        assert!(like("%", ""));
    }
}
