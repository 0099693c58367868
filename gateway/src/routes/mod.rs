//! HTTP handlers, one module per resource.

pub mod executions;
pub mod health;
pub mod route;
