//! A fake sandboxd for the gateway's tests: it records every `Invoke` and
//! answers by payload: by default it echoes the payload as the result;
//! [`RAISE`], [`FULL`], [`HANG`] and [`SLOW`] make it fail, refuse, hang
//! or dawdle, and `"stamp:<kind>"` fails the call with a status stamped
//! with that error kind, as sandboxd stamps its errors. A call of an app
//! (an ol.yaml naming a WSGI entry) with an HTTP request answers 418 with
//! what the app got as headers. `Logs` answers two lines, newest first;
//! `Tree` a root and one child, its source saying whether it was rebuilt.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sock_proto::v1::sandboxd_server::{Sandboxd, SandboxdServer};
use sock_proto::v1::{
    ErrorKind, FunctionError, HttpHeader, HttpResponse, LogLine, LogsRequest, SandboxInvokeRequest,
    SandboxInvokeResponse, StatusRequest, StatusResponse, TreeNode, TreeRequest, TreeResponse,
    sandbox_invoke_response,
};
use tokio::sync::Notify;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::serve::{Served, serve};

/// A function error, as a function that raised.
pub const RAISE: &[u8] = b"\"raise\"";
/// An overloaded node.
pub const FULL: &[u8] = b"\"full\"";
/// No answer, ever (the gateway's deadline must end the call).
pub const HANG: &[u8] = b"\"hang\"";
/// The echo, 300 ms late.
pub const SLOW: &[u8] = b"\"slow\"";

/// What the fake was asked, and what the test set it to answer.
#[derive(Default)]
pub struct FakeSandboxd {
    calls: Mutex<Vec<SandboxInvokeRequest>>,
    /// Versions below this are gone from the node's registry: not found,
    /// as sandboxd answers then.
    pub oldest_kept: AtomicU64,
    /// Awaited by the next call before it is answered: what happens while
    /// a call is on its way.
    pub meanwhile: tokio::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>,

    /// Notified when a call arrives.
    pub arrived: Notify,
}

impl FakeSandboxd {
    /// A new fake, served on a free loopback port as long as the second
    /// lives.
    pub async fn start() -> (Arc<FakeSandboxd>, Served) {
        let fake = Arc::new(FakeSandboxd::default());
        let service = SandboxdServer::new(FakeSandboxdService(Arc::clone(&fake)));
        (fake, serve(Server::builder().add_service(service)).await)
    }

    /// Every `Invoke` so far, oldest first.
    pub fn calls(&self) -> Vec<SandboxInvokeRequest> {
        self.calls.lock().expect("calls lock").clone()
    }

    pub fn last_call(&self) -> SandboxInvokeRequest {
        self.calls().pop().expect("sandboxd got a call")
    }
}

struct FakeSandboxdService(Arc<FakeSandboxd>);

#[tonic::async_trait]
impl Sandboxd for FakeSandboxdService {
    async fn invoke(
        &self,
        request: Request<SandboxInvokeRequest>,
    ) -> Result<Response<SandboxInvokeResponse>, Status> {
        let request = request.into_inner();
        self.0
            .calls
            .lock()
            .expect("calls lock")
            .push(request.clone());
        self.0.arrived.notify_one();
        let meanwhile = self.0.meanwhile.lock().await.take();
        if let Some(meanwhile) = meanwhile {
            meanwhile.await;
        }
        let version = request.function.as_ref().map_or(0, |f| f.version);
        let oldest_kept = self.0.oldest_kept.load(Ordering::SeqCst);
        if version < oldest_kept {
            return Err(ErrorKind::NotFound.status(format!(
                "function version {version} is not available: the registry keeps {oldest_kept}"
            )));
        }
        // An app as ol.yaml names it; any other function is f(event), whose
        // answer to an HTTP call is the result of f(body).
        let is_app = request
            .config
            .as_ref()
            .is_some_and(|c| !c.wsgi_entry.is_empty());
        if let Some(http) = request.http.as_ref().filter(|_| is_app) {
            // An app that shows what it got and answers like a teapot.
            let mut headers = vec![
                header("x-method", &http.method),
                header("x-path", &http.path),
                header("x-query", &http.query),
                header("x-root", &http.root_path),
            ];
            headers.extend(
                http.headers
                    .iter()
                    .filter(|h| h.name == "x-custom")
                    .cloned(),
            );
            return Ok(Response::new(SandboxInvokeResponse {
                outcome: Some(sandbox_invoke_response::Outcome::Http(HttpResponse {
                    status: 418,
                    headers,
                    body: request.payload,
                })),
                version,
            }));
        }
        // `"stamp:<kind>"` fails the call as sandboxd does: a status
        // stamped with its kind.
        if let Some(kind) = std::str::from_utf8(&request.payload)
            .ok()
            .and_then(|payload| payload.strip_prefix("\"stamp:"))
            .and_then(|name| name.strip_suffix('"'))
            .and_then(ErrorKind::from_name)
        {
            return Err(kind.status(format!("stamped {}", kind.name())));
        }
        let outcome = match request.payload.as_slice() {
            RAISE => sandbox_invoke_response::Outcome::Error(FunctionError {
                kind: ErrorKind::Function.into(),
                message: "ZeroDivisionError: division by zero".into(),
                traceback: "Traceback (most recent call last): ...".into(),
            }),
            FULL => {
                return Err(ErrorKind::Overloaded.status("node is full: 0 MiB of memory free"));
            }
            HANG => {
                // Dropped when the gateway gives up on the call.
                std::future::pending::<()>().await;
                unreachable!("a pending future never completes")
            }
            SLOW => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                sandbox_invoke_response::Outcome::Result(request.payload)
            }
            _ => sandbox_invoke_response::Outcome::Result(request.payload),
        };
        Ok(Response::new(SandboxInvokeResponse {
            outcome: Some(outcome),
            version,
        }))
    }

    type LogsStream = tokio_stream::Iter<std::vec::IntoIter<Result<LogLine, Status>>>;

    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let function = request.into_inner().function;
        let line = |call_id: &str, unix_ms| {
            Ok(LogLine {
                function: function.clone(),
                call_id: call_id.into(),
                stream: "stdout".into(),
                line: format!("printed by {call_id}"),
                unix_ms,
                node: String::new(),
            })
        };
        Ok(Response::new(tokio_stream::iter(vec![
            line("c2", 2),
            line("c1", 1),
        ])))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    /// A root with one child; `rebuild` shows as the tree's source.
    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        let source = match request.into_inner().rebuild {
            true => "rebuilt",
            false => "learned",
        };
        let node = |id: &str, depth| TreeNode {
            id: id.into(),
            depth,
            live: true,
            hits: 1,
            ..TreeNode::default()
        };
        Ok(Response::new(TreeResponse {
            source: source.into(),
            nodes: vec![node("root", 0), node("root/six==1.16.0", 1)],
            ..TreeResponse::default()
        }))
    }
}

fn header(name: &str, value: &str) -> HttpHeader {
    HttpHeader {
        name: name.into(),
        value: value.into(),
    }
}
