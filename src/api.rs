//! What every client of a SaaS API shares: sending a request counted in the
//! source's metrics, reading bodies within limits, and describing transport
//! errors without URLs or headers.

use reqwest::header::CONTENT_TYPE;

use crate::metrics::SourceMetrics;
use crate::source::SourceError;

/// Enough of an error body for its message.
pub const MAX_ERROR_BYTES: usize = 64 << 10;

/// Sends `request`, counting it by status in `metrics` ("error" when no
/// answer came); a transport failure is transient.
pub async fn send(
    request: reqwest::RequestBuilder,
    metrics: &SourceMetrics,
) -> Result<reqwest::Response, SourceError> {
    match request.send().await {
        Ok(response) => {
            metrics.request(Some(response.status().as_u16()));
            Ok(response)
        }
        Err(e) => {
            metrics.request(None);
            Err(SourceError::Transient(describe(&e)))
        }
    }
}

/// The body of a successful answer, which must be JSON and at most `limit`
/// bytes (anything else, like a proxy's HTML page, is transient).
pub async fn json_body(response: reqwest::Response, limit: usize) -> Result<Vec<u8>, SourceError> {
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !json {
        return Err(SourceError::Transient(format!(
            "HTTP {} with a content type other than JSON: {:?}",
            response.status(),
            response.headers().get(CONTENT_TYPE)
        )));
    }
    read_limited(response, limit).await
}

/// Reads a body of at most `limit` bytes; a longer one is a transient
/// failure (a broken proxy, say) and the request is made again later.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, SourceError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(SourceError::Transient(format!(
            "response body of {} bytes exceeds the {limit}-byte limit",
            response.content_length().unwrap_or_default()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| SourceError::Transient(format!("reading the response: {}", describe(&e))))?
    {
        if body.len() + chunk.len() > limit {
            return Err(SourceError::Transient(format!(
                "response body exceeds the {limit}-byte limit"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Up to `limit` bytes of a body, whatever its length; errors end it early.
pub async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == limit {
            break;
        }
    }
    body
}

/// A reqwest error with its causes, without the URL (which is logged as a
/// field where it matters) and never with headers.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
