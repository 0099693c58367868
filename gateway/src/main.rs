use noetl_gateway::configuration::{GatewayConfig, Settings};
use noetl_gateway::Gateway;
use noetl_service::{CommandLine, NoFlags};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = CommandLine::<NoFlags>::parse_as("noetl-gateway", "HTTP gateway of noetl-dispatch");
    let settings: Settings = args.settings.load()?;
    let _telemetry = noetl_service::init_telemetry(settings.common.log_format, "noetl-gateway")?;
    let config = GatewayConfig::from_settings(settings)?;
    let cancel = CancellationToken::new();
    noetl_service::shutdown_on_signal(cancel.clone());
    let gateway = Gateway::bind(config, &cancel).await?;
    gateway.run(cancel).await
}
