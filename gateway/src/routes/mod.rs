//! HTTP handlers, one module per resource.

pub mod children;
pub mod events;
pub mod executions;
pub mod health;
pub mod listing;
pub mod playbooks;
pub mod route;
pub mod topology;
