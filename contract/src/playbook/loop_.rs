//! Loops (wiki/playbooks.md, "Loops"): a step that runs its action once per item of a list.
//!
//! `loop.in` is rendered when the step becomes ready, over the same context as its `with`; each
//! item runs as attempts of its own, with `{{ <iterator> }}` (the item) and `{{ loop.index }}`
//! (its position, from 0) bound in the step's `with`. At most `max_in_flight` items run at once.

use serde::{Deserialize, Serialize};

use super::{error, Error, Step};

/// The items of one loop in flight at once when the step does not say.
pub const DEFAULT_LOOP_IN_FLIGHT: u32 = 16;
/// The most items of one loop in flight at once.
pub const MAX_LOOP_IN_FLIGHT: u32 = 1_000;
/// Names a loop's `iterator` may not take: the template context's own.
const RESERVED: [&str; 7] = [
    "input", "ctx", "steps", "loop", "result", "error", "attempt",
];

/// A step's loop over a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Loop {
    /// A template over `{input, ctx, steps.<name>.result}` that renders a list, e.g.
    /// `"{{ input.files }}"`.
    #[serde(rename = "in")]
    pub items: String,
    /// The name the item is bound to in the step's `with` (`{{ <iterator> }}`): a letter or
    /// `_`, then letters, digits or `_`; not `input`, `ctx`, `steps`, `loop`, `result`, `error`
    /// or `attempt`.
    pub iterator: String,
    /// `parallel` (the default): up to `max_in_flight` items at once; `sequential`: one.
    #[serde(default)]
    pub mode: LoopMode,
    /// 1 to 1,000 items in flight at once in `parallel` mode (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_in_flight: Option<u32>,
}

/// How many items of a loop run at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LoopMode {
    #[default]
    Parallel,
    Sequential,
}

impl Loop {
    /// The items in flight at once: 1 when sequential, else `max_in_flight` or the default.
    pub fn in_flight(&self) -> u32 {
        match self.mode {
            LoopMode::Sequential => 1,
            LoopMode::Parallel => self.max_in_flight.unwrap_or(DEFAULT_LOOP_IN_FLIGHT),
        }
    }
}

/// Checks the loop of step `i`, if it has one.
pub(super) fn check(i: usize, step: &Step) -> Result<(), Error> {
    let Some(looped) = &step.loop_ else {
        return Ok(());
    };
    if step.is_child() {
        // Each item would start a child, and a child's return names no item.
        return Err(error(
            format!("steps[{i}].loop"),
            "a `playbook` step cannot loop: loop inside its child playbook instead",
        ));
    }
    let at = |field: &str| format!("steps[{i}].loop.{field}");
    let name = &looped.iterator;
    let valid = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(error(
            at("iterator"),
            format!("{name:?} must be a letter or '_', then up to 63 letters, digits or '_'"),
        ));
    }
    if RESERVED.contains(&name.as_str()) {
        return Err(error(
            at("iterator"),
            format!("{name:?} is taken by the template context"),
        ));
    }
    if let Some(n) = looped.max_in_flight {
        if !(1..=MAX_LOOP_IN_FLIGHT).contains(&n) {
            return Err(error(
                at("max_in_flight"),
                format!("must be between 1 and {MAX_LOOP_IN_FLIGHT}"),
            ));
        }
        if looped.mode == LoopMode::Sequential && n != 1 {
            return Err(error(
                at("max_in_flight"),
                "a sequential loop runs one item at a time",
            ));
        }
    }
    let mut fields = serde_json::Map::new();
    fields.insert("in".to_owned(), looped.items.clone().into());
    if let Err((field, message)) = crate::template::check_fields("loop", &fields) {
        return Err(error(format!("steps[{i}].{field}"), message));
    }
    Ok(())
}
