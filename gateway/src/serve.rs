//! Serving the router on the listener, with the bounds `axum::serve` does not offer: a deadline
//! for a request's line and headers (hyper's `header_read_timeout`, which also closes a
//! connection left idle between requests), and a cap on the connections served at once.
//!
//! Over the cap the gateway stops accepting: new connections wait in the kernel's listen
//! backlog, first come first served, and are accepted as others close. Refusing them at once
//! would turn every other tenant's connection into an error while someone holds the cap;
//! waiting costs them latency instead, and every held connection is bounded in time (headers by
//! `header_read_timeout_ms`, requests by `http_timeout_ms`, event streams by their quotas).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How connections are bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Connections served at once.
    pub max: usize,
    /// Time to send a request's line and headers, from when the gateway waits for them.
    pub header_read_timeout: Duration,
}

/// How long to wait before accepting again after an error that is not one connection's (out of
/// file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `cancel`, then stops accepting and lets every open
/// connection finish its requests (as `axum::serve`'s graceful shutdown does).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Connections,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max));
    // HTTP/1 only, as before: the protocol is known at once, so the header deadline runs
    // from the first moment (guessing it would wait for the first bytes without a deadline).
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        connections.spawn(connection(
            stream,
            router.clone(),
            builder.clone(),
            permit,
            cancel.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection, holding its `permit` until it closes.
async fn connection(
    stream: TcpStream,
    router: Router,
    builder: Builder<TokioExecutor>,
    permit: OwnedSemaphorePermit,
    cancel: CancellationToken,
) {
    metrics::gauge!("noetl_gateway_connections_open").increment(1.0);
    let service = TowerToHyperService::new(router);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = cancel.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        // A header deadline passed, the client went away, or it sent something that is not
        // HTTP/1: its own connection ends, nothing else does.
        tracing::debug!(error = %e, "connection closed with an error");
    }
    metrics::gauge!("noetl_gateway_connections_open").decrement(1.0);
    drop(permit);
}

/// An error of one connection, not of the listener (as `axum::serve` tells them apart).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
