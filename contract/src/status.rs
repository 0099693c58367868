//! The lifecycle states of an execution and of its steps (wiki/spec.md §4.2): the names the
//! wire, the database and the event log share.
//!
//! They sit in a module of their own because every layer names them: the engine moves them,
//! messages carry them, the server stores them.

use serde::{Deserialize, Serialize};

/// Lifecycle state of an execution (wiki/spec.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl ExecutionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// Lifecycle of one step: `pending → dispatched → running → succeeded | failed | skipped |
/// cancelled`; a retry goes back to `dispatched` with the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Dispatched,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Handed to a worker and not finished: the attempt holds a lease.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for name in ["pending", "running", "succeeded", "failed", "cancelled"] {
            let status = ExecutionStatus::parse(name).expect("known status");
            assert_eq!(status.as_str(), name);
            assert_eq!(
                serde_json::to_value(status).expect("serialize"),
                serde_json::json!(name)
            );
        }
        assert_eq!(ExecutionStatus::parse("done"), None);
    }

    #[test]
    fn step_status_names_are_their_wire_names() {
        for status in StepStatus::ALL {
            assert_eq!(StepStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).expect("serialize"),
                serde_json::json!(status.as_str())
            );
        }
        assert_eq!(StepStatus::parse("done"), None);
    }
}
