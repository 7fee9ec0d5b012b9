//! Reading an HTTP request's body within a limit, for calls (`http`) and
//! bundles (`openlambda`) alike.
use axum::body::Body;
use axum::http::{HeaderMap, header};

use crate::error::Error;

/// The body, refused (413) once it is over `limit` without reading more.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Vec<u8>, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared.filter(|size| *size > limit) {
        return Err(Error::PayloadTooLarge { size, limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    match axum::body::to_bytes(body, max).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(e) if is_length_limit(&e) => Err(Error::PayloadTooLarge {
            size: declared.unwrap_or(limit.saturating_add(1)),
            limit,
        }),
        Err(e) => Err(Error::InvalidRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}
