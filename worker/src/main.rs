use clap::Parser;
use noetl_worker::configuration::{Args, Settings, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings: Settings = noetl_service::load_settings(args.config.as_deref())?;
    let _telemetry = noetl_service::init_telemetry(settings.log_format, "noetl-worker")?;
    let config = WorkerConfig::from_settings(settings, args.pools, args.allow_shell)?;
    let cancel = CancellationToken::new();
    noetl_service::shutdown_on_signal(cancel.clone());
    noetl_worker::run(config, cancel).await
}
