use noetl_server::configuration::{Args, ServerConfig, Settings};
use noetl_service::CommandLine;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = CommandLine::<Args>::parse_as("noetl-server", "Shard server of noetl-dispatch");
    let settings: Settings = args.settings.load()?;
    let _telemetry = noetl_service::init_telemetry(settings.common.log_format, "noetl-server")?;
    let config = ServerConfig::from_settings(settings, args.flags.shards)?;
    let cancel = CancellationToken::new();
    noetl_service::shutdown_on_signal(cancel.clone());
    noetl_server::run(config, cancel).await
}
