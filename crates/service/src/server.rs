//! The parts of a gRPC server every sock service carries.
//!
//! Every gRPC server is `Server::builder()` with
//! `sock_telemetry::grpc::ServerTraceLayer` and [`crate::AuthLayer`] (a
//! `fn(path) -> Access` saying which token each path needs), then
//! [`with_standard_services`] (health and reflection), then the service,
//! which marks itself SERVING in health once it is ready. Every gRPC client
//! channel is [`crate::authed`] (traced, and sending the caller's token);
//! every outgoing HTTP request gets `sock_telemetry::http::inject_context`.
use axum::serve::{ListenerExt, TapIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_reflection::server::Builder;

/// Binds a TCP listener, with the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// A gRPC server's connections from `listener`, with Nagle's algorithm
/// off: a reply's frames go out as they are written, not held back until
/// the peer acknowledges the last ones.
pub fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// [`grpc_incoming`] for an HTTP (axum) server.
pub fn http_incoming(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(no_delay)
}

fn no_delay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot turn Nagle's algorithm off on a connection");
    }
}

/// Starts a router with `grpc.health.v1` (answering from `health`) and
/// server reflection for every sock service, so grpcurl and health probes
/// work against any of them. The service adds its own service next.
///
/// Reflection is served as v1 and as v1alpha: grpcio's reflection client,
/// Postman and older grpcurl only ask v1alpha.
pub fn with_standard_services<L: Clone>(
    server: &mut Server<L>,
    health: HealthReporter,
) -> Router<L> {
    server
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            health,
        )))
        .add_service(
            reflection()
                .build_v1()
                .expect("sock's own descriptor sets are valid"),
        )
        .add_service(
            reflection()
                .build_v1alpha()
                .expect("sock's own descriptor sets are valid"),
        )
}

/// Both versions describe the same services, both reflection services
/// among them, whichever version a client asks.
fn reflection() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(sock_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false)
}

#[cfg(test)]
mod tests {
    use tonic_reflection::pb::{v1, v1alpha};

    use super::*;

    /// The services a reflection server of version `$v` (the module of
    /// its generated types) lists on `$channel`, sorted; the two versions'
    /// types differ only by module.
    macro_rules! list_services {
        ($v:ident, $channel:expr) => {{
            let request = $v::ServerReflectionRequest {
                host: String::new(),
                message_request: Some($v::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                )),
            };
            let answer = $v::server_reflection_client::ServerReflectionClient::new($channel)
                .server_reflection_info(tokio_stream::once(request))
                .await
                .expect(stringify!($v reflection))
                .into_inner()
                .message()
                .await
                .expect(stringify!($v answer))
                .expect("one answer");
            let Some($v::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
                answer.message_response
            else {
                panic!("{} answered {answer:?}", stringify!($v));
            };
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }};
    }

    #[tokio::test]
    async fn reflection_answers_v1_and_v1alpha_alike() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (health, _) = tonic_health::server::health_reporter();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = with_standard_services(&mut Server::builder(), health)
            .serve_with_incoming_shutdown(grpc_incoming(listener), stop.clone().cancelled_owned());
        let served = tokio::spawn(server);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");

        let v1_names = list_services!(v1, channel.clone());
        let v1alpha_names = list_services!(v1alpha, channel);
        assert_eq!(v1_names, v1alpha_names);
        for service in [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "sock.v1.Gateway",
            "sock.v1.Registry",
        ] {
            assert!(
                v1_names.iter().any(|n| n == service),
                "{service} in {v1_names:?}"
            );
        }
        stop.cancel();
        served.await.expect("server task").expect("server");
    }
}
