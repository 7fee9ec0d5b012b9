//! OpenLambda's HTTP surface beside `/run`: the worker's `/status` and the
//! boss's registry API, so OpenLambda's scripts and clients (`ol admin
//! install`, its test scripts) work against the gateway's HTTP port.
//!
//! - `GET /status`: 200 `ready` while a sandbox node is healthy, else 503.
//! - `GET /registry` (or `/registry/`): 200, the JSON list of names.
//! - `POST /registry/<name>`, body a tar.gz of the function dir: 201
//!   `Lambda <name> uploaded successfully`, `x-sock-version` the new version.
//! - `DELETE /registry/<name>`: 200 `Lambda <name> deleted successfully`.
//! - `GET /registry/<name>/config`: 200, the config in OpenLambda's JSON
//!   (`Triggers.HTTP` `[{"Method": "*"}]` for every method, `Cron`
//!   `[{"Schedule": …}]` or null, `Kafka` its triggers or null,
//!   `Environment`, `ReuseSandbox`).
//!
//! Failures are the gateway's JSON errors: 400 for a bad name or bundle
//! (with the registry's reason), 401, 404 for an unknown function (where
//! OpenLambda's delete answers 500), 405, 413 over `max_bundle_mb`.
//! Registry routes pass the caller's `authorization` on to the registry,
//! which checks the admin token again: the gateway itself holds no token
//! that changes what is deployed: each route is the registry's gRPC admin
//! API on a channel of its own that sends no token. Bodies over
//! `max_bundle_mb` (32; keep it equal to the registry's) are refused unread;
//! the registry validates the bundle, and its refusals keep their message.
//! A push or delete drops the function from this gateway's metadata cache,
//! so its next `/run` sees the change at once, and makes its cron
//! scheduler read the schedules again at once, without waiting for the
//! registry's announcement; other gateways act on that announcement
//! (`watch`), or after `registry_cache_ms` and `cron_refresh_ms` while
//! their watch is down.
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sock_proto::v1::registry_client::RegistryClient;
use sock_proto::v1::{
    DeleteFunctionRequest, FunctionConfig, GetFunctionRequest, ListFunctionsRequest,
    PushFunctionRequest,
};
use sock_service::AuthedChannel;

use crate::body::read_body;
use crate::cron::Refresh;
use crate::error::Error;
use crate::invoke::Invoker;
use crate::nodes::Nodes;

/// Response header with the version a push made (as the registry's HTTP
/// store names it).
pub const VERSION_HEADER: &str = "x-sock-version";

pub(crate) struct OpenLambda {
    /// The registry's admin API on a channel with no token of its own:
    /// each request carries its caller's.
    pub registry: RegistryClient<AuthedChannel>,
    /// Forgets a function's cached version after a push or delete.
    pub invoker: Arc<Invoker>,
    /// Tells the cron scheduler its schedules changed.
    pub cron: Refresh,
    pub nodes: Arc<Nodes>,
    pub max_bundle_bytes: u64,
}

pub(crate) fn router(state: Arc<OpenLambda>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/registry", get(list))
        .route("/registry/", get(list))
        .route("/registry/{name}", post(upload).delete(remove))
        .route("/registry/{name}/config", get(config))
        .with_state(state)
}

/// OpenLambda's worker answers `ready` once it can take calls; the
/// gateway can while one of its sandbox nodes is healthy.
async fn status(State(state): State<Arc<OpenLambda>>) -> Response {
    readiness(&state.nodes)
}

fn readiness(nodes: &Nodes) -> Response {
    if nodes.all().iter().any(|node| node.is_healthy()) {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no sandbox node is healthy\n",
        )
            .into_response()
    }
}

async fn list(State(state): State<Arc<OpenLambda>>, headers: HeaderMap) -> Response {
    answer(async {
        let functions = state
            .registry
            .clone()
            .list_functions(as_caller(&headers, ListFunctionsRequest {})?)
            .await
            .map_err(Error::from_registry)?
            .into_inner()
            .functions;
        let names: Vec<String> = functions.into_iter().map(|f| f.name).collect();
        Ok(axum::Json(names).into_response())
    })
    .await
}

async fn upload(
    State(state): State<Arc<OpenLambda>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(async {
        sock_bundle::validate_name(&name)?;
        let bundle = read_body(&headers, body, state.max_bundle_bytes).await?;
        let request = PushFunctionRequest {
            name: name.clone(),
            bundle,
        };
        let info = state
            .registry
            .clone()
            .push_function(as_caller(&headers, request)?)
            .await
            .map_err(Error::from_registry)?
            .into_inner();
        state.invoker.invalidate(&name);
        state.cron.now();
        let mut response = (
            StatusCode::CREATED,
            format!("Lambda {name} uploaded successfully"),
        )
            .into_response();
        response
            .headers_mut()
            .insert(VERSION_HEADER, HeaderValue::from(info.version));
        Ok(response)
    })
    .await
}

async fn remove(
    State(state): State<Arc<OpenLambda>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(async {
        sock_bundle::validate_name(&name)?;
        let request = DeleteFunctionRequest { name: name.clone() };
        state
            .registry
            .clone()
            .delete_function(as_caller(&headers, request)?)
            .await
            .map_err(Error::from_registry)?;
        state.invoker.invalidate(&name);
        state.cron.now();
        Ok(format!("Lambda {name} deleted successfully").into_response())
    })
    .await
}

async fn config(
    State(state): State<Arc<OpenLambda>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(async {
        sock_bundle::validate_name(&name)?;
        let request = GetFunctionRequest { name };
        let info = state
            .registry
            .clone()
            .get_function(as_caller(&headers, request)?)
            .await
            .map_err(Error::from_registry)?
            .into_inner();
        let config = info.config.unwrap_or_default();
        Ok(axum::Json(openlambda_config(&config)).into_response())
    })
    .await
}

/// The answer, or the error's; a failure of sock's own is logged.
async fn answer(result: impl Future<Output = Result<Response, Error>>) -> Response {
    result.await.unwrap_or_else(|error| {
        if error.is_platform_failure() {
            tracing::warn!(%error, "registry request failed");
        }
        error.into_http(None)
    })
}

/// `message` as a registry request with the caller's `authorization`.
fn as_caller<T>(headers: &HeaderMap, message: T) -> Result<tonic::Request<T>, Error> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = tonic::metadata::MetadataValue::try_from(value.as_bytes()).map_err(|_| {
            Error::InvalidRequest("the authorization header must be printable ASCII".into())
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A function's config as OpenLambda's boss returns it: Go's JSON of its
/// `LambdaConfig`, field names as Go spells them and `null` for a kind of
/// trigger with none, so clients comparing the whole object agree.
fn openlambda_config(config: &FunctionConfig) -> Value {
    // sock keeps "every method" as no methods; OpenLambda as method "*".
    let methods: Vec<&str> = if config.http_methods.is_empty() {
        vec!["*"]
    } else {
        config.http_methods.iter().map(String::as_str).collect()
    };
    // Go's JSON of an empty slice field is null.
    let cron = (!config.cron.is_empty()).then(|| {
        config
            .cron
            .iter()
            .map(|c| json!({"Schedule": c.schedule}))
            .collect::<Vec<_>>()
    });
    json!({
        "Triggers": {
            "HTTP": methods.iter().map(|m| json!({"Method": m})).collect::<Vec<_>>(),
            "Cron": cron,
            "Kafka": kafka_triggers(config),
        },
        "Environment": config.environment,
        "ReuseSandbox": !config.fresh_sandbox_per_call,
    })
}

/// `triggers.kafka` as Go marshals OpenLambda's `[]KafkaTrigger`: its JSON
/// tags, no group id (tagged "-"), and `null` for none.
fn kafka_triggers(config: &FunctionConfig) -> Value {
    if config.kafka.is_empty() {
        return Value::Null;
    }
    config
        .kafka
        .iter()
        .map(|t| {
            json!({
                "bootstrap_servers": t.bootstrap_servers,
                "topics": t.topics,
                "auto_offset_reset": t.auto_offset_reset,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sock_bundle::testing::TarBuilder;
    use tokio::time::Instant;

    use super::*;

    /// The config the registry keeps for a bundle with this `ol.yaml`.
    fn config_of(ol_yaml: Option<&str>) -> FunctionConfig {
        let mut bundle = TarBuilder::with_entry_file();
        if let Some(ol_yaml) = ol_yaml {
            bundle = bundle.file("ol.yaml", ol_yaml.as_bytes());
        }
        sock_bundle::validate(&bundle.bundle(), &sock_bundle::BundleLimits::default())
            .expect("a valid bundle")
            .config
    }

    #[test]
    fn a_config_is_what_openlambda_answers_for_the_same_ol_yaml() {
        // What OpenLambda's own boss test expects for this ol.yaml.
        let config = config_of(Some("triggers:\n  http:\n    - method: \"POST\"\n"));
        assert_eq!(
            openlambda_config(&config),
            json!({
                "Triggers": {"HTTP": [{"Method": "POST"}], "Cron": null, "Kafka": null},
                "Environment": {},
                "ReuseSandbox": true,
            })
        );
        let config = config_of(Some("environment:\n  GREETING: hi\nreuse-sandbox: false\n"));
        let config = openlambda_config(&config);
        assert_eq!(config["Environment"], json!({"GREETING": "hi"}));
        assert_eq!(config["ReuseSandbox"], false);
        let config = config_of(Some(
            "triggers:\n  cron:\n    - schedule: \"*/5 * * * *\"\n",
        ));
        assert_eq!(
            openlambda_config(&config)["Triggers"]["Cron"],
            json!([{"Schedule": "*/5 * * * *"}])
        );
        let config = config_of(Some(
            "triggers:\n  kafka:\n    - bootstrap_servers: [\"k:9092\"]\n      topics: [t]\n",
        ));
        assert_eq!(
            openlambda_config(&config)["Triggers"]["Kafka"],
            json!([{"bootstrap_servers": ["k:9092"], "topics": ["t"], "auto_offset_reset": "latest"}])
        );
    }

    #[tokio::test]
    async fn status_is_not_ready_once_no_node_is_healthy() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = closed.local_addr().expect("address");
        drop(closed);
        let stop = tokio_util::sync::CancellationToken::new();
        let _stop = stop.clone().drop_guard();
        let nodes = Nodes::start(
            vec![format!("http://{addr}")],
            None,
            1,
            Duration::from_millis(10),
            Duration::from_secs(60),
            stop,
        )
        .await
        .expect("nodes");
        let deadline = Instant::now() + Duration::from_secs(10);
        while readiness(&nodes).status() == StatusCode::OK {
            assert!(
                Instant::now() < deadline,
                "a node nothing listens for stays healthy"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let response = readiness(&nodes);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 10)
            .await
            .expect("body");
        assert_eq!(&body[..], b"not ready: no sandbox node is healthy\n");
    }

    #[test]
    fn no_triggers_means_every_method_spelled_as_openlambda_does() {
        assert_eq!(
            openlambda_config(&config_of(None))["Triggers"]["HTTP"],
            json!([{"Method": "*"}])
        );
    }
}
