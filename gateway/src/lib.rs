//! The stateless HTTP gateway: mints execution ids, routes each to its shard over NATS, and
//! answers only once the shard has committed. It never touches a shard database.
//!
//! - [`configuration`]: settings and their validation.
//! - [`auth`]: bearer tokens, tenants and scopes.
//! - [`limits`]: the per-tenant request rate, the request deadline and the event streams.
//! - [`serve`]: accepting connections, with a header deadline and a connection cap.
//! - [`routes`]: the HTTP handlers.
//! - [`extract`]: body and path extractors that reject with problem documents.
//! - [`yaml`]: the budget on how far a YAML body's aliases expand.
//! - [`problem`]: the error codes and problem documents.
//! - [`openapi`]: the OpenAPI document of the API, generated from the code.
//! - [`dispatch`]: the only module that talks to NATS.
//! - [`state`]: the topology view and the id generator.
//! - [`ui`]: the web console at `/ui`, over the handlers of [`routes`].

pub mod auth;
pub mod configuration;
pub mod dispatch;
pub mod extract;
pub mod limits;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod serve;
pub mod state;
pub mod ui;
pub mod yaml;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use configuration::GatewayConfig;
use problem::{Code, Problem};
use state::AppState;

/// A gateway bound to its address and connected to NATS, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    listener: TcpListener,
    router: Router,
    connections: serve::Connections,
}

impl Gateway {
    pub async fn bind(config: GatewayConfig, cancel: &CancellationToken) -> anyhow::Result<Self> {
        let metrics = noetl_service::install_metrics();
        if config.auth.is_open() {
            tracing::warn!("no auth_tokens_file: the API is open, every caller is the tenant `default` with every scope");
        }
        let client = noetl_bus::connect(&config.nats).await?;
        let topology = noetl_bus::topology::watch(client.clone(), cancel.child_token());
        let holder = format!("noetl-gateway {} pid {}", config.listen, std::process::id());
        let lease = noetl_bus::nodes::hold(
            client.clone(),
            config.node_leases,
            holder,
            cancel.child_token(),
        );
        let state = Arc::new(AppState {
            dispatcher: dispatch::Dispatcher {
                client,
                timeout: config.request_timeout,
                idempotency_ttl: config.idempotency_ttl,
                catalog_quota: config.catalog_quota,
            },
            topology,
            lease,
            ids: Mutex::new(None),
            streams: limits::StreamQuota::new(config.streams),
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        Ok(Self {
            listener,
            router: router(state, metrics, &config),
            connections: config.connections,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `cancel`, then lets in-flight requests finish.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(address = %self.local_addr(), "gateway listening");
        serve::serve(self.listener, self.router, self.connections, cancel).await;
        Ok(())
    }
}

/// Every route `router` serves, as (method, path). The OpenAPI document describes exactly
/// these; tests in [`openapi`] check it against both the document and the router's code.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/executions"),
    ("GET", "/api/v1/executions"),
    ("POST", "/api/v1/playbooks"),
    ("GET", "/api/v1/playbooks"),
    ("GET", "/api/v1/playbooks/{name}"),
    ("GET", "/api/v1/playbooks/{name}/versions/{version}"),
    ("GET", "/api/v1/executions/{id}"),
    ("DELETE", "/api/v1/executions/{id}"),
    ("DELETE", "/api/v1/playbooks/{name}/versions/{version}"),
    ("POST", "/api/v1/executions/{id}/cancel"),
    ("GET", "/api/v1/executions/{id}/events"),
    ("GET", "/api/v1/executions/{id}/stream"),
    ("GET", "/api/v1/route/{id}"),
    ("GET", "/api/v1/topology"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

fn router(state: Arc<AppState>, metrics: PrometheusHandle, config: &GatewayConfig) -> Router {
    let auth = config.auth.clone();
    // One rate per tenant, whether it calls the API or uses the console.
    let rate = limits::RateLimit::new(config.rate);
    let console = ui::router(state.clone(), auth.clone(), rate.clone());
    let api = Router::new()
        .route(
            "/executions",
            post(routes::executions::submit).get(routes::listing::list),
        )
        .route(
            "/playbooks",
            post(routes::playbooks::publish).get(routes::playbooks::list),
        )
        .route("/playbooks/{name}", get(routes::playbooks::latest))
        .route(
            "/playbooks/{name}/versions/{version}",
            get(routes::playbooks::version).delete(routes::playbooks::delete),
        )
        .route(
            "/executions/{id}",
            get(routes::executions::get).delete(routes::executions::delete),
        )
        .route("/executions/{id}/cancel", post(routes::executions::cancel))
        .route("/executions/{id}/events", get(routes::events::page))
        .route("/executions/{id}/stream", get(routes::events::stream))
        .route("/route/{id}", get(routes::route::route))
        .route("/topology", get(routes::topology::show))
        .route("/openapi.json", get(openapi::serve))
        // The later layer runs first: authentication names the tenant the rate is counted for.
        .route_layer(middleware::from_fn_with_state(rate, limits::per_tenant))
        .route_layer(middleware::from_fn_with_state(auth.clone(), auth::guard));
    Router::new()
        .nest("/api/v1", api)
        .with_state(state.clone())
        .merge(
            Router::new()
                .route("/healthz", get(routes::health::healthz))
                .route("/readyz", get(routes::health::readyz))
                .with_state(state)
                .route(
                    "/metrics",
                    get(|State(m): State<PrometheusHandle>| async move { m.render() })
                        .with_state(metrics),
                )
                .route_layer(middleware::from_fn_with_state(auth, auth::guard)),
        )
        .merge(console)
        .fallback(|| async {
            Problem::new(
                Code::RouteNotFound,
                "no such route; the API lives under /api/v1",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                Code::MethodNotAllowed,
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            config.http_timeout,
            limits::deadline,
        ))
        .layer(middleware::from_fn(record_metrics))
        .layer(TraceLayer::new_for_http().on_failure(()))
        .layer(CatchPanicLayer::custom(|_| {
            Problem::new(Code::Internal, "internal error").into_response()
        }))
}

/// Per-route request counts and latency.
async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("noetl_gateway_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("noetl_gateway_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
