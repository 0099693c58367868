//! The operations endpoint of a process without an API of its own (server, worker):
//! `/healthz` (the process is up), `/readyz` (the process's own readiness check) and
//! `/metrics` (Prometheus).

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What `/readyz` answers: 200 when `ready`, else 503, with `details` as the JSON body
/// (`ready` is added to it).
#[derive(Debug, Clone)]
pub struct Readiness {
    pub ready: bool,
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Binds `listen` and serves until `cancel`; `check` runs on every `/readyz`.
pub async fn serve<F, Fut>(
    listen: SocketAddr,
    cancel: CancellationToken,
    check: F,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Readiness> + Send + 'static,
{
    let metrics = crate::install_metrics();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let check = check.clone();
                async move {
                    let Readiness { ready, mut details } = check().await;
                    details.insert("ready".to_owned(), ready.into());
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(details))
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, "health and metrics endpoint");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    }))
}
