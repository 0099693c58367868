use clap::Parser;
use noetl_ctl::cli::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    cli::run(Cli::parse()).await
}
