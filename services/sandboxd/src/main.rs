//! `sock-sandboxd`: the privileged sandbox daemon, or, re-executed with
//! `__sandbox-init`, the init of one sandbox.
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(name = "sock-sandboxd", about = "sock's sandbox daemon (runs as root)")]
struct Args {
    /// TOML file with a [sandboxd] section.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    // A sandbox init forks, so it must stay single-threaded: dispatch
    // before anything (tokio, telemetry) can start a thread.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == sock_sandboxd::INIT_ARG)
    {
        std::process::exit(sock_sandboxd::sandbox_init());
    }
    let args = Args::parse();
    let config: sock_sandboxd::Config =
        sock_service::load_config("sandboxd", args.config.as_deref())?;
    tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")?
        .block_on(serve(config))
}

async fn serve(config: sock_sandboxd::Config) -> anyhow::Result<()> {
    let _telemetry = sock_telemetry::init("sandboxd");
    let listener = sock_service::bind(&config.listen).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    tracing::info!(listen = %config.listen, "sock-sandboxd listening");
    sock_sandboxd::run(config, listener, shutdown).await?;
    Ok(())
}
