//! Process plumbing shared by every binary of noetl-dispatch.
//!
//! - [`settings`]: the command line every binary takes ([`CommandLine`]), how settings load,
//!   defaults < file < `NOETL_…` environment, and the settings all share ([`CommonSettings`]).
//! - [`init_telemetry`]: structured logs, text or JSON, and spans exported over OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`init_tracing`]: logs only).
//! - [`install_metrics`]: the Prometheus recorder behind each process's `/metrics`.
//! - [`shutdown_on_signal`]: SIGTERM/SIGINT cancel the root token; a second signal exits.
//! - [`ops`]: `/healthz`, `/readyz` and `/metrics` for processes without an API of their own.
//!
//! Every binary that links this crate allocates with mimalloc (the `ALLOCATOR` static).

pub mod ops;
pub mod settings;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use settings::{CommandLine, CommonSettings, ConfigFlag, LogFormat, NoFlags};

/// The global allocator of the services. Each submit, command and report allocates and frees
/// many small buffers on several threads; with glibc's allocator that was about 6% of the
/// services' CPU time under load (`malloc`, `free`, `malloc_consolidate`, `unlink_chunk` in a
/// `perf` profile of the benchmark's paced submit phase).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); no span export.
pub fn init_tracing(format: LogFormat) {
    // A second initialisation (tests running several services in one process) is harmless.
    let _ = subscriber(format, None::<tracing_subscriber::layer::Identity>).try_init();
}

/// Logs as [`init_tracing`] does and, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exports spans over OTLP/HTTP (protobuf, or JSON
/// with `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) as `service` (`OTEL_SERVICE_NAME` overrides).
/// Keep the returned guard until the process ends: dropping it flushes the last spans.
pub fn init_telemetry(format: LogFormat, service: &'static str) -> anyhow::Result<Telemetry> {
    let provider = otlp_provider(service)?;
    let layer = provider.as_ref().map(|provider| {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service))
    });
    subscriber(format, layer)
        .try_init()
        .context("failed to install the log subscriber")?;
    if provider.is_some() {
        tracing::info!("exporting spans over OTLP");
    }
    Ok(Telemetry { provider })
}

/// Flushes and stops the span exporter when dropped.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "flushing the last spans failed");
            }
        }
    }
}

fn subscriber<L>(format: LogFormat, otel: Option<L>) -> impl tracing::Subscriber + Send + Sync
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let text = (format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(otel)
        .with(text)
        .with(json)
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(|meta| {
            !leaks_secrets(meta)
        }))
}

/// Events that would print a secret whatever `RUST_LOG` says: async-nats traces every protocol
/// operation it writes, the `CONNECT` with the NATS password among them.
fn leaks_secrets(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() == tracing::Level::TRACE && meta.target() == "async_nats::connection"
}

fn otlp_provider(
    service: &'static str,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    if !configured {
        return Ok(None);
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        Err(_) | Ok("http/protobuf") => Protocol::HttpBinary,
        Ok("http/json") => Protocol::HttpJson,
        Ok(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use http/protobuf or http/json"
        ),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .context("failed to build the OTLP span exporter")?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    Ok(Some(
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Installs the global Prometheus recorder once per process and returns its handle.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed, in which case ours stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Cancels `token` on the first SIGTERM or SIGINT; a second one exits at once.
pub fn shutdown_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight work (signal again to exit now)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
