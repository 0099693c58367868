use clap::Parser;
use noetl_gateway::configuration::{Args, GatewayConfig, Settings};
use noetl_gateway::Gateway;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings: Settings = noetl_service::load_settings(args.config.as_deref())?;
    let _telemetry = noetl_service::init_telemetry(settings.log_format, "noetl-gateway")?;
    let config = GatewayConfig::from_settings(settings)?;
    let cancel = CancellationToken::new();
    noetl_service::shutdown_on_signal(cancel.clone());
    let gateway = Gateway::bind(config, &cancel).await?;
    gateway.run(cancel).await
}
