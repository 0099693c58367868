//! The playbooks a submit's `playbook` steps run, made whole before it is sent: each catalog
//! reference (`with.playbook: {name, version}`) is replaced, at any depth, by the playbook it
//! names in the caller's tenant's catalog (never another tenant's), so the shards only ever
//! run inline playbooks, and a child runs the version that was current at its root's submit.

use noetl_contract::playbook::{ChildPlaybook, Playbook, MAX_NESTING};

use crate::problem::{Code, Problem};
use crate::state::AppState;

/// Resolves the catalog references of `playbook`'s `playbook` steps in `tenant`'s catalog,
/// recursively; `depth` is `playbook`'s own (0 for the submitted one). Nesting deeper than
/// [`MAX_NESTING`] (a catalog playbook may run itself) is refused with `nesting_too_deep`.
pub async fn resolve(
    state: &AppState,
    tenant: &str,
    playbook: &mut Playbook,
    depth: u32,
) -> Result<(), Problem> {
    for step in &mut playbook.steps {
        let Some(child) = step.child_playbook() else {
            continue;
        };
        if depth + 1 >= MAX_NESTING {
            return Err(Problem::new(
                Code::NestingTooDeep,
                format!(
                    "step {:?}: playbooks nest deeper than {MAX_NESTING}",
                    step.name
                ),
            ));
        }
        let mut inner = match child {
            ChildPlaybook::Inline(inner) => *inner,
            ChildPlaybook::Catalog { name, version } => {
                state
                    .dispatcher
                    .catalog_get(tenant, &name, version)
                    .await?
                    .ok_or_else(|| playbook_not_found(&name, version))?
                    .playbook
            }
        };
        Box::pin(resolve(state, tenant, &mut inner, depth + 1)).await?;
        let inline = serde_json::to_value(&inner)
            .map_err(|_| Problem::new(Code::Internal, "could not encode a playbook"))?;
        step.with.insert("playbook".to_owned(), inline);
    }
    Ok(())
}

/// The problem of a catalog reference to a playbook, or a version, the catalog does not hold.
pub fn playbook_not_found(name: &str, version: Option<u32>) -> Problem {
    let what = match version {
        Some(version) => format!("version {version} of playbook {name:?}"),
        None => format!("playbook {name:?}"),
    };
    Problem::new(
        Code::PlaybookNotFound,
        format!("the catalog has no {what}; publish it with POST /api/v1/playbooks, or send the playbook inline with its steps"),
    )
}
