//! One call, whichever door it came in by (gRPC `Invoke` or HTTP `/run`):
//! resolve the function's current version, check the request against the
//! function, bound it in time, pass admission control, and run it on a
//! sandbox node.
//!
//! In order: `validate_name` → payload ≤ `max_payload_bytes` → the
//! function's version and config (`metadata`: one registry `GetFunction`
//! per name, kept until the registry announces a change (`watch`) and at
//! most `registry_cache_ms`; an outage serves the last known version) →
//! the HTTP method against `triggers.http` (405 and `Allow`) → the
//! budget, worked out once (`deadline`: the least of `timeout_ms` or
//! `x-sock-timeout-ms`, the gRPC deadline, and the
//! function's limit or `default_timeout_ms`) → admission (`admission`: the
//! per-function, then the global concurrency limit, one shared queue of
//! `max_queue`, waits bounded by the deadline) → a node (`nodes`), which
//! gets what is left of the budget and, with a grace, as its gRPC
//! deadline. A version the registry no longer keeps comes back from
//! sandboxd as `not_found`; the gateway then resolves once more and
//! resends. Every HTTP call carries
//! `SandboxInvokeRequest.http`, and its answer, an `HttpResponse`, passes
//! through unchanged: an app's, or f(event)'s 200 JSON (the runtime
//! decides). A gRPC `Invoke` of a function whose ol.yaml names an app
//! (`wsgi_entry`) is INVALID_ARGUMENT; of an app found by discovery, the
//! runtime's `invalid_payload`. Cron firings and Kafka messages come
//! through `Invoker::invoke` like HTTP calls.
//!
//! Each call's id (a UUID) and its `invoke` span are made by whatever
//! brought it in (`grpc::call_span`). The id goes to sandboxd, which tags
//! the call's log lines with it, and back to the caller as
//! `x-sock-call-id` (also `InvokeResponse.call_id`, and `call_id` in an
//! HTTP error body).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{ErrorKind, FunctionConfig, FunctionRef, HttpRequest, SandboxInvokeRequest};
use sock_service::AuthedChannel;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::admission::{Admit, ConcurrencyLimitLayer, Queue};
use crate::deadline::{Deadline, budget};
use crate::error::Error;
use crate::metadata::MetadataCache;
use crate::metrics::Metrics;
use crate::nodes::Nodes;

/// A call as it arrives.
pub struct Invocation {
    pub function: String,
    pub payload: Vec<u8>,
    /// The caller's own bound (`timeout_ms`, `x-sock-timeout-ms`).
    pub timeout_ms: Option<u32>,
    /// What is left of the caller's gRPC deadline.
    pub deadline_left: Option<Duration>,
    /// Set for HTTP calls: the request, which a WSGI/ASGI app gets whole
    /// and an f(event) function as its body, the event.
    pub http: Option<HttpRequest>,
}

/// How a call ended, as sandboxd answered it: the JSON f(event) returned,
/// how the function failed, or an HTTP call's answer (the app's, or
/// f(event)'s JSON).
pub(crate) use sock_proto::v1::sandbox_invoke_response::Outcome;

/// sandboxd's answer, once it is known to hold an outcome.
#[derive(Debug)]
pub(crate) struct Answer {
    pub outcome: Outcome,
    pub version: u64,
}

/// A call past its checks, on its way through admission to a node.
pub(crate) struct Call {
    /// Shared with `run`, which gets the payload back for a second try.
    request: Arc<SandboxInvokeRequest>,
    deadline: Deadline,
}

impl Admit for Call {
    fn function(&self) -> &str {
        self.request
            .function
            .as_ref()
            .map_or("", |f| f.name.as_str())
    }

    fn deadline(&self) -> Instant {
        self.deadline.at()
    }
}

pub(crate) struct Invoker {
    functions: MetadataCache<RegistryClient<AuthedChannel>>,
    stack: BoxCloneSyncService<Call, Answer, Error>,
    queue: Arc<Queue>,
    default_timeout_ms: u32,
    max_payload_bytes: u64,
    metrics: Arc<Metrics>,
}

/// The limits admission control enforces.
pub(crate) struct Limits {
    pub max_concurrency: usize,
    pub max_concurrency_per_function: usize,
    pub max_queue: usize,
    pub default_timeout_ms: u32,
    pub max_payload_bytes: u64,
}

impl Invoker {
    pub fn new(
        functions: MetadataCache<RegistryClient<AuthedChannel>>,
        nodes: Arc<Nodes>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let queue = Queue::new(limits.max_queue);
        // Per function first, so calls of a hot function wait without
        // holding a global slot that other functions could use.
        let per_function =
            ConcurrencyLimitLayer::per_function(limits.max_concurrency_per_function, queue.clone());
        let global = ConcurrencyLimitLayer::global(limits.max_concurrency, queue.clone());
        let dispatch = Dispatch { nodes };
        let stack = per_function.layer(global.layer(dispatch));
        Invoker {
            functions,
            stack: BoxCloneSyncService::new(stack),
            queue,
            default_timeout_ms: limits.default_timeout_ms,
            max_payload_bytes: limits.max_payload_bytes,
            metrics,
        }
    }

    /// Calls waiting in admission control right now.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    pub fn max_payload_bytes(&self) -> u64 {
        self.max_payload_bytes
    }

    /// Forgets `function`'s cached version and config: it was just pushed
    /// or deleted through this gateway, and its next call must see that.
    pub fn invalidate(&self, function: &str) {
        self.functions.invalidate(function);
    }

    /// Forgets every cached version and config: changes may have been
    /// missed.
    pub fn forget_all(&self) {
        self.functions.clear();
    }

    /// Runs one call; `method` is the HTTP method of an HTTP call, checked
    /// against the function's `triggers.http`.
    pub async fn invoke(
        &self,
        invocation: Invocation,
        method: Option<&str>,
        call_id: &str,
    ) -> Result<Answer, Error> {
        let started = Instant::now();
        let function = invocation.function.clone();
        let result = self.run(invocation, method, call_id).await;
        let (function, outcome) = call_labels(&function, &result);
        self.metrics
            .record_call(function, outcome, started.elapsed());
        result
    }

    async fn run(
        &self,
        invocation: Invocation,
        method: Option<&str>,
        call_id: &str,
    ) -> Result<Answer, Error> {
        let Invocation {
            function,
            mut payload,
            timeout_ms,
            deadline_left,
            mut http,
        } = invocation;
        sock_bundle::validate_name(&function)?;
        if timeout_ms == Some(0) {
            return Err(Error::ZeroTimeout);
        }
        let size = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        if size > self.max_payload_bytes {
            return Err(Error::PayloadTooLarge {
                size,
                limit: self.max_payload_bytes,
            });
        }
        // The budget runs from the first look-up's answer: what it took is
        // the platform's time, but waiting in the queue is the call's.
        let mut start = None;
        let mut looked_up_again = false;
        loop {
            let info = self.functions.get(&function).await?;
            tracing::Span::current().record("sock.version", info.version);
            let config = info.config.clone().unwrap_or_default();
            if let Some(method) = method {
                check_method(&function, &config, method)?;
            }
            // Whether a function serves f(event) or an app is known for
            // sure only once its module is imported (OpenLambda's
            // discovery), so an HTTP call always goes as HTTP and the
            // runtime answers it either way. A call without HTTP is
            // refused here only when ol.yaml already says the function is
            // an app; else the runtime says so.
            if http.is_none() && !config.wsgi_entry.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "function '{function}' is a WSGI/ASGI app; call it over HTTP at /run/{function}"
                )));
            }
            let start = *start.get_or_insert_with(Instant::now);
            let limit_ms = config.limits.as_ref().map_or(0, |l| l.timeout_ms);
            let budget = budget(timeout_ms, deadline_left, limit_ms, self.default_timeout_ms);
            let request = Arc::new(SandboxInvokeRequest {
                function: Some(FunctionRef {
                    name: function.clone(),
                    version: info.version,
                }),
                config: Some(config),
                payload,
                call_id: call_id.to_string(),
                timeout_ms: 0,
                http,
            });
            let call = Call {
                request: request.clone(),
                deadline: Deadline::new(start, budget),
            };
            match self.stack.clone().oneshot(call).await {
                // The version this gateway resolved is gone from the node's
                // registry (pushed over twice since, or the function
                // deleted): nothing ran. Forget it and resolve once more.
                Err(Error::Sandboxd(status))
                    if ErrorKind::stamped(&status) == Some(ErrorKind::NotFound)
                        && !looked_up_again =>
                {
                    tracing::info!(function = %function, version = info.version, reason = %status.message(), "version gone; resolving again");
                    self.functions.invalidate(&function);
                    looked_up_again = true;
                    let request =
                        Arc::try_unwrap(request).unwrap_or_else(|shared| (*shared).clone());
                    (payload, http) = (request.payload, request.http);
                }
                answered => return answered,
            }
        }
    }
}

/// Methods not in `triggers.http` (when it lists any) are refused.
fn check_method(function: &str, config: &FunctionConfig, method: &str) -> Result<(), Error> {
    if config.http_methods.is_empty()
        || config
            .http_methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case(method))
    {
        return Ok(());
    }
    Err(Error::MethodNotAllowed {
        function: function.to_string(),
        method: method.to_string(),
        allowed: config
            .http_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect(),
    })
}

/// The innermost service: sends an admitted call to a node.
#[derive(Clone)]
struct Dispatch {
    nodes: Arc<Nodes>,
}

impl Service<Call> for Dispatch {
    type Response = Answer;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let nodes = self.nodes.clone();
        Box::pin(async move { dispatch(&nodes, call).await })
    }
}

async fn dispatch(nodes: &Nodes, call: Call) -> Result<Answer, Error> {
    let Call { request, deadline } = call;
    // A call whose budget queueing used up is refused by `invoke` before
    // anything is sent.
    let (answer, _node) = nodes.invoke(&request, deadline).await?;
    let outcome = answer
        .outcome
        .ok_or_else(|| Error::EmptyAnswer(request.call_id.clone()))?;
    Ok(Answer {
        outcome,
        version: answer.version,
    })
}

/// What a call is counted by: its function, or "" for a name that is not
/// one (refused before the lookup, it would let any caller grow the label
/// set); and its outcome, ok or the error kind.
fn call_labels<'a>(function: &'a str, result: &Result<Answer, Error>) -> (&'a str, &'static str) {
    let outcome = match result {
        Ok(Answer {
            outcome: Outcome::Error(error),
            ..
        }) => error.kind().name(),
        Ok(_) => "ok",
        Err(error) => error.kind().name(),
    };
    let function = match result {
        Err(Error::InvalidName(_) | Error::NotFound(_)) => "",
        _ => function,
    };
    (function, outcome)
}

#[cfg(test)]
mod tests {
    use sock_proto::v1::FunctionError;

    use super::*;

    #[test]
    fn calls_are_labelled_by_function_and_outcome() {
        let ok = Ok(Answer {
            outcome: Outcome::Result(b"1".to_vec()),
            version: 1,
        });
        assert_eq!(call_labels("echo", &ok), ("echo", "ok"));
        let raised = Ok(Answer {
            outcome: Outcome::Error(FunctionError {
                kind: ErrorKind::Timeout.into(),
                ..FunctionError::default()
            }),
            version: 1,
        });
        assert_eq!(call_labels("echo", &raised), ("echo", "timeout"));
        let overloaded = Err(Error::Overloaded("full".into()));
        assert_eq!(call_labels("echo", &overloaded), ("echo", "overloaded"));
        let unknown = Err(Error::NotFound("nope".into()));
        assert_eq!(call_labels("nope", &unknown), ("", "not_found"));
    }

    #[test]
    fn methods_outside_the_triggers_are_refused_with_the_allowed_ones() {
        let config = FunctionConfig {
            http_methods: vec!["get".into(), "POST".into()],
            ..FunctionConfig::default()
        };
        assert!(check_method("f", &config, "GET").is_ok());
        assert!(check_method("f", &config, "post").is_ok());
        match check_method("f", &config, "DELETE") {
            Err(Error::MethodNotAllowed { allowed, .. }) => assert_eq!(allowed, ["GET", "POST"]),
            other => panic!("expected 405, got {other:?}"),
        }
        assert!(check_method("f", &FunctionConfig::default(), "PATCH").is_ok());
    }
}
