//! One call over the frame protocol: the request (an invoke or an HTTP
//! request) as it goes over a sandbox's socket, the reply read back, and
//! what it means for the caller ([`Outcome`]). The sandbox that owns the
//! socket ([`crate::sandbox`]) decides what a failed exchange does to it:
//! `Sandbox::invoke` runs the exchange under the call's time, and on a
//! timeout, a runtime gone, a reply over `max_result_bytes` or a broken
//! frame it destroys the sandbox and answers the outcome below.
//!
//! A timeout is TIMEOUT "function exceeded its timeout of N ms", an OOM
//! kill OUT_OF_MEMORY "function ran out of memory (limit N MB)"; both
//! destroy the sandbox. Other outcomes: the runtime's `invalid_result` is
//! FUNCTION, and so is a reply over `max_result_bytes` (naming its size
//! and the limit); a broken frame is KILLED; a runtime gone is
//! OUT_OF_MEMORY when the memory cgroup saw an OOM kill, else KILLED; an
//! init that exits 125 before `ready` is a failed setup (`platform`, the
//! details only in the log); an entry file that does not import is
//! CANNOT_START.
use sock_proto::v1::{ErrorKind, FunctionError, HttpHeader, HttpRequest, HttpResponse};
use sock_sandbox::protocol::{self, Header, ProtocolError, RuntimeErrorKind};
use tokio::net::UnixStream;

use crate::logs::Calls;

/// How a call ended, as far as the function is concerned: the JSON
/// `f(event)` returned, how the function failed (raised, timed out, ran
/// out of memory, died), or an HTTP call's answer. The answer's own type,
/// so it goes out as it was made.
pub use sock_proto::v1::sandbox_invoke_response::Outcome;

/// The frame header of an HTTP call.
pub(crate) fn http_header(call_id: &str, http: &HttpRequest) -> Header {
    Header::Http {
        call_id: call_id.into(),
        method: http.method.clone(),
        path: http.path.clone(),
        query: http.query.clone(),
        headers: http
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        root_path: http.root_path.clone(),
    }
}

/// One call as it goes over the socket.
pub(crate) struct Call<'a> {
    pub id: &'a str,
    /// Sent first, to a runtime that has not had them yet.
    pub limits: Option<Header>,
    pub request: Header,
    pub payload: &'a [u8],
    pub max_result_bytes: u32,
}

/// Sends `call` over `conn` once the runtime is ready (`ready`: it said
/// so already) and reads its reply. What the sandbox prints from the
/// moment the request goes out until the reply is in is the call's
/// (`calls` tags it): the runtime flushed everything the call printed
/// before replying. What it printed while importing (the runtime flushes
/// before ready) is no call's.
pub(crate) async fn exchange(
    conn: &mut UnixStream,
    ready: &mut bool,
    calls: Option<&Calls>,
    call: Call<'_>,
) -> Result<Outcome, ProtocolError> {
    if !*ready {
        match protocol::read_frame(conn).await? {
            (Header::Ready, _) => *ready = true,
            (other, _) => return Err(unexpected(&other)),
        }
    }
    if let Some(limits) = &call.limits {
        protocol::write_frame(conn, limits, b"").await?;
    }
    if let Some(calls) = calls {
        calls.begin(call.id).await;
    }
    protocol::write_frame(conn, &call.request, call.payload).await?;
    let reply = protocol::read_frame_within(conn, call.max_result_bytes).await?;
    // Not on a failed read: the sandbox is then destroyed, and what it
    // printed until its pipes close stays with the call.
    if let Some(calls) = calls {
        calls.end().await;
    }
    match reply {
        (Header::Result, body) => Ok(Outcome::Result(body)),
        (Header::HttpResponse { status, headers }, body) => Ok(Outcome::Http(HttpResponse {
            status: status.into(),
            headers: headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            body,
        })),
        (
            Header::Error {
                kind,
                message,
                traceback,
            },
            _,
        ) => {
            let kind = match kind {
                RuntimeErrorKind::InvalidPayload => ErrorKind::InvalidRequest,
                RuntimeErrorKind::Function | RuntimeErrorKind::InvalidResult => ErrorKind::Function,
                RuntimeErrorKind::CannotStart => ErrorKind::CannotStart,
            };
            Ok(Outcome::Error(function_error(kind, message, traceback)))
        }
        (other, _) => Err(unexpected(&other)),
    }
}

fn unexpected(header: &Header) -> ProtocolError {
    ProtocolError::BadHeader(serde::de::Error::custom(format!(
        "unexpected frame {header:?}"
    )))
}

pub(crate) fn function_error(kind: ErrorKind, message: String, traceback: String) -> FunctionError {
    FunctionError {
        kind: kind as i32,
        message,
        traceback,
    }
}
