//! The auth service: `POST /token/authenticate` (basic and certificate auth),
//! `POST /token/refresh`, `GET /token/validate` and `POST /token/logout` [A11].
//!
//! Tokens expire `token_ttl` after they were issued or last refreshed, on the simulated
//! clock. A refresh keeps the token value and its ids and moves the expiry (as observed live).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use tracing::debug;

use super::certs::CertLoginError;
use super::{lock, status_error, ttl_ms, AnaplanEndpoint, AnaplanSim};

/// One issued token. No `Debug`: the store is keyed by token values.
#[derive(Clone)]
pub(crate) struct TokenRecord {
    login: usize,
    token_id: String,
    refresh_token_id: String,
    expires_ms: i64,
}

/// Issued tokens by value. No `Debug`, so token values cannot reach a log.
#[derive(Default)]
pub(crate) struct TokenStore {
    tokens: HashMap<String, TokenRecord>,
}

/// A random UUID-shaped id, as Anaplan's `tokenId` and `refreshTokenId`.
fn uuid() -> String {
    let v: u128 = rand::random();
    let hex = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl TokenStore {
    fn issue(&mut self, login: usize, now_ms: i64, ttl_ms: i64) -> (String, TokenRecord) {
        self.tokens.retain(|_, record| record.expires_ms > now_ms);
        let value = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 48]>());
        let record = TokenRecord {
            login,
            token_id: uuid(),
            refresh_token_id: uuid(),
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        self.tokens.insert(value.clone(), record.clone());
        (value, record)
    }

    /// The live record of `token`.
    fn live(&mut self, token: &str, now_ms: i64) -> Option<&mut TokenRecord> {
        self.tokens
            .get_mut(token)
            .filter(|record| record.expires_ms > now_ms)
    }

    /// The login of a live token.
    pub(crate) fn login_of(&mut self, token: &str, now_ms: i64) -> Option<usize> {
        self.live(token, now_ms).map(|record| record.login)
    }

    pub(crate) fn revoke(&mut self, token: &str) -> bool {
        self.tokens.remove(token).is_some()
    }

    pub(crate) fn revoke_all(&mut self) {
        self.tokens.clear();
    }
}

/// The token of an `Authorization: AnaplanAuthToken <token>` header, if that is what the
/// request carries.
pub(crate) fn token_header(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("AnaplanAuthToken") && !token.is_empty()).then_some(token)
}

fn bad_header(message: &str) -> Response {
    status_error(StatusCode::BAD_REQUEST, "FAILURE_BAD_HEADER", message)
}

fn bad_credential(message: &str) -> Response {
    status_error(StatusCode::UNAUTHORIZED, "FAILURE_BAD_CREDENTIAL", message)
}

fn token_info(value: Option<&str>, record: &TokenRecord) -> Value {
    let mut info = json!({
        "expiresAt": record.expires_ms,
        "tokenId": record.token_id,
        "refreshTokenId": record.refresh_token_id,
    });
    if let Some(value) = value {
        info["tokenValue"] = json!(value);
    }
    info
}

/// `POST /token/authenticate`.
pub(super) async fn authenticate(
    State(sim): State<Arc<AnaplanSim>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::TokenAuthenticate, &headers, &uri);
    let response = sim.authenticate(&headers, &body, &call.base);
    sim.finish(call, response)
}

/// `POST /token/refresh`.
pub(super) async fn refresh(
    State(sim): State<Arc<AnaplanSim>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::TokenRefresh, &headers, &uri);
    let response = sim.with_token(&headers, |sim, token, now_ms| {
        let ttl = ttl_ms(sim.config.token_ttl);
        let mut tokens = lock(&sim.tokens);
        let record = tokens.live(token, now_ms)?;
        record.expires_ms = now_ms.saturating_add(ttl);
        let body = json!({
            "meta": { "validationUrl": format!("{}/token/validate", call.base) },
            "status": "SUCCESS",
            "statusMessage": "Token refreshed",
            "tokenInfo": token_info(Some(token), record),
        });
        Some((StatusCode::OK, Json(body)).into_response())
    });
    sim.finish(call, response)
}

/// `GET /token/validate`.
pub(super) async fn validate(
    State(sim): State<Arc<AnaplanSim>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::TokenValidate, &headers, &uri);
    let response = sim.with_token(&headers, |sim, token, now_ms| {
        let record = lock(&sim.tokens).live(token, now_ms)?.clone();
        let user = sim.directory.login_user(record.login);
        let body = json!({
            "status": "SUCCESS",
            "statusMessage": "Token validated",
            "tokenInfo": token_info(None, &record),
            "userInfo": {
                "userGuid": user.id,
                "userId": user.email,
                "customerGuid": sim.config.tenant_id,
            },
        });
        Some((StatusCode::OK, Json(body)).into_response())
    });
    sim.finish(call, response)
}

/// `POST /token/logout`.
pub(super) async fn logout(
    State(sim): State<Arc<AnaplanSim>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let call = sim.begin(AnaplanEndpoint::TokenLogout, &headers, &uri);
    let response = sim.with_token(&headers, |sim, token, now_ms| {
        let mut tokens = lock(&sim.tokens);
        tokens.live(token, now_ms)?;
        tokens.revoke(token);
        Some(StatusCode::NO_CONTENT.into_response())
    });
    sim.finish(call, response)
}

impl AnaplanSim {
    /// Runs `action` for a request to a token endpoint: injected failures first, then the
    /// header (400 unless `AnaplanAuthToken`), then `action`, whose `None` means the token is
    /// unknown, expired or logged out (401).
    fn with_token(
        &self,
        headers: &HeaderMap,
        action: impl FnOnce(&Self, &str, i64) -> Option<Response>,
    ) -> Response {
        if let Some(code) = self.injected_status(true) {
            let reason = code.canonical_reason().unwrap_or("Error");
            return status_error(code, "FAILURE_INTERNAL_ERROR", reason);
        }
        let Some(token) = token_header(headers) else {
            return bad_header("Authorization header must be AnaplanAuthToken <token>");
        };
        action(self, token, self.now_ms())
            .unwrap_or_else(|| bad_credential("Invalid, expired or logged-out token"))
    }

    fn authenticate(&self, headers: &HeaderMap, body: &[u8], base: &str) -> Response {
        if let Some(code) = self.injected_status(true) {
            let reason = code.canonical_reason().unwrap_or("Error");
            return status_error(code, "FAILURE_INTERNAL_ERROR", reason);
        }
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return bad_header("Missing Authorization header");
        };
        let Some((scheme, credentials)) = value.split_once(' ') else {
            return bad_header("Malformed Authorization header");
        };
        let now_ms = self.now_ms();
        let login = if scheme.eq_ignore_ascii_case("Basic") {
            let decoded = STANDARD
                .decode(credentials.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let Some((email, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return bad_header("Malformed basic credentials");
            };
            match self.login_index(email) {
                Some(index) if self.config.credentials[index].password == password => index,
                _ => {
                    debug!("basic auth with bad credentials");
                    return bad_credential("Bad credentials");
                }
            }
        } else if scheme.eq_ignore_ascii_case("CACertificate") {
            match self.certs.verify_login(credentials, body, now_ms) {
                Ok(email) => match self.login_index(&email) {
                    Some(index) => index,
                    None => return bad_credential("No user for this certificate"),
                },
                Err(CertLoginError::BadHeader(message)) => return bad_header(message),
                Err(CertLoginError::BadBody(message)) => {
                    return status_error(StatusCode::BAD_REQUEST, "FAILURE_BAD_REQUEST", message)
                }
                Err(CertLoginError::Rejected(message)) => {
                    debug!(message, "certificate login rejected");
                    return bad_credential(message);
                }
            }
        } else {
            return bad_header("Unsupported authorization scheme");
        };
        let (value, record) =
            lock(&self.tokens).issue(login, now_ms, ttl_ms(self.config.token_ttl));
        lock(&self.counters).tokens_issued += 1;
        let body = json!({
            "meta": { "validationUrl": format!("{base}/token/validate") },
            "status": "SUCCESS",
            "statusMessage": "Login successful",
            "tokenInfo": token_info(Some(&value), &record),
        });
        (StatusCode::CREATED, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn token_headers_are_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(token_header(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("AnaplanAuthToken abc"),
        );
        assert_eq!(token_header(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(token_header(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("AnaplanAuthToken "),
        );
        assert_eq!(token_header(&headers), None);
    }

    #[test]
    fn tokens_expire_and_refresh_keeps_the_value() {
        let mut store = TokenStore::default();
        let (value, record) = store.issue(1, 1000, 500);
        assert_eq!(record.expires_ms, 1500);
        assert_eq!(store.login_of(&value, 1499), Some(1));
        assert_eq!(store.login_of(&value, 1500), None);
        assert_eq!(store.login_of("other", 1000), None);
        store.live(&value, 1400).unwrap().expires_ms = 2000;
        assert_eq!(store.login_of(&value, 1999), Some(1));
        assert!(store.revoke(&value));
        assert_eq!(store.login_of(&value, 1000), None);
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
