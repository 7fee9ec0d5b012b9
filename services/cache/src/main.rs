//! `sock-cache`: the node-local code cache service.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "sock's node-local code cache")]
struct Args {
    /// TOML file with a [cache] section.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = sock_telemetry::init("sock-cache");
    let config: sock_cache::Config = sock_service::load_config("cache", args.config.as_deref())?;
    let listener = sock_service::bind(&config.listen).await?;
    let shutdown = sock_service::shutdown_on_signals().context("cannot install signal handlers")?;
    sock_cache::run(config, listener, shutdown).await?;
    Ok(())
}
