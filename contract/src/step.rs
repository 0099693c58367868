//! The two numbers that name one try of one step: [`StepIndex`], its position in the playbook,
//! and [`Attempt`], which try it is. A worker's report is fenced by both (wiki/spec.md §4.3),
//! and by the attempt's secret, [`AttemptToken`].
//!
//! On the wire they are plain JSON numbers (`serde(transparent)`); the newtypes keep them from
//! being swapped with each other or with counts.

use std::fmt;

use serde::{Deserialize, Serialize};

mod token;

pub use token::{AttemptToken, TOKEN_BYTES};

/// The position of a step in its playbook's `steps`, from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StepIndex(u32);

impl StepIndex {
    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// As an index into the playbook's steps (and the execution's step states).
    pub fn index(self) -> usize {
        // A u32 fits a usize on every platform this builds for (32 and 64 bits).
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    /// The steps of a playbook with `len` steps, in order. A playbook holds at most
    /// [`crate::playbook::MAX_STEPS`] steps, so every one has an index.
    pub fn all(len: usize) -> impl Iterator<Item = Self> {
        (0..u32::try_from(len).unwrap_or(u32::MAX)).map(Self)
    }
}

impl fmt::Display for StepIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Which try of a step: 1 for the first dispatch, one more for each retry; 0 before the first
/// dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attempt(u32);

impl Attempt {
    /// A step not dispatched yet.
    pub const NONE: Self = Self(0);
    /// The first dispatch of a step.
    pub const FIRST: Self = Self(1);

    pub const fn new(attempt: u32) -> Self {
        Self(attempt)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_are_plain_numbers_on_the_wire() {
        let pair = (StepIndex::new(3), Attempt::new(2));
        let value = serde_json::to_value(pair).expect("serialize");
        assert_eq!(value, serde_json::json!([3, 2]));
        let back: (StepIndex, Attempt) = serde_json::from_value(value).expect("parse");
        assert_eq!(back, pair);
        assert!(serde_json::from_value::<Attempt>(serde_json::json!(-1)).is_err());
    }

    #[test]
    fn steps_are_numbered_from_zero_and_attempts_count_on() {
        let all: Vec<u32> = StepIndex::all(3).map(StepIndex::get).collect();
        assert_eq!(all, [0, 1, 2]);
        assert_eq!(StepIndex::new(2).index(), 2);
        assert_eq!(Attempt::NONE.next(), Attempt::FIRST);
        assert_eq!(Attempt::new(u32::MAX).next(), Attempt::new(u32::MAX));
    }
}
