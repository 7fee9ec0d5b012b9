//! `sock logs NAME [-f]`: what a function's calls printed.
use std::process::ExitCode;

use sock_proto::v1::LogsRequest;
use sock_proto::v1::gateway_client::GatewayClient;

use crate::admin::status_error;
use sock_cli::endpoints::{Endpoints, connect};

/// Prints `time call-id stream | line` per line; with `follow`, keeps
/// printing until interrupted.
pub async fn logs(
    endpoints: &Endpoints,
    token: Option<&str>,
    name: &str,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let mut request = tonic::Request::new(LogsRequest {
        function: name.into(),
        follow,
    });
    sock_cli::auth::bearer(&mut request, token)?;
    let mut lines = GatewayClient::new(connect(&endpoints.gateway).await?)
        .logs(request)
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(line) = lines.message().await.map_err(status_error)? {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(line.unix_ms).unwrap_or(0));
        println!(
            "{} {} {} | {}",
            httpdate::fmt_http_date(at),
            line.call_id,
            line.stream,
            line.line
        );
    }
    Ok(ExitCode::SUCCESS)
}
