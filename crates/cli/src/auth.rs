//! The bearer token the CLI sends (`--token` / `SOCK_TOKEN`).
use anyhow::Context;
use tonic::metadata::MetadataValue;

/// Adds `authorization: Bearer <token>` to `request` when there is a token.
pub fn bearer<T>(request: &mut tonic::Request<T>, token: Option<&str>) -> anyhow::Result<()> {
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .context("the token must be printable ASCII")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}
