//! `sock-registry`: the code store service.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sock_registry::Config;

#[derive(Parser)]
#[command(
    name = "sock-registry",
    about = "sock's code store: function bundles over gRPC and HTTP"
)]
struct Args {
    /// TOML file whose [registry] section overrides the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: Config = sock_service::load_config("registry", args.config.as_deref())?;
    let _telemetry = sock_telemetry::init("registry");
    let grpc = sock_service::bind(&config.grpc_listen).await?;
    let http = sock_service::bind(&config.http_listen).await?;
    let shutdown = sock_service::shutdown_on_signals().context("cannot install signal handlers")?;
    sock_registry::run(config, grpc, http, shutdown).await?;
    Ok(())
}
