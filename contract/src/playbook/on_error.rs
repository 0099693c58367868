//! Failure policy (wiki/playbooks.md, "Failure policy"): what a step's failed attempt leads to.
//!
//! A step's `on_error` lists rules `{when, then}`, tried in order when an attempt fails; the
//! first whose `when` holds decides: `retry` (within the step's retry budget), `continue`,
//! `fail`, or `goto:<step>`, which re-runs the named step (the step itself or one it comes
//! after) and everything after it, within the execution's `max_gotos`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{error, Error, Playbook};

/// The most rules one step's `on_error` may list.
pub const MAX_ON_ERROR_RULES: usize = 16;
/// Gotos an execution may take when its playbook sets no `max_gotos`.
pub const DEFAULT_MAX_GOTOS: u32 = 10;
/// The largest `max_gotos`.
pub const MAX_GOTOS: u32 = 100;

/// One rule of a step's `on_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OnError {
    /// One expression over `{input, ctx, steps, error, attempt}`; absent, the rule always
    /// matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// `retry`, `continue`, `fail` or `goto:<step>`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(retry|continue|fail|goto: ?[A-Za-z0-9_.-]{1,128})$")
    )]
    pub then: String,
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then<'a> {
    Retry,
    Continue,
    Fail,
    Goto(&'a str),
}

impl OnError {
    /// What `then` says; `None` when it says nothing we know (refused at validation).
    pub fn action(&self) -> Option<Then<'_>> {
        match self.then.as_str() {
            "retry" => Some(Then::Retry),
            "continue" => Some(Then::Continue),
            "fail" => Some(Then::Fail),
            other => other
                .strip_prefix("goto:")
                .map(|step| Then::Goto(step.trim_start())),
        }
    }
}

impl Playbook {
    /// The execution's goto budget.
    pub fn goto_budget(&self) -> u32 {
        self.max_gotos.unwrap_or(DEFAULT_MAX_GOTOS)
    }

    /// Per step, the steps that come after it (through `needs` and arcs), itself included.
    pub fn descendants(&self, step: usize) -> Vec<usize> {
        let sources = self.arc_sources();
        let index: HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut found = vec![step];
        let mut i = 0;
        while let Some(&current) = found.get(i) {
            i += 1;
            for (j, s) in self.steps.iter().enumerate() {
                let after = sources[j] == Some(current)
                    || s.needs
                        .iter()
                        .any(|n| index.get(n.as_str()) == Some(&current));
                if after && !found.contains(&j) {
                    found.push(j);
                }
            }
        }
        found
    }
}

/// Checks `max_gotos` and every step's `on_error`: bounded, known actions, goto targets that
/// exist and come before the step (or are the step), and conditions that compile.
pub(super) fn check(playbook: &Playbook, index_of: &HashMap<&str, usize>) -> Result<(), Error> {
    if playbook.max_gotos.is_some_and(|max| max > MAX_GOTOS) {
        return Err(error("max_gotos", format!("must be at most {MAX_GOTOS}")));
    }
    for (i, step) in playbook.steps.iter().enumerate() {
        if step.on_error.len() > MAX_ON_ERROR_RULES {
            return Err(error(
                format!("steps[{i}].on_error"),
                format!(
                    "{} rules is over the limit of {MAX_ON_ERROR_RULES}",
                    step.on_error.len()
                ),
            ));
        }
        for (k, rule) in step.on_error.iter().enumerate() {
            let path = format!("steps[{i}].on_error[{k}]");
            match rule.action() {
                None => {
                    return Err(error(
                        format!("{path}.then"),
                        format!(
                            "{:?} is not retry, continue, fail or goto:<step>",
                            rule.then
                        ),
                    ))
                }
                Some(Then::Goto(target)) => {
                    let comes_before = index_of
                        .get(target)
                        .is_some_and(|&t| playbook.descendants(t).contains(&i));
                    if !comes_before {
                        return Err(error(
                            format!("{path}.then"),
                            format!(
                                "goto {target:?}: the target must be a step this one comes \
                                 after (through needs or arcs), or the step itself"
                            ),
                        ));
                    }
                }
                Some(_) => {}
            }
            if let Some(when) = &rule.when {
                crate::template::check_condition(when)
                    .map_err(|message| error(format!("{path}.when"), message))?;
            }
        }
    }
    Ok(())
}
