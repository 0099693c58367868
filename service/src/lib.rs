//! Process plumbing shared by every binary of noetl-dispatch.
//!
//! - [`load_settings`]: defaults < file < `NOETL_…` environment, via the `config` crate.
//! - [`init_tracing`]: structured logs, text or JSON.
//! - [`install_metrics`]: the Prometheus recorder behind each process's `/metrics`.
//! - [`shutdown_on_signal`]: SIGTERM/SIGINT cancel the root token; a second signal exits.
//! - [`ops`]: `/healthz`, `/readyz` and `/metrics` for processes without an API of their own.

pub mod ops;

use std::path::Path;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Reads settings: serde defaults, then the optional TOML file, then `NOETL_*` variables
/// (`NOETL_NATS_URL` → `nats_url`).
pub fn load_settings<T: DeserializeOwned>(file: Option<&Path>) -> anyhow::Result<T> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(
            config::File::from(file)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder
        .add_source(config::Environment::with_prefix("NOETL").try_parsing(true))
        .build()
        .and_then(|c| c.try_deserialize())
        .context("failed to load settings (file and NOETL_* environment)")
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests running several services in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
