//! `sock.v1.Gateway/Invoke`: resolve the function's current version,
//! bound the call in time, and run it on a sandbox node.
use std::time::Duration;

use sock_proto::v1::gateway_server::Gateway;
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_proto::v1::{
    FunctionRef, InvokeRequest, InvokeResponse, SandboxInvokeRequest, invoke_response,
    sandbox_invoke_response,
};
use sock_telemetry::grpc::TracedChannel;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::deadline::{budget, grpc_timeout};
use crate::error::Error;
use crate::metadata::MetadataCache;

/// Response metadata carrying the call's id, on answers and errors alike.
pub const CALL_ID_HEADER: &str = "x-sock-call-id";

/// Time the sandboxd call gets beyond the call's budget. sandboxd enforces
/// the budget on the function and reports a timeout as the function's
/// error; the gateway gives up only if sandboxd itself does not answer.
const SANDBOXD_GRACE: Duration = Duration::from_millis(500);

pub(crate) struct InvokeService {
    functions: MetadataCache<RegistryClient<TracedChannel>>,
    sandboxd: SandboxdClient<TracedChannel>,
    default_timeout_ms: u32,
}

impl InvokeService {
    pub fn new(
        functions: MetadataCache<RegistryClient<TracedChannel>>,
        sandboxd: SandboxdClient<TracedChannel>,
        default_timeout_ms: u32,
    ) -> Self {
        InvokeService {
            functions,
            sandboxd,
            default_timeout_ms,
        }
    }

    async fn call(
        &self,
        request: InvokeRequest,
        call_id: &str,
        deadline: Option<Instant>,
    ) -> Result<InvokeResponse, Error> {
        sock_bundle::validate_name(&request.function)?;
        if request.timeout_ms == Some(0) {
            return Err(Error::ZeroTimeout);
        }
        let info = self.functions.get(&request.function).await?;
        tracing::Span::current().record("sock.version", info.version);

        let config = info.config.clone().unwrap_or_default();
        let limit_ms = config.limits.as_ref().map_or(0, |l| l.timeout_ms);
        let deadline_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let budget = budget(
            request.timeout_ms,
            deadline_left,
            limit_ms,
            self.default_timeout_ms,
        );
        let timed_out = || Error::DeadlineExceeded {
            function: request.function.clone(),
            budget_ms: budget.as_millis().try_into().unwrap_or(u64::MAX),
        };
        // sandboxd counts in whole milliseconds; less than one is no time.
        let timeout_ms = u32::try_from(budget.as_millis()).unwrap_or(u32::MAX);
        if timeout_ms == 0 {
            return Err(timed_out());
        }

        let sandbox_request = SandboxInvokeRequest {
            function: Some(FunctionRef {
                name: request.function.clone(),
                version: info.version,
            }),
            config: Some(config),
            payload: request.payload,
            call_id: call_id.to_string(),
            timeout_ms,
            http: None,
        };
        let mut sandboxd = self.sandboxd.clone();
        let call = sandboxd
            .invoke(sandbox_request)
            .instrument(tracing::info_span!("sandboxd.invoke", otel.kind = "client"));
        let answer = tokio::time::timeout(budget + SANDBOXD_GRACE, call)
            .await
            .map_err(|_| timed_out())?
            .map_err(Error::from_sandboxd)?
            .into_inner();

        let outcome = match answer.outcome {
            Some(sandbox_invoke_response::Outcome::Result(result)) => {
                invoke_response::Outcome::Result(result)
            }
            Some(sandbox_invoke_response::Outcome::Error(error)) => {
                invoke_response::Outcome::Error(error)
            }
            Some(sandbox_invoke_response::Outcome::Http(_)) | None => {
                return Err(Error::EmptyAnswer(call_id.to_string()));
            }
        };
        Ok(InvokeResponse {
            outcome: Some(outcome),
            call_id: call_id.to_string(),
            version: answer.version,
        })
    }
}

#[tonic::async_trait]
impl Gateway for InvokeService {
    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        let deadline = grpc_timeout(request.metadata()).map(|t| Instant::now() + t);
        let request = request.into_inner();
        let call_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!(
            "invoke",
            sock.function = %request.function,
            sock.call_id = %call_id,
            sock.version = Empty,
        );
        let result = self
            .call(request, &call_id, deadline)
            .instrument(span.clone())
            .await;
        let call_id_value =
            MetadataValue::try_from(call_id.as_str()).expect("a uuid is valid ASCII metadata");
        match result {
            Ok(answer) => {
                let mut response = Response::new(answer);
                response
                    .metadata_mut()
                    .insert(CALL_ID_HEADER, call_id_value);
                Ok(response)
            }
            Err(error) => {
                span.in_scope(|| {
                    if error.is_platform_failure() {
                        tracing::warn!(%error, "call failed");
                    } else {
                        tracing::debug!(%error, "call refused");
                    }
                });
                let mut status = Status::from(error);
                status.metadata_mut().insert(CALL_ID_HEADER, call_id_value);
                Err(status)
            }
        }
    }
}
