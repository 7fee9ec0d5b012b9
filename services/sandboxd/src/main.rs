//! `sock-sandboxd`: the privileged sandbox daemon, or, re-executed with
//! `__sandbox-init`, the init of one sandbox.
use anyhow::Context;

fn main() -> anyhow::Result<()> {
    // A sandbox init forks, so it must stay single-threaded: dispatch
    // before anything (tokio, telemetry) can start a thread.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == sock_sandboxd::INIT_ARG)
    {
        std::process::exit(sock_sandboxd::sandbox_init());
    }
    let sock_service::Started {
        config,
        telemetry: _telemetry,
    } = sock_service::start::<sock_sandboxd::Config>(
        "sandboxd",
        "sock's sandbox daemon (runs as root)",
    )?;
    tokio::runtime::Runtime::new()
        .context("cannot start the tokio runtime")?
        .block_on(serve(config))
}

async fn serve(config: sock_sandboxd::Config) -> anyhow::Result<()> {
    let listener = sock_sandboxd::bind(&config).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    tracing::info!(listen = %listener.describe(), "sock-sandboxd listening");
    sock_sandboxd::run(config, listener, shutdown).await?;
    Ok(())
}
