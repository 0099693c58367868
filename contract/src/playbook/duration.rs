//! [`Millis`]: the durations of playbooks (`timeout`, `backoff`) and of the command line,
//! written with a unit or as milliseconds.

use serde::{Deserialize, Serialize};

/// A duration written as `"250ms"`, `"30s"`, `"5m"`, `"1h"` or a number of milliseconds;
/// stored and sent as milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "MillisInput", into = "u64")]
pub struct Millis(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum MillisInput {
    Number(u64),
    Text(String),
}

impl TryFrom<MillisInput> for Millis {
    type Error = String;

    fn try_from(input: MillisInput) -> Result<Self, String> {
        let text = match input {
            MillisInput::Number(ms) => return Ok(Millis(ms)),
            MillisInput::Text(text) => text,
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let scale = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => 0,
        };
        digits
            .parse::<u64>()
            .ok()
            .filter(|_| scale > 0)
            .and_then(|n| n.checked_mul(scale))
            .map(Millis)
            .ok_or_else(|| {
                format!("{text:?} is not a duration (examples: \"500ms\", \"30s\", \"5m\", \"1h\", 1500)")
            })
    }
}

impl std::str::FromStr for Millis {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::try_from(MillisInput::Text(text.to_owned()))
    }
}

impl From<Millis> for u64 {
    fn from(millis: Millis) -> u64 {
        millis.0
    }
}
