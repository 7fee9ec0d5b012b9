//! `sock-registry [--config FILE]`: the code store service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sock_service::Started {
        config,
        telemetry: _telemetry,
    } = sock_service::start::<sock_registry::Config>(
        "registry",
        "sock's code store: function bundles over gRPC and HTTP",
    )?;
    let grpc = sock_service::bind(&config.grpc_listen).await?;
    let http = sock_service::bind(&config.http_listen).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    sock_registry::run(config, grpc, http, shutdown).await?;
    Ok(())
}
