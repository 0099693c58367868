//! The columns of child executions (sub-playbooks): the parent link a child is inserted with,
//! and read back under its lock to hand its end back.

use noetl_contract::child::ParentLink;
use noetl_contract::ExecutionId;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};

use super::super::rows::integer;
use super::super::Error;

/// Binds the parent links of the executions to insert as `$29` to `$34` (parent, root, depth,
/// step, attempt, token), and their steps' child ids as `$35`.
pub(super) fn bind<'a>(
    statement: Query<'a, Postgres, PgArguments>,
    parents: &[Option<&ParentLink>],
    child_ids: Vec<Option<i64>>,
) -> Query<'a, Postgres, PgArguments> {
    let field = |f: fn(&ParentLink) -> i64| -> Vec<Option<i64>> {
        parents.iter().map(|p| p.map(f)).collect()
    };
    let small = |f: fn(&ParentLink) -> u32| -> Vec<Option<i32>> {
        parents.iter().map(|p| p.map(|p| integer(f(p)))).collect()
    };
    statement
        .bind(field(|p| p.parent_id.get()))
        .bind(field(|p| p.root_id.get()))
        .bind(
            parents
                .iter()
                .map(|p| p.map_or(0, |p| integer(p.depth)))
                .collect::<Vec<i32>>(),
        )
        .bind(small(|p| p.step_index.get()))
        .bind(small(|p| p.attempt.get()))
        .bind(
            parents
                .iter()
                .map(|p| p.map(|p| p.token.expose().to_vec()))
                .collect::<Vec<Option<Vec<u8>>>>(),
        )
        .bind(child_ids)
}

/// The columns of an execution [`parent_link`] reads.
pub(super) const PARENT_COLUMNS: &str =
    "parent_id, root_id, depth, parent_step, parent_attempt, parent_token";

/// The parent link of a locked execution's row (`None` for a submitted one), and its depth.
pub(super) fn parent_link(row: &PgRow) -> Result<(Option<ParentLink>, u32), Error> {
    let depth = u32::try_from(row.try_get::<i32, _>("depth")?)
        .map_err(|_| Error::Malformed("a negative depth".to_owned()))?;
    let Some(parent) = row.try_get::<Option<i64>, _>("parent_id")? else {
        return Ok((None, depth));
    };
    let id = |raw: i64| {
        ExecutionId::new(raw).map_err(|e| Error::Malformed(format!("a parent link: {e}")))
    };
    let step: i32 = row.try_get("parent_step")?;
    let attempt: i32 = row.try_get("parent_attempt")?;
    let token: Vec<u8> = row.try_get("parent_token")?;
    let malformed = |what: &str| Error::Malformed(format!("a parent link's {what}"));
    Ok((
        Some(ParentLink {
            parent_id: id(parent)?,
            root_id: id(row.try_get("root_id")?)?,
            step_index: noetl_contract::step::StepIndex::new(
                u32::try_from(step).map_err(|_| malformed("step"))?,
            ),
            attempt: u32::try_from(attempt)
                .map(noetl_contract::step::Attempt::new)
                .map_err(|_| malformed("attempt"))?,
            token: noetl_contract::step::AttemptToken::from_slice(&token)
                .ok_or_else(|| malformed("token"))?,
            depth,
        }),
        depth,
    ))
}

/// The child id of a locked step's row.
pub(super) fn child_id(row: &PgRow) -> Result<Option<ExecutionId>, Error> {
    row.try_get::<Option<i64>, _>("child_id")?
        .map(|raw| ExecutionId::new(raw).map_err(|e| Error::Malformed(format!("a child id: {e}"))))
        .transpose()
}
