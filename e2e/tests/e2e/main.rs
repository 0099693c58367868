//! The end-to-end suite, one test binary: the gateway, the server, workers and `noetlctl`
//! against real NATS and PostgreSQL, each test with a cluster of its own (see [`harness`]).

mod harness;

mod api;
mod auth;
mod bad_input;
mod branches;
mod catalog;
mod children;
mod connections;
mod context;
mod crash;
mod egress;
mod execution;
mod failure_policy;
mod faults;
mod fencing;
mod limits;
mod loops;
mod noetl;
mod observability;
mod payload;
mod permissions;
mod quotas;
mod readiness;
mod resharding;
mod retention;
mod submit;
mod templates;
mod topology;
