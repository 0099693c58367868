use clap::Parser;
use noetl_server::configuration::{Args, ServerConfig, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings: Settings = noetl_service::load_settings(args.config.as_deref())?;
    let _telemetry = noetl_service::init_telemetry(settings.log_format, "noetl-server")?;
    let config = ServerConfig::from_settings(settings, args.shards)?;
    let cancel = CancellationToken::new();
    noetl_service::shutdown_on_signal(cancel.clone());
    noetl_server::run(config, cancel).await
}
