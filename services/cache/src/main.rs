//! `sock-cache`: the node-local code cache service.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sock_cache::Config;

#[derive(Parser)]
#[command(
    name = "sock-cache",
    about = "sock's node-local code cache: fetches bundles from the registry and unpacks them for sandboxes"
)]
struct Args {
    /// TOML file whose [cache] section overrides the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: Config = sock_service::load_config("cache", args.config.as_deref())?;
    let _telemetry = sock_telemetry::init("cache");
    let listener = sock_service::bind(&config.listen).await?;
    let shutdown = sock_service::shutdown_on_signals().context("cannot install signal handlers")?;
    sock_cache::run(config, listener, shutdown).await?;
    Ok(())
}
