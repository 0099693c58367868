//! The gateway's only contact with NATS: requests to the shard that owns an execution, the
//! listing across shards, the playbook catalog and idempotency keys.

use std::time::Duration;

use noetl_bus::idempotency::{Claim, Record};
use noetl_bus::Client;
use noetl_contract::message::{
    CatalogEntry, CatalogSummary, EventPage, EventsQuery, ExecutionList, ExecutionQuery,
    ExecutionView, ListQuery, PingReply, SubmitCommand, SubmitReceipt, WireErrorCode,
};
use noetl_contract::playbook::Playbook;
use noetl_contract::subject::{self, ShardRequest};
use noetl_contract::{ExecutionId, Route, ShardId};

use tracing::Instrument as _;

use crate::problem::{Code, Problem};

#[derive(Debug, Clone)]
pub struct Dispatcher {
    pub client: Client,
    pub timeout: Duration,
    /// How long an idempotency key is kept (the bucket's TTL).
    pub idempotency_ttl: Duration,
    /// What each tenant's catalog may hold.
    pub catalog_quota: noetl_bus::catalog::Quota,
}

impl Dispatcher {
    pub async fn submit(
        &self,
        route: Route,
        command: &SubmitCommand,
    ) -> Result<SubmitReceipt, Problem> {
        let id = command.execution_id;
        let subject = subject::shard_request(ShardRequest::Submit, route.shard, id);
        noetl_bus::request(&self.client, subject, command, self.timeout)
            .instrument(execution_span(ShardRequest::Submit, route, id))
            .await
            .map_err(|e| to_problem(route.shard, e).with_execution_id(id))
    }

    /// Reads (`Get`) or cancels (`Cancel`) the execution, if it belongs to `tenant` (otherwise
    /// it is not found), and answers with it as it is then.
    pub async fn execution(
        &self,
        kind: ShardRequest,
        route: Route,
        id: ExecutionId,
        tenant: String,
    ) -> Result<ExecutionView, Problem> {
        let query = ExecutionQuery {
            tenant: Some(tenant),
        };
        self.ask(kind, route, id, &query).await
    }

    /// Deletes the execution, if it belongs to `tenant` and has finished.
    pub async fn delete(
        &self,
        route: Route,
        id: ExecutionId,
        tenant: String,
    ) -> Result<(), Problem> {
        let query = ExecutionQuery {
            tenant: Some(tenant),
        };
        self.ask(ShardRequest::Delete, route, id, &query).await
    }

    pub async fn events(
        &self,
        route: Route,
        id: ExecutionId,
        query: EventsQuery,
    ) -> Result<EventPage, Problem> {
        self.ask(ShardRequest::Events, route, id, &query).await
    }

    async fn ask<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: ShardRequest,
        route: Route,
        id: ExecutionId,
        body: &Req,
    ) -> Result<Resp, Problem> {
        let subject = subject::shard_request(kind, route.shard, id);
        noetl_bus::request(&self.client, subject, body, self.timeout)
            .instrument(execution_span(kind, route, id))
            .await
            .map_err(|e| to_problem(route.shard, e))
    }

    /// A page of one shard's executions; `None` when the shard did not answer in time.
    pub async fn list(&self, shard: ShardId, query: &ListQuery) -> Option<ExecutionList> {
        match noetl_bus::request(
            &self.client,
            subject::shard_list(shard),
            query,
            self.timeout,
        )
        .await
        {
            Ok(list) => Some(list),
            Err(e) => {
                tracing::warn!(%shard, error = %e, "a shard did not answer a listing");
                None
            }
        }
    }

    /// `None` when `tenant`'s catalog has no such playbook (another tenant's is never looked
    /// at); a name no playbook can have is not looked up at all.
    pub async fn catalog_get(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<CatalogEntry>, Problem> {
        if !noetl_contract::playbook::is_valid_name(name) || version == Some(0) {
            return Ok(None);
        }
        noetl_bus::catalog::get(&self.client, tenant, name, version)
            .await
            .map_err(bus_unavailable)
    }

    /// Stores the next version of `playbook` in `tenant`'s catalog (409 over its quota, 413
    /// over NATS `max_payload`).
    pub async fn catalog_publish(
        &self,
        tenant: &str,
        playbook: &Playbook,
    ) -> Result<CatalogEntry, Problem> {
        noetl_bus::catalog::publish(&self.client, tenant, playbook, self.catalog_quota)
            .await
            .map_err(|error| match error {
                noetl_bus::Error::TooLarge {
                    size, max_payload, ..
                } => Problem::new(
                    Code::PayloadTooLarge,
                    format!(
                        "the playbook is {size} bytes once encoded, over NATS max_payload \
                         ({max_payload} bytes)"
                    ),
                ),
                error => bus_unavailable(error),
            })?
            .map_err(|over| {
                let setting = match over.what {
                    "versions" => "catalog_max_versions",
                    _ => "catalog_max_bytes",
                };
                Problem::new(
                    Code::CatalogQuotaExceeded,
                    format!("the catalog is full ({setting}): {over}"),
                )
            })
    }

    /// Deletes a version of `tenant`'s playbook; `false` when it has no such version.
    pub async fn catalog_delete(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<bool, Problem> {
        if !noetl_contract::playbook::is_valid_name(name) || version == 0 {
            return Ok(false);
        }
        noetl_bus::catalog::delete_version(&self.client, tenant, name, version)
            .await
            .map_err(bus_unavailable)
    }

    pub async fn catalog_list(&self, tenant: &str) -> Result<Vec<CatalogSummary>, Problem> {
        noetl_bus::catalog::list(&self.client, tenant)
            .await
            .map_err(bus_unavailable)
    }

    pub async fn claim_idempotency_key(
        &self,
        key_digest: &str,
        record: &Record,
    ) -> Result<Claim, Problem> {
        noetl_bus::idempotency::claim(&self.client, self.idempotency_ttl, key_digest, record)
            .await
            .map_err(bus_unavailable)
    }

    /// Whether the shard has a server whose database answers.
    pub async fn ping(&self, shard: ShardId, timeout: Duration) -> bool {
        noetl_bus::request::<_, PingReply>(&self.client, subject::shard_ping(shard), &(), timeout)
            .await
            .map(|reply| reply.database_ok)
            .unwrap_or(false)
    }

    pub fn is_connected(&self) -> bool {
        noetl_bus::is_connected(&self.client)
    }
}

/// The span of a request about execution `id`, in the execution's trace.
fn execution_span(kind: ShardRequest, route: Route, id: ExecutionId) -> tracing::Span {
    let span = tracing::info_span!("gateway_request", request = ?kind, shard = %route.shard, execution_id = %id);
    noetl_bus::trace::join(&span, id, None);
    span
}

fn bus_unavailable(error: noetl_bus::Error) -> Problem {
    tracing::error!(error = %error, "a NATS key-value request failed");
    Problem::new(Code::BusUnavailable, "NATS did not answer; retry shortly")
}

fn to_problem(shard: ShardId, error: noetl_bus::Error) -> Problem {
    use noetl_bus::Error;
    match error {
        Error::Remote(remote) => match remote.code {
            WireErrorCode::NotFound => Problem::new(Code::ExecutionNotFound, remote.message),
            WireErrorCode::NotTerminal => Problem::new(Code::ExecutionNotTerminal, remote.message),
            WireErrorCode::TooLarge => Problem::new(
                Code::PayloadTooLarge,
                format!("shard {shard}'s reply: {}", remote.message),
            ),
            WireErrorCode::BadRequest => Problem::new(Code::InvalidRequest, remote.message),
            WireErrorCode::TemplateBudgetExceeded => {
                Problem::new(Code::TemplateBudgetExceeded, remote.message)
            }
            WireErrorCode::UnstorableValue => Problem::new(Code::UnstorableValue, remote.message),
            WireErrorCode::LoopTooLarge => Problem::new(Code::LoopTooLarge, remote.message),
            WireErrorCode::TenantQuotaExceeded => {
                Problem::new(Code::TenantQuotaExceeded, remote.message).with_retry_after(1)
            }
            WireErrorCode::PoolForbidden => Problem::new(Code::PoolForbidden, remote.message),
            WireErrorCode::InvalidPlaybook => Problem::new(Code::InvalidPlaybook, remote.message),
            WireErrorCode::NestingTooDeep => Problem::new(Code::NestingTooDeep, remote.message),
            WireErrorCode::ShardUnavailable => Problem::new(
                Code::ShardUnavailable,
                format!("shard {shard}: {}", remote.message),
            ),
            WireErrorCode::Overloaded => {
                metrics::counter!("noetl_gateway_shard_overloaded_total", "shard" => shard.to_string())
                    .increment(1);
                Problem::new(
                    Code::ShardOverloaded,
                    format!("shard {shard} is overloaded: {}", remote.message),
                )
            }
            WireErrorCode::Misrouted => {
                // Gateway and server disagree on the topology: transient while it propagates.
                tracing::error!(%shard, message = %remote.message, "shard refused a request as misrouted");
                Problem::new(
                    Code::ShardUnavailable,
                    format!("shard {shard} is not serving this execution yet; retry shortly"),
                )
            }
        },
        Error::TooLarge {
            size, max_payload, ..
        } => Problem::new(
            Code::PayloadTooLarge,
            format!(
                "the request to shard {shard} is {size} bytes once encoded, over NATS \
                 max_payload ({max_payload} bytes); send a smaller body"
            ),
        ),
        Error::NoResponders { .. } => Problem::new(
            Code::ShardUnavailable,
            format!("no server is serving shard {shard}"),
        ),
        Error::TimedOut { timeout, .. } => Problem::new(
            Code::ShardUnavailable,
            format!("shard {shard} did not answer within {timeout:?}"),
        ),
        other => {
            tracing::error!(%shard, error = %other, "request to shard failed");
            Problem::new(
                Code::ShardUnavailable,
                format!("shard {shard} is unreachable"),
            )
        }
    }
}
