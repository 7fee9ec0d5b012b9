//! An HTTP `/run/<function>/<path>` request, as routed, mapped to the call
//! the gateway makes (`sock_gateway::http_invocation`). Any method, URI,
//! headers and body: the call carries the path, query and body as they
//! came; the payload is within its limit or the request is refused as too
//! large; no hop-by-hop header, and with a token no `authorization`, is
//! passed on, and every other header is; the budget is the header's.
#![no_main]

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, header};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use sock_gateway::{Error, TIMEOUT_HEADER, http_invocation};

#[derive(Arbitrary, Debug)]
struct Run {
    function: String,
    path: String,
    method: Vec<u8>,
    uri: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    max_payload_bytes: u16,
    strip_authorization: bool,
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

fuzz_target!(|run: Run| {
    let (Ok(method), Ok(uri)) = (
        Method::from_bytes(&run.method),
        run.uri.parse::<axum::http::Uri>(),
    ) else {
        return;
    };
    let mut request = Request::new(Body::from(run.body.clone()));
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri.clone();
    for (name, value) in &run.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }
    let headers = request.headers().clone();
    let limit = u64::from(run.max_payload_bytes);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let timeout = headers
        .get(TIMEOUT_HEADER)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u32>().ok()));
    let called = block_on(http_invocation(
        run.function.clone(),
        &run.path,
        request,
        limit,
        run.strip_authorization,
    ));
    let too_large = run.body.len() as u64 > limit || declared.is_some_and(|d| d > limit);
    let invocation = match called {
        Ok(invocation) => invocation,
        Err(Error::InvalidRequest(_)) if timeout == Some(None) => return,
        Err(Error::PayloadTooLarge { .. }) if too_large => return,
        Err(e) => panic!("refused a request it should map: {e}"),
    };
    assert!(!too_large, "a payload over the limit was taken");
    assert_eq!(timeout.flatten(), invocation.timeout_ms);
    assert_eq!(invocation.function, run.function);
    assert_eq!(invocation.payload, run.body);
    let http = invocation.http.expect("an HTTP call carries its request");
    assert_eq!(http.method, method.as_str());
    assert_eq!(http.path, format!("/{}", run.path));
    assert_eq!(http.query, uri.query().unwrap_or_default());
    assert_eq!(http.root_path, format!("/run/{}", run.function));
    let expected: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .filter(|(name, _)| !(run.strip_authorization && *name == header::AUTHORIZATION))
        .map(|(name, value)| {
            (
                name.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let forwarded: Vec<(String, String)> = http
        .headers
        .into_iter()
        .map(|h| (h.name, h.value))
        .collect();
    assert_eq!(forwarded, expected);
});
