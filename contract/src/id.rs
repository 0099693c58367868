//! Snowflake execution ids (wiki/spec.md §3.1).
//!
//! Layout, most significant bit first: 1 sign bit (always 0) | 41 bits of milliseconds since
//! [`CUSTOM_EPOCH_UNIX_MS`] | 10 bits node id | 12 bits sequence.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// 2024-01-01T00:00:00Z in Unix milliseconds: the zero of an id's timestamp.
pub const CUSTOM_EPOCH_UNIX_MS: i64 = 1_704_067_200_000;

const TIMESTAMP_BITS: u32 = 41;
const NODE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const MAX_TIMESTAMP: i64 = (1 << TIMESTAMP_BITS) - 1;
const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;
/// The last Unix millisecond an id can carry (in the year 2093).
pub const MAX_UNIX_MS: i64 = CUSTOM_EPOCH_UNIX_MS + MAX_TIMESTAMP;

/// How far a generator may run ahead of the wall clock (after the clock stepped back, or after
/// more than 4,096 ids in one millisecond) before it refuses to mint. Kept far below the
/// topology grace period so an id's timestamp never outruns the routing view it was minted under.
pub const MAX_CLOCK_LEAD_MS: i64 = 1_000;

/// Errors of id parsing and minting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("execution id must be a non-negative 64-bit integer, got {0:?}")]
    InvalidId(String),
    #[error("node id {0} is out of range (0..=1023)")]
    NodeOutOfRange(u32),
    #[error("the clock ({now_unix_ms} ms) is outside the range an id can encode")]
    ClockOutOfRange { now_unix_ms: i64 },
    #[error(
        "the clock is {lead_ms} ms behind the last id minted; refusing to mint until it catches up"
    )]
    ClockBehind { lead_ms: i64 },
}

/// A snowflake execution id. In JSON it is a decimal string; inputs accept a string or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExecutionId(i64);

impl ExecutionId {
    /// Wraps a raw value; negative values are not ids.
    pub fn new(raw: i64) -> Result<Self, Error> {
        if raw < 0 {
            return Err(Error::InvalidId(raw.to_string()));
        }
        Ok(Self(raw))
    }

    /// Assembles an id from its parts, validating each against its bit width.
    pub fn from_parts(unix_ms: i64, node: NodeId, sequence: u16) -> Result<Self, Error> {
        let since_epoch = unix_ms - CUSTOM_EPOCH_UNIX_MS;
        if !(0..=MAX_TIMESTAMP).contains(&since_epoch) || sequence > MAX_SEQUENCE {
            return Err(Error::ClockOutOfRange {
                now_unix_ms: unix_ms,
            });
        }
        Ok(Self(
            (since_epoch << (NODE_BITS + SEQUENCE_BITS))
                | (i64::from(node.0) << SEQUENCE_BITS)
                | i64::from(sequence),
        ))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// Milliseconds since the Unix epoch at which the id was minted.
    pub fn unix_ms(self) -> i64 {
        (self.0 >> (NODE_BITS + SEQUENCE_BITS)) + CUSTOM_EPOCH_UNIX_MS
    }

    pub fn node(self) -> NodeId {
        NodeId(((self.0 >> SEQUENCE_BITS) & ((1 << NODE_BITS) - 1)) as u16)
    }

    pub fn sequence(self) -> u16 {
        (self.0 & i64::from(MAX_SEQUENCE)) as u16
    }
}

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ExecutionId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        // Only plain decimal digits: no sign, no whitespace, no exponent.
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidId(truncate_for_message(s)));
        }
        s.parse::<i64>()
            .map(Self)
            .map_err(|_| Error::InvalidId(truncate_for_message(s)))
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(40).collect()
}

impl Serialize for ExecutionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ExecutionId {
    /// A decimal string (as ids are written) or an integer. A visitor rather than an untagged
    /// enum: that would try the integer first and build (and drop) an error for every id
    /// written as a string, on the path of every message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = ExecutionId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an execution id: a decimal string or an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ExecutionId, E> {
                ExecutionId::new(n).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ExecutionId, E> {
                i64::try_from(n)
                    .map_err(|_| E::custom(Error::InvalidId(n.to_string())))
                    .and_then(|n| self.visit_i64(n))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ExecutionId, E> {
                s.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// A gateway's node id: 10 bits, unique among live gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct NodeId(u16);

impl NodeId {
    pub const MAX: u16 = (1 << NODE_BITS) - 1;

    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u32> for NodeId {
    type Error = Error;

    fn try_from(raw: u32) -> Result<Self, Error> {
        u16::try_from(raw)
            .ok()
            .filter(|n| *n <= Self::MAX)
            .map(Self)
            .ok_or(Error::NodeOutOfRange(raw))
    }
}

impl From<NodeId> for u32 {
    fn from(node: NodeId) -> u32 {
        u32::from(node.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Mints strictly increasing ids for one node. The caller passes the wall clock so the
/// generator stays pure and testable; callers serialise access (one generator per gateway).
#[derive(Debug)]
pub struct IdGenerator {
    node: NodeId,
    /// Timestamp (Unix ms) and sequence of the last id minted.
    last: Option<(i64, u16)>,
}

impl IdGenerator {
    pub fn new(node: NodeId) -> Self {
        Self { node, last: None }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Mints the next id given the current wall clock. When the clock steps back, or more than
    /// 4,096 ids are asked for in one millisecond, the generator keeps counting forward from the
    /// last id (borrowing up to [`MAX_CLOCK_LEAD_MS`] from the future) and refuses beyond that,
    /// so it never repeats or decreases.
    pub fn next_id(&mut self, now_unix_ms: i64) -> Result<ExecutionId, Error> {
        let (unix_ms, sequence) = match self.last {
            Some((last_ms, last_seq)) if now_unix_ms <= last_ms => {
                if last_seq < MAX_SEQUENCE {
                    (last_ms, last_seq + 1)
                } else {
                    (last_ms + 1, 0)
                }
            }
            _ => (now_unix_ms, 0),
        };
        let lead_ms = unix_ms - now_unix_ms;
        if lead_ms > MAX_CLOCK_LEAD_MS {
            return Err(Error::ClockBehind { lead_ms });
        }
        let id = ExecutionId::from_parts(unix_ms, self.node, sequence)?;
        self.last = Some((unix_ms, sequence));
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(n: u32) -> NodeId {
        NodeId::try_from(n).expect("valid node id in test")
    }

    #[test]
    fn layout_matches_spec_bit_positions() {
        let id = ExecutionId::from_parts(CUSTOM_EPOCH_UNIX_MS + 1, node(1), 1).expect("valid");
        assert_eq!(id.get(), (1 << 22) | (1 << 12) | 1);
        assert_eq!(id.unix_ms(), CUSTOM_EPOCH_UNIX_MS + 1);
        assert_eq!(id.node(), node(1));
        assert_eq!(id.sequence(), 1);
    }

    #[test]
    fn node_ids_above_ten_bits_are_rejected() {
        assert_eq!(NodeId::try_from(1024), Err(Error::NodeOutOfRange(1024)));
        assert_eq!(NodeId::try_from(1023).map(NodeId::get), Ok(1023));
    }

    #[test]
    fn timestamps_before_the_custom_epoch_cannot_be_minted() {
        let mut generator = IdGenerator::new(node(3));
        assert!(matches!(
            generator.next_id(CUSTOM_EPOCH_UNIX_MS - 1),
            Err(Error::ClockOutOfRange { .. })
        ));
    }

    #[test]
    fn clock_stepping_back_never_decreases_or_repeats() {
        let mut generator = IdGenerator::new(node(7));
        let now = 1_800_000_000_000;
        let first = generator.next_id(now).expect("mint");
        let after_step_back = generator.next_id(now - 500).expect("mint within lead");
        assert!(after_step_back > first);
        assert_eq!(after_step_back.unix_ms(), now);
        assert_eq!(after_step_back.sequence(), 1);
    }

    #[test]
    fn clock_far_behind_refuses_instead_of_running_ahead() {
        let mut generator = IdGenerator::new(node(7));
        let now = 1_800_000_000_000;
        generator.next_id(now).expect("mint");
        assert!(matches!(
            generator.next_id(now - MAX_CLOCK_LEAD_MS - 1),
            Err(Error::ClockBehind { .. })
        ));
    }

    #[test]
    fn sequence_overflow_moves_to_the_next_millisecond() {
        let mut generator = IdGenerator::new(node(1));
        let now = 1_800_000_000_000;
        let mut previous = generator.next_id(now).expect("mint");
        for _ in 0..MAX_SEQUENCE {
            previous = generator.next_id(now).expect("mint");
        }
        assert_eq!(previous.sequence(), MAX_SEQUENCE);
        let next = generator.next_id(now).expect("borrow one millisecond");
        assert!(next > previous);
        assert_eq!((next.unix_ms(), next.sequence()), (now + 1, 0));
    }

    #[test]
    fn ids_serialize_as_strings_and_accept_strings_or_numbers() {
        let id = ExecutionId::new(320_816_801_799_737_344).expect("valid");
        assert_eq!(
            serde_json::to_string(&id).expect("serialize"),
            "\"320816801799737344\""
        );
        let from_string: ExecutionId =
            serde_json::from_str("\"320816801799737344\"").expect("string");
        let from_number: ExecutionId = serde_json::from_str("320816801799737344").expect("number");
        assert_eq!(from_string, id);
        assert_eq!(from_number, id);
        assert!(serde_json::from_str::<ExecutionId>("\"-1\"").is_err());
        assert!(serde_json::from_str::<ExecutionId>("\"12a\"").is_err());
        assert!(serde_json::from_str::<ExecutionId>("-5").is_err());
        assert!(serde_json::from_str::<ExecutionId>("18446744073709551615").is_err());
        let wrong_type = serde_json::from_str::<ExecutionId>("true").expect_err("a boolean");
        assert!(
            wrong_type
                .to_string()
                .contains("decimal string or an integer"),
            "{wrong_type}"
        );
    }

    #[test]
    fn parsing_rejects_anything_but_plain_decimal_digits() {
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1e3",
            "0x10",
            "9223372036854775808",
            "abc",
        ] {
            assert!(
                bad.parse::<ExecutionId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!("42".parse::<ExecutionId>().map(ExecutionId::get), Ok(42));
    }

    proptest! {
        #[test]
        fn parts_round_trip(ms in 0..=MAX_TIMESTAMP, n in 0u32..=1023, seq in 0u16..=MAX_SEQUENCE) {
            let id = ExecutionId::from_parts(CUSTOM_EPOCH_UNIX_MS + ms, node(n), seq).expect("valid parts");
            prop_assert!(id.get() >= 0);
            prop_assert_eq!(id.unix_ms(), CUSTOM_EPOCH_UNIX_MS + ms);
            prop_assert_eq!(id.node(), node(n));
            prop_assert_eq!(id.sequence(), seq);
        }

        #[test]
        fn generator_is_strictly_increasing_under_any_clock(
            steps in proptest::collection::vec(-800i64..800, 1..2_000)
        ) {
            let mut generator = IdGenerator::new(node(5));
            let mut clock = 1_800_000_000_000i64;
            let mut previous: Option<ExecutionId> = None;
            for step in steps {
                clock += step;
                match generator.next_id(clock) {
                    Ok(id) => {
                        if let Some(p) = previous { prop_assert!(id > p); }
                        prop_assert_eq!(id.node(), node(5));
                        previous = Some(id);
                    }
                    Err(Error::ClockBehind { .. }) => {}
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod vector_tests {
    use crate::test_vectors;

    #[test]
    fn shared_snowflake_vectors_decode() {
        let vectors = test_vectors::snowflake();
        assert!(!vectors.is_empty());
        for v in vectors {
            assert_eq!(v.execution_id.unix_ms(), v.unix_ms, "{}", v.execution_id);
            assert_eq!(
                u32::from(v.execution_id.node()),
                v.node,
                "{}",
                v.execution_id
            );
            assert_eq!(v.execution_id.sequence(), v.sequence, "{}", v.execution_id);
        }
    }
}
