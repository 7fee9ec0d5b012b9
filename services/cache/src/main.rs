//! `sock-cache [--config FILE]`: the node-local code and package cache.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sock_service::Started {
        config,
        telemetry: _telemetry,
    } = sock_service::start::<sock_cache::Config>(
        "cache",
        "sock's node-local code and package cache",
    )?;
    let listener = sock_service::bind(&config.listen).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    sock_cache::run(config, listener, shutdown).await?;
    Ok(())
}
