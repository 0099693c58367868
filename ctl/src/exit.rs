//! The exit codes of `noetlctl`, stable for scripts:
//! - `0`: done, or nothing to do ("no change"); with `submit --wait` and `watch`: the execution
//!   succeeded;
//! - `1`: failed (NATS or the gateway unreachable, a 5xx, no topology, an unexpected answer);
//! - `2`: the command line or its input is wrong (clap; a file that does not parse, …);
//! - `3`: refused (any 4xx from the gateway but 409; a shard to add has no ready server, the
//!   shard is not draining, executions are unfinished, a change the topology does not allow);
//! - `4`: conflict (a 409 from the gateway, such as an idempotency key reused with another body;
//!   someone else changed the topology between read and write: run it again);
//! - `5`: not yet (`topology drain`: the shard still has unfinished executions; `submit --wait
//!   --timeout`: the execution had not finished in time);
//! - `6`: the execution failed (`submit --wait`, `watch`);
//! - `7`: the execution was cancelled (`submit --wait`, `watch`).

pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const REFUSED: u8 = 3;
pub const CONFLICT: u8 = 4;
pub const NOT_YET: u8 = 5;
pub const EXECUTION_FAILED: u8 = 6;
pub const EXECUTION_CANCELLED: u8 = 7;
