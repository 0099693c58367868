//! Limits that keep one caller, or one slow request, from taking the gateway down: a request
//! rate per tenant (429 with `Retry-After`), a deadline per request (504) and the event streams
//! open at once, per tenant (429) and in all (503). Body size is
//! [`axum::extract::DefaultBodyLimit`]; the cap on work in flight per shard is the shard
//! server's (`max_in_flight`, answered 503 `shard_overloaded`); connections are bounded where
//! they are accepted ([`crate::serve`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Principal;
use crate::problem::{Code, Problem};

/// Requests per second a tenant may make, with bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantRate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The per-tenant rate limit; `None` inside: unlimited.
#[derive(Debug, Clone)]
pub struct RateLimit {
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl RateLimit {
    pub fn new(rate: Option<TenantRate>) -> Self {
        let limiter = rate.map(|rate| {
            let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
            Arc::new(RateLimiter::keyed(quota))
        });
        Self { limiter }
    }

    /// `Err` with the seconds to wait when `tenant` is over its rate.
    fn check(&self, tenant: &str) -> Result<(), u32> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&tenant.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Whole seconds, rounded up: a client that waits what it is told is let in.
            u32::try_from(wait.as_millis().div_ceil(1_000))
                .unwrap_or(u32::MAX)
                .max(1)
        })
    }
}

/// Middleware of the API routes, inside [`crate::auth::guard`] (it needs the caller's tenant).
pub async fn per_tenant(
    State(limit): State<RateLimit>,
    request: Request,
    next: Next,
) -> Result<Response, Problem> {
    if let Some(principal) = request.extensions().get::<Principal>() {
        if let Err(wait_secs) = limit.check(&principal.tenant) {
            metrics::counter!("noetl_gateway_rate_limited_total", "tenant" => principal.tenant.clone())
                .increment(1);
            return Err(Problem::new(
                Code::RateLimited,
                format!(
                    "tenant {} is over its request rate; retry in {wait_secs} s",
                    principal.tenant
                ),
            )
            .with_retry_after(wait_secs));
        }
    }
    Ok(next.run(request).await)
}

/// Middleware of every route: a request that has not produced its response within `deadline`
/// (reading the body included) is answered 504. A stream's response starts at once, so the
/// deadline never cuts an event stream.
pub async fn deadline(
    State(deadline): State<Duration>,
    request: Request,
    next: Next,
) -> Result<Response, Problem> {
    tokio::time::timeout(deadline, next.run(request))
        .await
        .map_err(|_| {
            metrics::counter!("noetl_gateway_request_timeouts_total").increment(1);
            Problem::new(
                Code::RequestTimeout,
                format!("the request took longer than {deadline:?}; retry later"),
            )
        })
}

/// How many event streams may be open at once on one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Per tenant (429 `stream_quota_exceeded` past it).
    pub per_tenant: usize,
    /// All tenants together (503 `too_many_streams` past it).
    pub total: usize,
}

/// The event streams open on this gateway, counted per tenant. A stream holds a
/// [`StreamSlot`] for as long as it lives; dropping it (the stream ended, failed, or its client
/// went away and the response was dropped) gives the slot back.
#[derive(Debug, Clone)]
pub struct StreamQuota {
    limits: StreamLimits,
    open: Arc<Mutex<OpenStreams>>,
}

#[derive(Debug, Default)]
struct OpenStreams {
    by_tenant: HashMap<String, usize>,
    total: usize,
}

/// One open event stream of `tenant`, counted until it is dropped.
#[derive(Debug)]
pub struct StreamSlot {
    quota: StreamQuota,
    tenant: String,
}

impl StreamQuota {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            open: Arc::default(),
        }
    }

    /// A slot for one more stream of `tenant`, or the problem that refuses it.
    pub fn open(&self, tenant: &str) -> Result<StreamSlot, Problem> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= self.limits.per_tenant {
            metrics::counter!("noetl_gateway_streams_refused_total", "reason" => "tenant")
                .increment(1);
            return Err(Problem::new(
                Code::StreamQuotaExceeded,
                format!(
                    "tenant {tenant} has {mine} event streams open on this gateway, as many as \
                     sse_streams_per_tenant allows; close one first"
                ),
            )
            .with_retry_after(1));
        }
        if open.total >= self.limits.total {
            metrics::counter!("noetl_gateway_streams_refused_total", "reason" => "gateway")
                .increment(1);
            return Err(Problem::new(
                Code::TooManyStreams,
                format!(
                    "this gateway has {} event streams open, as many as max_sse_streams allows",
                    open.total
                ),
            ));
        }
        *open.by_tenant.entry(tenant.to_owned()).or_default() += 1;
        open.total += 1;
        metrics::gauge!("noetl_gateway_streams_open").set(open.total as f64);
        Ok(StreamSlot {
            quota: self.clone(),
            tenant: tenant.to_owned(),
        })
    }

    /// How many streams `tenant` has open.
    #[cfg(test)]
    fn open_of(&self, tenant: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.by_tenant.get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .quota
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mine) = open.by_tenant.get_mut(&self.tenant) {
            *mine -= 1;
            if *mine == 0 {
                open.by_tenant.remove(&self.tenant);
            }
        }
        open.total = open.total.saturating_sub(1);
        metrics::gauge!("noetl_gateway_streams_open").set(open.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Option<TenantRate> {
        Some(TenantRate {
            per_second: NonZeroU32::new(per_second).expect("positive"),
            burst: NonZeroU32::new(burst).expect("positive"),
        })
    }

    #[test]
    fn a_tenant_over_its_burst_is_told_how_long_to_wait_and_others_are_not_affected() {
        let limit = RateLimit::new(rate(1, 3));
        for _ in 0..3 {
            assert_eq!(limit.check("a"), Ok(()));
        }
        assert_eq!(limit.check("a"), Err(1));
        assert_eq!(limit.check("b"), Ok(()));
    }

    #[test]
    fn no_rate_is_no_limit() {
        let limit = RateLimit::new(None);
        assert!((0..10_000).all(|_| limit.check("a").is_ok()));
    }

    #[test]
    fn a_tenant_gets_its_own_streams_and_a_dropped_slot_is_free_again() {
        let quota = StreamQuota::new(StreamLimits {
            per_tenant: 2,
            total: 3,
        });
        let first = quota.open("a").expect("first stream of a");
        let _second = quota.open("a").expect("second stream of a");
        let refused = quota.open("a").expect_err("a is at its quota");
        assert_eq!(refused.code(), Code::StreamQuotaExceeded);
        let other = quota.open("b").expect("b has its own quota");
        // Three streams are open: the gateway is full, for b too.
        let full = quota.open("b").expect_err("the gateway is at its total");
        assert_eq!(full.code(), Code::TooManyStreams);
        drop(first);
        assert_eq!(quota.open_of("a"), 1);
        let _again = quota.open("a").expect("a's dropped slot is free again");
        drop(other);
        assert_eq!(quota.open_of("b"), 0);
        let open = quota.open.lock().expect("not poisoned");
        assert!(
            !open.by_tenant.contains_key("b"),
            "a tenant without streams is forgotten"
        );
    }
}
