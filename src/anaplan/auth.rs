//! Anaplan's token service: basic and certificate logins, refresh before
//! the 35-minute expiry, and a pre-issued token kept alive.
//!
//! Every request carries `Authorization: AnaplanAuthToken <token>`. The
//! token is refreshed proactively five minutes before it expires (one
//! refresh at a time); after an unexpected 401 the caller drops it
//! ([`Auth::invalidate_if_current`]) and the next request logs in again,
//! once.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA512};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;
use tokio::sync::Mutex;

use crate::config::{AnaplanConfig, AnaplanCredentials};
use crate::secret::Secret;
use crate::source::SourceError;

/// Tokens live 35 minutes; this long before, a new one is fetched.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Without an expiry from the service (a pre-issued token), assume this.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Random bytes signed in a certificate login (the service wants 100+).
const NONCE_LEN: usize = 150;

/// In the message of an error from the token service itself: the
/// credentials were refused, so logging in again would only repeat it.
pub const LOGIN_REFUSED: &str = "was refused by the token service";

/// Only the `CERTIFICATE` blocks of a PEM file: a combined certificate and
/// key file must never send its key. `None` if it holds no certificate.
pub fn certificates_only(pem: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in pem.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            inside = false;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Parses an RSA private key (PKCS #8 or PKCS #1 PEM), as certificate
/// logins need; the error names what is wrong without the key.
pub fn load_private_key(pem: &str) -> Result<RsaKeyPair, String> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "is not a PEM private key (PKCS #8 or PKCS #1 RSA)".to_string())?;
    match der {
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        _ => return Err("is not an RSA private key".to_string()),
    }
    .map_err(|e| format!("is not a usable RSA private key: {e}"))
}

#[derive(Debug)]
struct Token {
    value: Secret,
    refresh_at: tokio::time::Instant,
}

/// Logs in and keeps a token fresh.
#[derive(Debug)]
pub struct Auth {
    http: reqwest::Client,
    auth_url: String,
    credentials: AnaplanCredentials,
    token: Mutex<Option<Token>>,
}

impl Auth {
    pub fn new(config: &AnaplanConfig, http: reqwest::Client) -> Self {
        Self {
            http,
            auth_url: config.auth_url.clone(),
            credentials: config.credentials.clone(),
            token: Mutex::new(None),
        }
    }

    /// The `Authorization` header for the next request: the current token,
    /// refreshed or obtained first when needed. One caller at a time
    /// refreshes; the others wait for its token.
    pub async fn header(&self) -> Result<HeaderValue, SourceError> {
        let mut token = self.token.lock().await;
        let now = tokio::time::Instant::now();
        let needs = match token.as_ref() {
            None => true,
            Some(t) => now >= t.refresh_at,
        };
        if needs {
            let fresh = match token.take() {
                // A live token is extended; if that fails, log in anew.
                Some(old) => match self.refresh(&old.value).await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        tracing::info!(error = %error, "token refresh failed; logging in again");
                        self.login().await?
                    }
                },
                None => self.login().await?,
            };
            *token = Some(fresh);
        }
        let value = token.as_ref().map(|t| t.value.expose()).unwrap_or_default();
        let mut header =
            HeaderValue::from_str(&format!("AnaplanAuthToken {value}")).map_err(|_| {
                SourceError::Rejected {
                    status: 0,
                    message: "the token contains characters not allowed in an HTTP header".into(),
                }
            })?;
        header.set_sensitive(true);
        Ok(header)
    }

    /// Drops the token after a 401 with `rejected`, so the next
    /// [`Auth::header`] logs in again (a pre-issued token cannot be
    /// replaced: it is refreshed). Only if `rejected` is still the token in
    /// use: concurrent 401s must not discard a token just renewed.
    pub async fn invalidate_if_current(&self, rejected: &HeaderValue) {
        let mut token = self.token.lock().await;
        let current = token
            .as_ref()
            .map(|t| format!("AnaplanAuthToken {}", t.value.expose()));
        if current.as_deref().map(str::as_bytes) == Some(rejected.as_bytes()) {
            Self::drop_token(&mut token, &self.credentials);
        }
    }

    fn drop_token(token: &mut Option<Token>, credentials: &AnaplanCredentials) {
        if let Some(t) = token.as_mut() {
            // Due now: refreshed (or, failing that, logged in again).
            t.refresh_at = tokio::time::Instant::now();
        }
        if !matches!(credentials, AnaplanCredentials::Token(_)) {
            *token = None;
        }
    }

    /// A new token from the credentials.
    async fn login(&self) -> Result<Token, SourceError> {
        let url = format!("{}/token/authenticate", self.auth_url);
        let request = match &self.credentials {
            AnaplanCredentials::Basic { user, password } => {
                let basic = STANDARD.encode(format!("{user}:{}", password.expose()));
                let mut value = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
                    SourceError::Rejected {
                        status: 0,
                        message:
                            "the user or password contains characters not allowed in an HTTP header"
                                .into(),
                    }
                })?;
                value.set_sensitive(true);
                self.http.post(&url).header(AUTHORIZATION, value)
            }
            AnaplanCredentials::Certificate {
                certificate_pem,
                private_key,
            } => {
                let key = load_private_key(private_key.expose()).map_err(|message| {
                    SourceError::Rejected {
                        status: 0,
                        message: format!("the private key {message}"),
                    }
                })?;
                let nonce: [u8; NONCE_LEN] = rand::random();
                let mut signature = vec![0; key.public_modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA512,
                    &SystemRandom::new(),
                    &nonce,
                    &mut signature,
                )
                .map_err(|_| SourceError::Rejected {
                    status: 0,
                    message: "signing the login data with the private key failed".into(),
                })?;
                let header = format!(
                    "CACertificate {}",
                    STANDARD.encode(certificate_pem.as_bytes())
                );
                let mut header =
                    HeaderValue::from_str(&header).map_err(|_| SourceError::Rejected {
                        status: 0,
                        message: "the certificate does not fit in an HTTP header".into(),
                    })?;
                header.set_sensitive(true);
                self.http
                    .post(&url)
                    .header(AUTHORIZATION, header)
                    .header(CONTENT_TYPE, "application/json")
                    .body(
                        serde_json::json!({
                            "encodedData": STANDARD.encode(nonce),
                            "encodedSignedData": STANDARD.encode(&signature),
                        })
                        .to_string(),
                    )
            }
            // Nothing to log in with: refresh it at once, which says how
            // long it lives (and whether it still does).
            AnaplanCredentials::Token(token) => return self.refresh(token).await,
        };
        let response = request.send().await.map_err(|e| {
            SourceError::Transient(format!("logging in: {}", crate::api::describe(&e)))
        })?;
        self.token_from(response, "logging in").await
    }

    /// Extends `current` (`POST /token/refresh`).
    async fn refresh(&self, current: &Secret) -> Result<Token, SourceError> {
        let url = format!("{}/token/refresh", self.auth_url);
        let mut header =
            HeaderValue::from_str(&format!("AnaplanAuthToken {}", current.expose()))
                .map_err(|_| SourceError::Transient("token is not a header value".into()))?;
        header.set_sensitive(true);
        let response = self
            .http
            .post(&url)
            .header(AUTHORIZATION, header)
            .send()
            .await
            .map_err(|e| {
                SourceError::Transient(format!(
                    "refreshing the token: {}",
                    crate::api::describe(&e)
                ))
            })?;
        match self.token_from(response, "refreshing the token").await {
            // The service may answer without the value: it keeps the same.
            Ok(mut token) if token.value.expose().is_empty() => {
                token.value = current.clone();
                Ok(token)
            }
            other => other,
        }
    }

    async fn token_from(
        &self,
        response: reqwest::Response,
        doing: &str,
    ) -> Result<Token, SourceError> {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let service_status = json["status"].as_str().unwrap_or_default();
        let message = json["statusMessage"].as_str().unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(SourceError::RateLimited { retry_after: None });
        }
        if status.is_server_error() {
            return Err(SourceError::Transient(format!("{doing}: HTTP {status}")));
        }
        if !status.is_success() || service_status.contains("FAILURE") {
            return Err(SourceError::Unauthorized {
                status: status.as_u16(),
                message: format!(
                    "{doing} {LOGIN_REFUSED} ({}): {}",
                    if service_status.is_empty() {
                        "no status"
                    } else {
                        service_status
                    },
                    if message.is_empty() {
                        "check the credentials"
                    } else {
                        message
                    }
                ),
            });
        }
        let info = &json["tokenInfo"];
        let value = info["tokenValue"]
            .as_str()
            .or_else(|| info["token"].as_str())
            .unwrap_or_default()
            .to_string();
        let lifetime = info["expiresAt"]
            .as_i64()
            .map(|at| {
                let left = at - chrono::Utc::now().timestamp_millis();
                Duration::from_millis(u64::try_from(left).unwrap_or(0))
            })
            .unwrap_or(ASSUMED_LIFETIME);
        // Refresh five minutes early, or halfway for short lifetimes; never
        // more often than every second (a clock far ahead of the service's
        // would otherwise refresh before every request).
        let early = REFRESH_BEFORE.min(lifetime / 2);
        let after = lifetime.saturating_sub(early).max(Duration::from_secs(1));
        Ok(Token {
            value: Secret::new(value),
            refresh_at: tokio::time::Instant::now() + after,
        })
    }
}

#[async_trait::async_trait]
impl super::users::AuthHeader for Auth {
    async fn header(&self) -> Result<HeaderValue, SourceError> {
        Auth::header(self).await
    }

    async fn rejected(&self, header: &HeaderValue) {
        self.invalidate_if_current(header).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_combined_file_sends_only_its_certificates() {
        let pem = "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let only = certificates_only(pem).unwrap();
        assert_eq!(
            only,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        );
        assert!(
            certificates_only("-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n")
                .is_none()
        );
    }

    #[test]
    fn private_keys_are_checked_without_echoing_them() {
        let error =
            load_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .unwrap_err();
        assert!(!error.contains("AAAA"), "{error}");
        assert!(load_private_key("not a key").is_err());
    }
}
