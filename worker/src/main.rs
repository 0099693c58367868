use noetl_service::CommandLine;
use noetl_worker::configuration::{Args, Settings, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = CommandLine::<Args>::parse_as(
        "noetl-worker",
        "Worker of noetl-dispatch: runs the steps of its pools",
    );
    let settings: Settings = args.settings.load()?;
    let _telemetry = noetl_service::init_telemetry(settings.common.log_format, "noetl-worker")?;
    let config = WorkerConfig::from_settings(settings, args.flags.pools, args.flags.allow_shell)?;
    let cancel = CancellationToken::new();
    noetl_service::shutdown_on_signal(cancel.clone());
    noetl_worker::run(config, cancel).await
}
