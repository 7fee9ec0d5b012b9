//! Function administration against the registry: push, ls, rm.
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{DeleteFunctionRequest, ListFunctionsRequest, PushFunctionRequest};

use sock_cli::endpoints::{Endpoints, connect};
use sock_cli::failure::Failed;

/// Bundles may be up to the registry's limit; leave room for the envelope.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

async fn client(
    endpoints: &Endpoints,
) -> anyhow::Result<RegistryClient<tonic::transport::Channel>> {
    Ok(RegistryClient::new(connect(&endpoints.registry).await?)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Turns a gRPC status into the message the service wrote for users,
/// keeping its kind for the exit code.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    Failed::from_status(&status).into()
}

pub async fn push(
    endpoints: &Endpoints,
    token: Option<&str>,
    dir: &Path,
    name: Option<String>,
) -> anyhow::Result<ExitCode> {
    let name = match name {
        Some(name) => name,
        None => dir
            .canonicalize()
            .with_context(|| format!("cannot open {}", dir.display()))?
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .context("cannot tell the function's name from the directory; pass --name")?,
    };
    let bundle =
        sock_bundle::pack(dir).with_context(|| format!("cannot pack {}", dir.display()))?;
    let size = bundle.len();
    let mut request = tonic::Request::new(PushFunctionRequest { name, bundle });
    sock_cli::auth::bearer(&mut request, token)?;
    let info = client(endpoints)
        .await?
        .push_function(request)
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "pushed {} version {} ({} bytes, etag {})",
        info.name, info.version, size, info.etag
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn list(endpoints: &Endpoints, token: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut request = tonic::Request::new(ListFunctionsRequest {});
    sock_cli::auth::bearer(&mut request, token)?;
    let functions = client(endpoints)
        .await?
        .list_functions(request)
        .await
        .map_err(status_error)?
        .into_inner()
        .functions;
    println!("{:<32} {:>8} {:>10}  MODIFIED", "NAME", "VERSION", "BYTES");
    for f in functions {
        let modified =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(f.modified_unix_ms).unwrap_or(0));
        println!(
            "{:<32} {:>8} {:>10}  {}",
            f.name,
            f.version,
            f.bundle_bytes,
            httpdate::fmt_http_date(modified)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(
    endpoints: &Endpoints,
    token: Option<&str>,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let mut request = tonic::Request::new(DeleteFunctionRequest { name: name.into() });
    sock_cli::auth::bearer(&mut request, token)?;
    client(endpoints)
        .await?
        .delete_function(request)
        .await
        .map_err(status_error)?;
    println!("deleted {name}");
    Ok(ExitCode::SUCCESS)
}
