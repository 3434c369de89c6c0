//! A string that must never leave the process: API tokens, passwords.
//!
//! [`Secret`] has no `Display`, no `Serialize`, and a `Debug` that prints a
//! placeholder, so a secret cannot reach a log line, an error message or the
//! state database by accident. The only way to read it is [`Secret::expose`],
//! which is easy to grep for.

use std::fmt;

/// A credential. Reading it requires an explicit [`Secret::expose`] call.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The credential itself, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("hunter2-token");
        let shown = format!("{secret:?} {:#?}", Some(&secret));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redacted"));
        assert_eq!(secret.expose(), "hunter2-token");
    }
}
