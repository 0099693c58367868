//! Limits that keep one caller, or one slow request, from taking the gateway down: a request
//! rate per tenant (429 with `Retry-After`) and a deadline per request (504). Body size is
//! [`axum::extract::DefaultBodyLimit`]; the cap on work in flight per shard is the shard
//! server's (`max_in_flight`, answered 503 `shard_overloaded`).

use std::num::NonZeroU32;
use std::sync::Arc;
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
}
