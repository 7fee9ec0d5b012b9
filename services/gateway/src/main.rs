//! `sock-gateway --config FILE`: sock's public API, gRPC and HTTP.
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "sock's public API: gRPC and OpenLambda-style HTTP")]
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
    let grpc = sock_service::bind(&config.listen).await?;
    let http = sock_service::bind(&config.http_listen).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    sock_gateway::run(config, grpc, http, shutdown).await?;
    Ok(())
}
