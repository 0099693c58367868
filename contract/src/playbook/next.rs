//! Conditional routing (wiki/playbooks.md, "Branches"): where a step goes when it succeeds.
//!
//! A step's `next` lists arcs to other steps, each with an optional `when` condition over the
//! execution's state. An arc's target runs after its source, like a `needs`; it is skipped when
//! the arc is not taken. A step is the target of one arc at most: joins go through `needs`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{error, Error, Playbook};

/// The most arcs one step's `next` may list.
pub const MAX_ARCS: usize = 64;

/// Where a step goes when it succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Next {
    /// `exclusive` (the default): the first arc whose `when` holds is taken; `inclusive`:
    /// every such arc is.
    #[serde(default)]
    pub mode: Mode,
    /// 1 to 64 arcs, tried in order.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 64))]
    pub arcs: Vec<NextArc>,
}

/// How many of a step's arcs are taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The first arc whose condition holds.
    #[default]
    Exclusive,
    /// Every arc whose condition holds.
    Inclusive,
}

/// An arc from a step to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NextArc {
    /// The step this arc leads to.
    pub step: String,
    /// A template expression over `{input, ctx, steps.<name>.result}` (with or without `{{ }}`);
    /// the arc is taken when it is true. An arc without one is always taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

impl Playbook {
    /// Per step, the step whose arc leads to it, if any (meant for a validated playbook).
    pub fn arc_sources(&self) -> Vec<Option<usize>> {
        let index: HashMap<&str, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| (step.name.as_str(), i))
            .collect();
        let mut sources = vec![None; self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for arc in step.next.iter().flat_map(|next| &next.arcs) {
                if let Some(&target) = index.get(arc.step.as_str()) {
                    sources[target] = Some(i);
                }
            }
        }
        sources
    }

    /// Whether any arc or `on_error` rule has a condition, so deciding may evaluate a template.
    pub fn has_conditions(&self) -> bool {
        self.steps.iter().any(|step| {
            step.next
                .iter()
                .flat_map(|next| &next.arcs)
                .any(|arc| arc.when.is_some())
                || step.on_error.iter().any(|rule| rule.when.is_some())
        })
    }
}

/// Checks the `next` of every step: bounded, targets exist, are not the step itself nor the
/// target of another arc, and every `when` compiles as an allowed expression.
pub(super) fn check(playbook: &Playbook, index_of: &HashMap<&str, usize>) -> Result<(), Error> {
    let mut reached_by: HashMap<&str, String> = HashMap::new();
    for (i, step) in playbook.steps.iter().enumerate() {
        let Some(next) = &step.next else { continue };
        if next.arcs.is_empty() || next.arcs.len() > MAX_ARCS {
            return Err(error(
                format!("steps[{i}].next.arcs"),
                format!("must list 1 to {MAX_ARCS} arcs, not {}", next.arcs.len()),
            ));
        }
        for (j, arc) in next.arcs.iter().enumerate() {
            let path = format!("steps[{i}].next.arcs[{j}]");
            match index_of.get(arc.step.as_str()) {
                None => {
                    return Err(error(
                        format!("{path}.step"),
                        format!("unknown step {:?}", arc.step),
                    ))
                }
                Some(&k) if k == i => {
                    return Err(error(
                        format!("{path}.step"),
                        "a step cannot lead to itself",
                    ));
                }
                Some(_) => {}
            }
            if let Some(first) = reached_by.insert(&arc.step, path.clone()) {
                return Err(error(
                    format!("{path}.step"),
                    format!(
                        "{:?} is already the target of {first}: a step is reached by one arc at \
                         most (join branches with `needs`)",
                        arc.step
                    ),
                ));
            }
            if let Some(when) = &arc.when {
                crate::template::check_condition(when)
                    .map_err(|message| error(format!("{path}.when"), message))?;
            }
        }
    }
    Ok(())
}
