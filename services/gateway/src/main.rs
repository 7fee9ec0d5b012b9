//! `sock-gateway [--config FILE]`: sock's public API, gRPC and HTTP.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sock_service::Started {
        config,
        telemetry: _telemetry,
    } = sock_service::start::<sock_gateway::Config>(
        "gateway",
        "sock's public API: gRPC and OpenLambda-style HTTP",
    )?;
    let grpc = sock_service::bind(&config.listen).await?;
    let http = sock_service::bind(&config.http_listen).await?;
    let shutdown = sock_service::shutdown_on_signals()?;
    sock_gateway::run(config, grpc, http, shutdown).await?;
    Ok(())
}
