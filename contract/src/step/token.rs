//! [`AttemptToken`]: the secret of one attempt. The shard makes one when it dispatches an
//! attempt, stores it with the step's row and sends it in the command; the worker sends it back
//! in every heartbeat and in its report, and the shard records neither unless it matches. A
//! client that can publish a result but never saw the command cannot forge one.
//!
//! The token never prints: `Debug` and `Display` show `<redacted>`, so it reaches no log,
//! error or event by accident. On the wire it is 32 lowercase hex digits.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of a token: 128 random bits.
pub const TOKEN_BYTES: usize = 16;

/// The secret of one attempt of one step (see the module documentation). Equality is
/// constant-time.
#[derive(Clone, Copy)]
pub struct AttemptToken([u8; TOKEN_BYTES]);

impl AttemptToken {
    /// A token of these bytes: they must come from a CSPRNG (the shard's `getrandom`).
    pub const fn from_bytes(bytes: [u8; TOKEN_BYTES]) -> Self {
        Self(bytes)
    }

    /// A token as stored (`bytea`); `None` when it is not [`TOKEN_BYTES`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The bytes, to store; never to print.
    pub const fn expose(&self) -> &[u8; TOKEN_BYTES] {
        &self.0
    }

    /// Whether a report or heartbeat carrying `sent` may speak for an attempt whose row holds
    /// `stored`. A row without a token (stored before tokens existed) admits anything, as
    /// before; a row with one admits only that token, compared in constant time.
    pub fn admits(stored: Option<&Self>, sent: Option<&Self>) -> bool {
        match (stored, sent) {
            (None, _) => true,
            (Some(stored), Some(sent)) => stored == sent,
            (Some(_), None) => false,
        }
    }
}

/// Constant-time: every byte is compared whatever the first difference, so the time taken
/// says nothing about how much of a guess was right.
impl PartialEq for AttemptToken {
    fn eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Eq for AttemptToken {}

impl fmt::Debug for AttemptToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttemptToken(<redacted>)")
    }
}

impl fmt::Display for AttemptToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for AttemptToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(TOKEN_BYTES * 2);
        for byte in self.0 {
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for AttemptToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || serde::de::Error::custom("an attempt token is 32 hex digits");
        if text.len() != TOKEN_BYTES * 2 {
            return Err(invalid());
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(fill: u8) -> AttemptToken {
        AttemptToken::from_bytes([fill; TOKEN_BYTES])
    }

    #[test]
    fn a_token_never_prints() {
        let secret = AttemptToken::from_bytes(*b"\xab\xcd0123456789abcd");
        let hex = serde_json::to_value(secret).expect("serialize");
        let hex = hex.as_str().expect("a string");
        assert_eq!(hex, "abcd3031323334353637383961626364");
        for shown in [
            format!("{secret:?}"),
            format!("{secret}"),
            format!("{:?}", Some(secret)),
        ] {
            assert!(shown.contains("redacted"), "{shown}");
            assert!(!shown.contains(hex) && !shown.contains("abcd"), "{shown}");
        }
    }

    #[test]
    fn tokens_round_trip_as_hex_and_refuse_anything_else() {
        let secret = token(0x5a);
        let value = serde_json::to_value(secret).expect("serialize");
        assert_eq!(value, serde_json::json!("5a".repeat(TOKEN_BYTES)));
        let back: AttemptToken = serde_json::from_value(value).expect("parse");
        assert_eq!(back, secret);
        for bad in [
            "",
            "5a",
            &"zz".repeat(TOKEN_BYTES),
            &"5a".repeat(TOKEN_BYTES + 1),
            "é",
        ] {
            assert!(
                serde_json::from_value::<AttemptToken>(serde_json::json!(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_value::<AttemptToken>(serde_json::json!(7)).is_err());
    }

    #[test]
    fn a_row_with_a_token_admits_only_that_token() {
        let (stored, other) = (token(1), token(2));
        let mut last_byte_differs = *stored.expose();
        last_byte_differs[TOKEN_BYTES - 1] ^= 1;
        let close = AttemptToken::from_bytes(last_byte_differs);
        assert!(AttemptToken::admits(Some(&stored), Some(&token(1))));
        assert!(!AttemptToken::admits(Some(&stored), Some(&other)));
        assert!(!AttemptToken::admits(Some(&stored), Some(&close)));
        assert!(!AttemptToken::admits(Some(&stored), None));
        // A row stored before tokens existed fences by attempt alone, as it did.
        assert!(AttemptToken::admits(None, None));
        assert!(AttemptToken::admits(None, Some(&other)));
        assert_eq!(AttemptToken::from_slice(stored.expose()), Some(stored));
        assert_eq!(AttemptToken::from_slice(&[1; 15]), None);
    }
}
