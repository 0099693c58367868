//! A step's `set`: the names it writes into the execution's context (`ctx.<name>`), each a
//! template over the step's result. Checked at submit: a bounded number of names, each an
//! identifier templates can read, each value's templates well formed.

use super::{error, Error, Step};

/// Names one step's `set` may write.
pub const MAX_SET_NAMES: usize = 32;
/// The longest name in `ctx`.
pub const MAX_CTX_NAME_LEN: usize = 64;

/// Checks the `set` of step `i`; errors name `steps[i].set.<name>`.
pub(super) fn check(i: usize, step: &Step) -> Result<(), Error> {
    if step.set.len() > MAX_SET_NAMES {
        return Err(error(
            format!("steps[{i}].set"),
            format!(
                "{} names is over the limit of {MAX_SET_NAMES}",
                step.set.len()
            ),
        ));
    }
    for name in step.set.keys() {
        let identifier = name.len() <= MAX_CTX_NAME_LEN
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !identifier {
            return Err(error(
                format!("steps[{i}].set.{name}"),
                format!(
                    "{name:?} must be 1 to {MAX_CTX_NAME_LEN} letters, digits or '_', not \
                     starting with a digit (templates read it as ctx.<name>)"
                ),
            ));
        }
    }
    if let Err((field, message)) = crate::template::check_fields("set", &step.set) {
        return Err(error(format!("steps[{i}].{field}"), message));
    }
    Ok(())
}
