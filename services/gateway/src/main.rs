//! `sock-gateway --config FILE`: sock's public gRPC API.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "sock's public gRPC API")]
struct Args {
    /// TOML file with a [gateway] section; defaults and SOCK_GATEWAY_* apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = sock_telemetry::init("gateway");
    let config: sock_gateway::Config =
        sock_service::load_config("gateway", args.config.as_deref())?;
    tracing::debug!(?config, "effective config");
    let listener = sock_service::bind(&config.listen).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    sock_gateway::run(config, listener, shutdown).await?;
    Ok(())
}
