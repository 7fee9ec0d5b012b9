//! `sock invoke`: one call through the gateway.
use std::process::ExitCode;

use sock_proto::v1::InvokeRequest;
use sock_proto::v1::gateway_client::GatewayClient;
use sock_proto::v1::invoke_response::Outcome;
use sock_service::limits::{self, Carrying};

use crate::admin::status_error;
use sock_cli::endpoints::{Endpoints, connect};

/// Prints the result on stdout and exits 0; a function error goes to
/// stderr with its traceback and exits with its kind's code (1, or 3 when
/// the function could not start); a failed call is an error of its kind.
pub async fn invoke(
    endpoints: &Endpoints,
    token: Option<&str>,
    name: &str,
    payload: Option<String>,
    timeout_ms: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let payload = payload.unwrap_or_default().into_bytes();
    let mut request = tonic::Request::new(InvokeRequest {
        function: name.into(),
        payload,
        timeout_ms,
    });
    sock_cli::auth::bearer(&mut request, token)?;
    let response = GatewayClient::new(connect(&endpoints.gateway).await?)
        .carrying(limits::MAX_CALL_BYTES)
        .invoke(request)
        .await
        .map_err(status_error)?
        .into_inner();
    match response.outcome {
        Some(Outcome::Result(result)) => {
            println!("{}", String::from_utf8_lossy(&result));
            Ok(ExitCode::SUCCESS)
        }
        Some(Outcome::Error(error)) => {
            let kind = error.kind();
            eprintln!("{name} failed ({}): {}", kind.name(), error.message);
            if !error.traceback.is_empty() {
                eprint!("{}", error.traceback);
            }
            eprintln!("call id: {}", response.call_id);
            Ok(ExitCode::from(kind.exit_code()))
        }
        None => anyhow::bail!("the gateway answered neither a result nor an error"),
    }
}
