//! Opaque, signed pagination tokens.
//!
//! A token is `base64url(JSON payload) "." base64url(truncated HMAC-SHA256)`. The key is
//! derived from the seed only, so tokens issued before a restart with the same seed stay
//! valid, while any edit to the payload is detected. The payload binds the token to a
//! workspace and to a fingerprint of the full filter set, and records where in the stream the
//! next page starts and when (simulated time) the token was issued.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::timeline::StreamCursor;

/// Bytes of the MAC kept in the token; 128 bits is plenty to detect tampering.
const MAC_LEN: usize = 16;

/// The signed content of an offset token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OffsetPayload {
    /// Workspace gid.
    #[serde(rename = "w")]
    pub(crate) workspace: String,
    /// Fingerprint of the filter set (see `Filters::fingerprint`).
    #[serde(rename = "f")]
    pub(crate) filters: String,
    /// Timeline events before the position.
    #[serde(rename = "t")]
    pub(crate) timeline: u64,
    /// Extra (late or generated) events before the position.
    #[serde(rename = "x")]
    pub(crate) extras: u64,
    /// Random id of the issuing process; extras are only meaningful within it.
    #[serde(rename = "p")]
    pub(crate) process: u32,
    /// Simulated time of issue, in Unix milliseconds.
    #[serde(rename = "at")]
    pub(crate) issued_ms: i64,
}

impl OffsetPayload {
    pub(crate) fn cursor(&self) -> StreamCursor {
        StreamCursor {
            timeline: self.timeline,
            extras: self.extras,
        }
    }
}

/// Signs and verifies tokens with a key derived from the seed.
#[derive(Clone)]
pub(crate) struct OffsetCodec {
    key: [u8; 32],
}

impl OffsetCodec {
    pub(crate) fn new(seed: u64) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"auditrelay-simulator offset key v1");
        hasher.update(seed.to_le_bytes());
        Self {
            key: hasher.finalize().into(),
        }
    }

    pub(crate) fn encode(&self, payload: &OffsetPayload) -> String {
        let json = serde_json::to_vec(payload).expect("offset payload serialises");
        let body = URL_SAFE_NO_PAD.encode(json);
        let mac = self.mac(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// The payload of a well-formed token with a valid signature, else `None`.
    pub(crate) fn decode(&self, token: &str) -> Option<OffsetPayload> {
        let (body, mac) = token.split_once('.')?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let expected = self.mac(body.as_bytes());
        // Constant-time comparison; cheap, and the habit is worth keeping even in a fake.
        if mac.len() != MAC_LEN
            || mac
                .iter()
                .zip(expected)
                .fold(0, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
    }

    /// Truncated HMAC-SHA256 (RFC 2104) of `message`.
    fn mac(&self, message: &[u8]) -> [u8; MAC_LEN] {
        let mut inner_pad = [0x36_u8; 64];
        let mut outer_pad = [0x5c_u8; 64];
        for (i, byte) in self.key.iter().enumerate() {
            inner_pad[i] ^= byte;
            outer_pad[i] ^= byte;
        }
        let inner = Sha256::new()
            .chain_update(inner_pad)
            .chain_update(message)
            .finalize();
        let outer = Sha256::new()
            .chain_update(outer_pad)
            .chain_update(inner)
            .finalize();
        let mut truncated = [0_u8; MAC_LEN];
        truncated.copy_from_slice(&outer[..MAC_LEN]);
        truncated
    }
}

/// Issue times and the `expire_offsets` fault.
///
/// Expiring records a cut-off at or after every issue time handed out so far; tokens issued
/// later are stamped strictly after it, even within the same millisecond or if the simulated
/// clock was moved back. The cut-off is process state, so a restart forgets it.
#[derive(Debug, Default)]
pub(crate) struct OffsetClock {
    last_issued_ms: Option<i64>,
    expired_through_ms: Option<i64>,
}

impl OffsetClock {
    /// Issue time for a token created at simulated time `now_ms`.
    pub(crate) fn issue(&mut self, now_ms: i64) -> i64 {
        let floor = self.expired_through_ms.map_or(i64::MIN, |cut| cut + 1);
        let issued = now_ms.max(floor);
        self.last_issued_ms = Some(self.last_issued_ms.map_or(issued, |last| last.max(issued)));
        issued
    }

    /// Invalidates every token issued so far.
    pub(crate) fn expire_all(&mut self, now_ms: i64) {
        self.expired_through_ms = Some(self.last_issued_ms.map_or(now_ms, |last| last.max(now_ms)));
    }

    /// Whether a token issued at `issued_ms` is still accepted at `now_ms`. Tokens stamped in
    /// the future (issued before a restart that reset a clock advance) are accepted.
    pub(crate) fn is_live(&self, issued_ms: i64, now_ms: i64, ttl_ms: i64) -> bool {
        let expired = self.expired_through_ms.is_some_and(|cut| issued_ms <= cut);
        !expired && now_ms.saturating_sub(issued_ms) <= ttl_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> OffsetPayload {
        OffsetPayload {
            workspace: "1200000000000000".into(),
            filters: "00ff".into(),
            timeline: 42,
            extras: 1,
            process: 7,
            issued_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let codec = OffsetCodec::new(7);
        let token = codec.encode(&payload());
        assert_eq!(codec.decode(&token), Some(payload()));
        assert_eq!(OffsetCodec::new(7).decode(&token), Some(payload()));
        assert_eq!(OffsetCodec::new(8).decode(&token), None);

        let mut forged = payload();
        forged.timeline = 1;
        let forged_body = codec.encode(&forged);
        let (forged_body, _) = forged_body.split_once('.').unwrap();
        let (_, mac) = token.split_once('.').unwrap();
        assert_eq!(codec.decode(&format!("{forged_body}.{mac}")), None);
        assert_eq!(codec.decode("garbage"), None);
        assert_eq!(codec.decode("a.b"), None);
        assert_eq!(codec.decode(""), None);
    }

    #[test]
    fn expiry_covers_every_token_issued_before_it() {
        let mut clock = OffsetClock::default();
        let first = clock.issue(1_000);
        assert!(clock.is_live(first, 1_000, 60_000));
        assert!(!clock.is_live(first, 61_001, 60_000));
        clock.expire_all(1_000);
        assert!(!clock.is_live(first, 1_000, 60_000));
        // Same millisecond as the expiry: still a fresh, valid token.
        let second = clock.issue(1_000);
        assert!(second > first);
        assert!(clock.is_live(second, 1_000, 60_000));
        // Issue times from the future (clock advance lost by a restart) are accepted.
        assert!(clock.is_live(5_000, 1_000, 60_000));
    }
}
