//! The sandbox ⇄ runtime protocol: sandboxd and the Python runtime
//! (`runtime/sock_runtime.py`) talk over one end of a socketpair, fd 3
//! inside the sandbox. A frame is a 4-byte big-endian length and a JSON
//! header, then a 4-byte length and a raw body. The peer runs untrusted
//! code, so every length is bounded before anything is allocated.
//!
//! - runtime → sandboxd, once after start: `{"type":"ready"}`. Before it,
//!   the runtime imports the entry file and finds its entry point as
//!   OpenLambda's runtime does (`discover`): `OL_WSGI_ENTRY`, else
//!   `OL_ASGI_ENTRY`, names an attribute (sock's `OL_WSGI_ENTRY=module:app`
//!   imports that module instead); else `f` (f(event)); else `app`, ASGI
//!   when it or its `__call__` is a coroutine function, WSGI otherwise;
//!   else every call fails with a `cannot_start` error saying so.
//! - sandboxd → runtime, before the first call, no answer:
//!   `{"type":"limits","max_result_bytes":N}`. The runtime answers a larger
//!   result or response body with an `invalid_result` error ("… is N
//!   bytes, over the limit of M bytes"); sandboxd never reads a larger
//!   reply frame (one a function wrote itself): the call fails with that
//!   size and limit, and the sandbox is destroyed. Default 6 MiB, as AWS
//!   Lambda.
//! - sandboxd → runtime: `{"type":"invoke","call_id":"…"}`, body = payload.
//! - runtime → sandboxd: `{"type":"result"}`, body = the JSON result; or
//!   `{"type":"error","kind":"function"|"invalid_payload"|"invalid_result"|
//!   "cannot_start","message":"…","traceback":"…"}` with an empty body
//!   (`cannot_start`: the entry file did not import or names no entry
//!   point).
//! - sandboxd → runtime, for every HTTP call (only the runtime knows, once
//!   it imported the module, whether an app or f answers):
//!   `{"type":"http","call_id","method","path","query",
//!   "headers":[[k,v],…],"root_path"}`, body = request body; answer
//!   `{"type":"http_response","status":N,"headers":[[k,v],…]}`, body =
//!   response body. An app gets the request with the host `root`, as
//!   OpenLambda's worker re-sends it (`http://root/run/<name>/…`, so
//!   Flask's `url_root` is `http://root/run/<name>/`); f(event) gets the
//!   body as its event and answers 200 `application/json` (or an error
//!   frame). An `invoke` of an app is an `invalid_payload` error.
//! - sandboxd → zygote: one byte with SCM_RIGHTS (the child's socket, for
//!   a child zygote also its root, stdout, stderr; then its `cgroup.procs`
//!   files) and `{"type":"fork","kind":"spare"|"zygote",…}`; the child, on
//!   its own socket: `{"type":"parked"}` (a spare), then, from sandboxd,
//!   one byte with root, stdout, stderr and `{"type":"fork","kind":
//!   "function","uid","gid","environment","seccomp","entry_file",
//!   "package_dirs",…}`; `{"type":"forked"}` once it is locked down; then
//!   `ready` as above. The child's side of these is `frame.rs`.
//!
//! Logs are out of band: nothing on stdout or stderr is protocol (see
//! sandboxd's `logs.rs`).
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Headers are a few fields; anything longer is a broken peer.
pub const MAX_HEADER_BYTES: u32 = 64 << 10;
/// Payloads, and any frame but a reply to a call. Replies are bounded by
/// `max_result_bytes` instead, which the runtime learns from a
/// [`Header::Limits`] and keeps to itself with a clear error, so only a
/// function that writes its own frames ever reaches that limit here.
pub const MAX_BODY_BYTES: u32 = 32 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Header {
    /// runtime → sandboxd, once, after importing the entry file.
    Ready,
    /// sandboxd → runtime, before a sandbox's first call; no answer.
    Limits { max_result_bytes: u32 },
    /// sandboxd → runtime; the body is the payload.
    Invoke { call_id: String },
    /// runtime → sandboxd; the body is the JSON result.
    Result,
    /// sandboxd → runtime: an HTTP request, for the function's WSGI/ASGI
    /// app or its f(event); the body is the request body.
    Http {
        call_id: String,
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        root_path: String,
    },
    /// runtime → sandboxd: the app's answer; the body is the response body.
    HttpResponse {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// sandboxd → zygote: fork a child. Sent right after one byte that
    /// carries the child's fds (see [`ForkRequest`]).
    Fork(ForkRequest),
    /// forked child → sandboxd: it is in its cgroup, root and namespaces,
    /// and (a function) unprivileged under seccomp; imports come next.
    Forked,
    /// spare child → sandboxd: in its cgroup and namespaces, waiting for
    /// one byte with its root, stdout and stderr, then a function's `fork`.
    Parked,
    /// runtime → sandboxd; the body is empty.
    Error {
        kind: RuntimeErrorKind,
        message: String,
        #[serde(default)]
        traceback: String,
    },
}

/// What a zygote's child becomes. The fds travel in this order: the
/// child's socket, its root (a detached mount tree), stdout, stderr, then
/// `cgroups` open `cgroup.procs` files it joins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForkRequest {
    pub kind: ForkKind,
    /// Sandbox paths the child adds to `sys.path` (after `/code` for a
    /// function).
    pub package_dirs: Vec<String>,
    /// Modules a child zygote imports.
    pub imports: Vec<String>,
    /// A function's entry file.
    pub entry_file: String,
    /// A function's whole environment, `KEY=value`.
    pub environment: Vec<String>,
    /// The unprivileged ids a function runs as (inside the user namespace),
    /// its sandbox's own; only the function's frame, sent to the parked
    /// child itself, carries them (0 in the zygote's frames).
    pub uid: u32,
    pub gid: u32,
    pub seccomp: crate::seccomp::Programs,
    pub cgroups: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForkKind {
    Function,
    Zygote,
    /// A child forked ahead of need (its fds: socket, cgroup files only).
    Spare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeErrorKind {
    Function,
    InvalidPayload,
    InvalidResult,
    /// The entry file does not import or names no entry point: every call
    /// fails so until the function is pushed again.
    CannotStart,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame {part} of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        part: &'static str,
        len: u32,
        limit: u32,
    },
    #[error("frame header is not valid: {0}")]
    BadHeader(#[from] serde_json::Error),
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &Header,
    body: &[u8],
) -> Result<(), ProtocolError> {
    let header = serde_json::to_vec(header)?;
    let body_len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_BODY_BYTES)
        .ok_or(ProtocolError::TooLarge {
            part: "body",
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            limit: MAX_BODY_BYTES,
        })?;
    let header_len = u32::try_from(header.len()).expect("a serialized header is small");
    let mut frame = Vec::with_capacity(8 + header.len() + body.len());
    frame.extend_from_slice(&header_len.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&body_len.to_be_bytes());
    frame.extend_from_slice(body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(Header, Vec<u8>), ProtocolError> {
    read_frame_within(r, MAX_BODY_BYTES).await
}

/// A frame whose body is at most `max_body` bytes.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    max_body: u32,
) -> Result<(Header, Vec<u8>), ProtocolError> {
    let header_len = match r.read_u32().await {
        Ok(len) => len,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    };
    let header = read_part(r, "header", header_len, MAX_HEADER_BYTES).await?;
    let header: Header = serde_json::from_slice(&header)?;
    let body_len = r.read_u32().await.map_err(eof_is_closed)?;
    let body = read_part(r, "body", body_len, max_body).await?;
    Ok((header, body))
}

async fn read_part<R: AsyncRead + Unpin>(
    r: &mut R,
    part: &'static str,
    len: u32,
    limit: u32,
) -> Result<Vec<u8>, ProtocolError> {
    if len > limit {
        return Err(ProtocolError::TooLarge { part, len, limit });
    }
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).await.map_err(eof_is_closed)?;
    Ok(buf)
}

fn eof_is_closed(e: std::io::Error) -> ProtocolError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Closed
    } else {
        ProtocolError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_the_documented_json() {
        let invoke = Header::Invoke {
            call_id: "c1".into(),
        };
        assert_eq!(
            serde_json::to_string(&invoke).expect("encode"),
            r#"{"type":"invoke","call_id":"c1"}"#
        );
        assert_eq!(
            serde_json::from_str::<Header>(r#"{"type":"ready"}"#).expect("decode"),
            Header::Ready
        );
        let error: Header =
            serde_json::from_str(r#"{"type":"error","kind":"invalid_payload","message":"bad"}"#)
                .expect("decode");
        assert_eq!(
            error,
            Header::Error {
                kind: RuntimeErrorKind::InvalidPayload,
                message: "bad".into(),
                traceback: String::new(),
            }
        );
    }

    #[test]
    fn limits_match_the_documented_json() {
        assert_eq!(
            serde_json::to_string(&Header::Limits {
                max_result_bytes: 6 << 20
            })
            .expect("encode"),
            r#"{"type":"limits","max_result_bytes":6291456}"#
        );
    }

    #[tokio::test]
    async fn a_reply_over_its_limit_is_refused_before_allocating() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Header::Result, &[b'1'; 11])
            .await
            .expect("write");
        let err = read_frame_within(&mut wire.as_slice(), 10)
            .await
            .expect_err("too large");
        assert!(
            matches!(
                err,
                ProtocolError::TooLarge {
                    part: "body",
                    len: 11,
                    limit: 10
                }
            ),
            "{err}"
        );
        assert!(read_frame_within(&mut wire.as_slice(), 11).await.is_ok());
    }

    #[test]
    fn http_headers_match_the_documented_json() {
        let request = Header::Http {
            call_id: "c1".into(),
            method: "GET".into(),
            path: "/a".into(),
            query: "x=1".into(),
            headers: vec![("accept".into(), "*/*".into())],
            root_path: "/run/f".into(),
        };
        assert_eq!(
            serde_json::to_string(&request).expect("encode"),
            r#"{"type":"http","call_id":"c1","method":"GET","path":"/a","query":"x=1","headers":[["accept","*/*"]],"root_path":"/run/f"}"#
        );
        let response: Header = serde_json::from_str(
            r#"{"type":"http_response","status":418,"headers":[["x-tea","yes"]]}"#,
        )
        .expect("decode");
        assert_eq!(
            response,
            Header::HttpResponse {
                status: 418,
                headers: vec![("x-tea".into(), "yes".into())],
            }
        );
    }

    #[tokio::test]
    async fn frames_round_trip_with_the_documented_layout() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Header::Result, b"[1, 2]")
            .await
            .expect("write");
        let header = br#"{"type":"result"}"#;
        let mut expected = (header.len() as u32).to_be_bytes().to_vec();
        expected.extend_from_slice(header);
        expected.extend_from_slice(&6u32.to_be_bytes());
        expected.extend_from_slice(b"[1, 2]");
        assert_eq!(wire, expected);

        let (header, body) = read_frame(&mut wire.as_slice()).await.expect("read");
        assert_eq!(header, Header::Result);
        assert_eq!(body, b"[1, 2]");
    }

    #[tokio::test]
    async fn clean_eof_is_closed_and_a_cut_frame_too() {
        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut &*empty).await,
            Err(ProtocolError::Closed)
        ));
        let mut wire = Vec::new();
        write_frame(&mut wire, &Header::Ready, b"")
            .await
            .expect("write");
        wire.truncate(wire.len() - 2);
        assert!(matches!(
            read_frame(&mut wire.as_slice()).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_lengths_are_refused_before_allocating() {
        let wire = u32::MAX.to_be_bytes();
        let err = read_frame(&mut wire.as_slice())
            .await
            .expect_err("too large");
        assert!(
            err.to_string()
                .starts_with("frame header of 4294967295 bytes is over the limit"),
            "{err}"
        );

        let mut wire = Vec::new();
        write_frame(&mut wire, &Header::Result, b"")
            .await
            .expect("write");
        let at = wire.len() - 4;
        wire[at..].copy_from_slice(&(MAX_BODY_BYTES + 1).to_be_bytes());
        let err = read_frame(&mut wire.as_slice())
            .await
            .expect_err("too large");
        assert!(matches!(err, ProtocolError::TooLarge { part: "body", .. }));
    }

    #[tokio::test]
    async fn garbage_header_is_an_error_not_a_panic() {
        let mut wire = 3u32.to_be_bytes().to_vec();
        wire.extend_from_slice(b"{x}");
        wire.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            read_frame(&mut wire.as_slice()).await,
            Err(ProtocolError::BadHeader(_))
        ));
    }
}
