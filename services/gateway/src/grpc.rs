//! `sock.v1.Gateway` over gRPC.
//!
//! `Logs` fans in `Sandboxd/Logs` of every node: kept lines merged by
//! time, and with `follow` the live streams merged, each line naming its
//! node. `Tree` (`sock tree`) asks every node's `Sandboxd/Tree` at once
//! and answers the trees in node order, each naming its node; a node that
//! fails is logged and left out, and the call fails only when all do.
use std::sync::Arc;

use futures::{Stream, StreamExt};
use sock_proto::v1::gateway_server::Gateway;
use sock_proto::v1::{
    InvokeRequest, InvokeResponse, LogLine, LogsRequest, TreeRequest, TreeResponse, TreeTrees,
    invoke_response,
};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::CALL_ID_HEADER;
use crate::deadline::grpc_timeout;
use crate::error::Error;
use crate::invoke::{Invocation, Invoker, Outcome};
use crate::nodes::Nodes;

pub(crate) struct GatewayService {
    pub invoker: Arc<Invoker>,
    pub nodes: Arc<Nodes>,
}

type LogStream = std::pin::Pin<Box<dyn Stream<Item = Result<LogLine, Status>> + Send>>;

/// A new call id and the span every call runs in; `trigger` says what
/// made the call: "grpc", "http", "cron" or "kafka".
pub(crate) fn call_span(function: &str, trigger: &'static str) -> (String, tracing::Span) {
    let call_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        "invoke",
        sock.function = %function,
        sock.call_id = %call_id,
        sock.trigger = trigger,
        sock.version = tracing::field::Empty,
    );
    (call_id, span)
}

/// Logs a failed call once, at a level by whose fault it was.
pub(crate) fn log_failure(span: &tracing::Span, error: &Error) {
    span.in_scope(|| {
        if error.is_platform_failure() {
            tracing::warn!(%error, "call failed");
        } else {
            tracing::debug!(%error, "call refused");
        }
    });
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    type LogsStream = LogStream;

    /// Every node's lines of the function: the kept ones merged by time,
    /// then (with `follow`) new ones as any node sends them. A node that
    /// cannot be reached is skipped with a warning, as its lines are gone
    /// with it or will be back with it.
    async fn logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let request = request.into_inner();
        sock_bundle::validate_name(&request.function).map_err(Error::from)?;
        let mut kept = Vec::new();
        let mut live = Vec::new();
        let answers = self
            .nodes
            .ask_all(|mut client| {
                let request = request.clone();
                async move { client.logs(request).await }
            })
            .await;
        for (node, answer) in answers {
            let mut lines = match answer {
                Ok(lines) => lines,
                Err(status) => {
                    tracing::warn!(node = %node.addr, error = %crate::error::reason(&status), "cannot read logs of a node");
                    continue;
                }
            };
            let addr = node.addr.clone();
            let tag = move |mut line: LogLine| {
                line.node = addr.clone();
                line
            };
            if request.follow {
                live.push(lines.map(move |line| line.map(&tag)).boxed());
            } else {
                while let Some(line) = lines.next().await {
                    match line {
                        Ok(line) => kept.push(tag(line)),
                        Err(status) => {
                            tracing::warn!(node = %node.addr, error = %status.message(), "log stream broke");
                            break;
                        }
                    }
                }
            }
        }
        if request.follow {
            return Ok(Response::new(futures::stream::select_all(live).boxed()));
        }
        kept.sort_by_key(|l| l.unix_ms);
        Ok(Response::new(
            futures::stream::iter(kept.into_iter().map(Ok)).boxed(),
        ))
    }

    /// Every node's import-cache tree, in node order. A node that cannot
    /// answer is skipped with a warning (the answer has no room for its
    /// error); the call fails only when no node answers.
    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeTrees>, Status> {
        let request = request.into_inner();
        let answers = self
            .nodes
            .ask_all(|mut client| async move { client.tree(request).await })
            .await;
        let mut trees = Vec::new();
        let mut failure = None;
        for (node, answer) in answers {
            match answer {
                Ok(tree) => trees.push(TreeResponse {
                    node: node.addr.clone(),
                    ..tree
                }),
                Err(status) => {
                    tracing::warn!(node = %node.addr, error = %crate::error::reason(&status), "cannot read the import-cache tree of a node");
                    failure = Some(status);
                }
            }
        }
        match failure {
            Some(status) if trees.is_empty() => Err(Error::from_sandboxd(status).into()),
            _ => Ok(Response::new(TreeTrees { nodes: trees })),
        }
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let deadline_left = grpc_timeout(request.metadata());
        let arrived = Instant::now();
        let request = request.into_inner();
        let (call_id, span) = call_span(&request.function, "grpc");
        let invocation = Invocation {
            function: request.function,
            payload: request.payload,
            timeout_ms: request.timeout_ms,
            deadline_left: deadline_left.map(|d| d.saturating_sub(arrived.elapsed())),
            http: None,
        };
        let result = self
            .invoker
            .invoke(invocation, None, &call_id)
            .instrument(span.clone())
            .await;
        let call_id_value =
            MetadataValue::try_from(call_id.as_str()).expect("a uuid is valid ASCII metadata");
        let outcome = match result {
            Ok(answer) => match answer.outcome {
                Outcome::Result(result) => {
                    Ok((invoke_response::Outcome::Result(result), answer.version))
                }
                Outcome::Error(error) => {
                    Ok((invoke_response::Outcome::Error(error), answer.version))
                }
                Outcome::Http(_) => Err(Error::EmptyAnswer(call_id.clone())),
            },
            Err(error) => Err(error),
        };
        match outcome {
            Ok((outcome, version)) => {
                let mut response = Response::new(InvokeResponse {
                    outcome: Some(outcome),
                    call_id: call_id.clone(),
                    version,
                });
                response
                    .metadata_mut()
                    .insert(CALL_ID_HEADER, call_id_value);
                Ok(response)
            }
            Err(error) => {
                log_failure(&span, &error);
                let mut status = Status::from(error);
                status.metadata_mut().insert(CALL_ID_HEADER, call_id_value);
                Err(status)
            }
        }
    }
}
