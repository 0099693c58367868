//! Secret headers: the values of `Authorization`, `Proxy-Authorization`, `Cookie` and the
//! API-key headers a server names, in a step's `with.headers`, are shown as `<redacted>` in
//! the event log; the worker's command keeps the real value.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;

/// Headers whose values are always secret (compared without case).
pub const ALWAYS_SECRET: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// The header names whose values are secret, lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHeaders(Arc<BTreeSet<String>>);

impl SecretHeaders {
    /// [`ALWAYS_SECRET`] and `extra` (blank names are ignored).
    pub fn new(extra: &[String]) -> Self {
        let names = ALWAYS_SECRET
            .iter()
            .map(|name| (*name).to_owned())
            .chain(extra.iter().map(|name| name.trim().to_ascii_lowercase()))
            .filter(|name| !name.is_empty())
            .collect();
        Self(Arc::new(names))
    }

    /// Whether `name`'s value is secret.
    pub fn is_secret(&self, name: &str) -> bool {
        self.0.contains(&name.to_ascii_lowercase())
    }

    /// Whether `payload.with.headers` (an event's payload) names a secret header, so that
    /// [`SecretHeaders::redact`] would change it.
    pub fn holds_secret(&self, payload: &Value) -> bool {
        payload
            .get("with")
            .and_then(|with| with.get("headers"))
            .and_then(Value::as_object)
            .is_some_and(|headers| headers.keys().any(|name| self.is_secret(name)))
    }

    /// Replaces the value of every secret header in `payload.with.headers` (an event's
    /// payload); answers whether it replaced any.
    pub fn redact(&self, payload: &mut Value) -> bool {
        let Some(Value::Object(headers)) = payload
            .get_mut("with")
            .and_then(|with| with.get_mut("headers"))
        else {
            return false;
        };
        let mut redacted = false;
        for (name, value) in headers.iter_mut() {
            if self.is_secret(name) {
                *value = Value::String(REDACTED.to_owned());
                redacted = true;
            }
        }
        redacted
    }
}

impl Default for SecretHeaders {
    /// The headers always secret, and `X-Api-Key`.
    fn default() -> Self {
        Self::new(&["X-Api-Key".to_owned()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_headers_are_redacted_whatever_their_case_and_others_kept() {
        let secrets = SecretHeaders::new(&[" X-Token ".to_owned()]);
        let mut payload = json!({"step": "a", "with": {"url": "u", "headers": {
            "authorization": "Bearer s1", "COOKIE": "s2", "Proxy-Authorization": "s3",
            "x-token": "s4", "Accept": "text/plain"}}});
        assert!(secrets.holds_secret(&payload));
        assert!(secrets.redact(&mut payload));
        assert_eq!(
            payload["with"]["headers"],
            json!({"authorization": REDACTED, "COOKIE": REDACTED,
                   "Proxy-Authorization": REDACTED, "x-token": REDACTED, "Accept": "text/plain"})
        );
        let mut plain = json!({"with": {"headers": {"Accept": "x"}}});
        assert!(!secrets.holds_secret(&plain));
        assert!(!secrets.redact(&mut plain));
        assert!(!secrets.redact(&mut json!({"with": {"ms": 1}})));
        assert!(SecretHeaders::default().is_secret("x-api-key"));
    }
}
