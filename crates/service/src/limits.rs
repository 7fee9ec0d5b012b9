//! How large a gRPC message sock's servers and clients take, set in one
//! place.
//!
//! tonic decodes at most 4 MiB a message unless told otherwise, while a
//! call's payload and result may be larger (6 MiB by default) and a bundle
//! or a built wheel larger still. So every server, and every client that
//! receives payloads or results, says here what its messages carry
//! ([`Carrying`]). A request over a server's limit is refused by tonic
//! before it is buffered; [`refuse_too_large`] makes that refusal the
//! service's own clear error.
//!
//! Payloads and results are held to [`MAX_CALL_BYTES`]: the gateway's
//! `max_payload_bytes` and sandboxd's `max_result_bytes` may not exceed it,
//! and sandboxd's server and the gateway's and the CLI's clients take it,
//! so no hop refuses what the two ends allowed. Every limit adds
//! [`ENVELOPE_BYTES`] for what a message holds besides its payload.
use sock_proto::v1::{
    cache_server::CacheServer, gateway_client::GatewayClient, gateway_server::GatewayServer,
    registry_server::RegistryServer, sandboxd_client::SandboxdClient,
    sandboxd_server::SandboxdServer,
};
use tonic::Status;
use tower::util::MapResponseLayer;

/// The largest payload or result a call may carry, whatever the operator
/// configures. The gateway's `max_payload_bytes` and sandboxd's
/// `max_result_bytes` are held to it, so the hops that know neither
/// (sandboxd's server, the gateway's client of it, the gateway's clients)
/// take it and never refuse what the other side allowed.
pub const MAX_CALL_BYTES: u64 = 64 << 20;

/// The largest wheel sandboxd builds from source: a larger one is refused
/// (and never read whole), so the cache takes `Prepare`s carrying this.
pub const MAX_WHEEL_BYTES: u64 = 256 << 20;

/// Room in a message for what is not its payload, result, bundle or
/// wheel: names, a function's config, an HTTP request's headers, framing.
pub const ENVELOPE_BYTES: u64 = 1 << 20;

/// A tonic server or client whose decoding limit is set by what its
/// messages carry. tonic generates the same setter on each of them but no
/// trait to reach it by.
pub trait Carrying: Sized {
    /// Decodes messages carrying up to `bytes` of payload, result, bundle
    /// or wheel, plus [`ENVELOPE_BYTES`].
    #[must_use]
    fn carrying(self, bytes: u64) -> Self;
}

/// The decoding limit of messages carrying `bytes`.
fn decoding_limit(bytes: u64) -> usize {
    usize::try_from(bytes.saturating_add(ENVELOPE_BYTES)).unwrap_or(usize::MAX)
}

macro_rules! carrying_servers {
    ($($server:ident),+) => {$(
        impl<T> Carrying for $server<T> {
            fn carrying(self, bytes: u64) -> Self {
                self.max_decoding_message_size(decoding_limit(bytes))
            }
        }
    )+};
}

macro_rules! carrying_clients {
    ($($client:ident),+) => {$(
        impl<T> Carrying for $client<T>
        where
            T: tonic::client::GrpcService<tonic::body::Body>,
            T::Error: Into<tonic::codegen::StdError>,
            T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
            <T::ResponseBody as tonic::codegen::Body>::Error:
                Into<tonic::codegen::StdError> + Send,
        {
            fn carrying(self, bytes: u64) -> Self {
                self.max_decoding_message_size(decoding_limit(bytes))
            }
        }
    )+};
}

carrying_servers!(GatewayServer, RegistryServer, CacheServer, SandboxdServer);
// The clients that receive payloads or results; the rest receive small
// answers and keep tonic's default.
carrying_clients!(GatewayClient, SandboxdClient);

/// Answers a request tonic refused for being over the decoding limit with
/// `refusal` instead. tonic says OUT_OF_RANGE ("decoded message length too
/// large"), where gRPC's status codes call for RESOURCE_EXHAUSTED, which
/// is what clients check for, and only the service can say which limit it
/// was in its users' words. No sock handler answers OUT_OF_RANGE, so every
/// one of them is that refusal. (The gateway passes sandboxd's codes on,
/// but sandboxd's refusals are rewritten by this same layer, and the
/// gateway's client takes any result sandboxd may send.)
pub fn refuse_too_large<B: Default>(
    refusal: Status,
) -> MapResponseLayer<impl Fn(http::Response<B>) -> http::Response<B> + Clone> {
    MapResponseLayer::new(move |response: http::Response<B>| {
        let refused = response.headers().get("grpc-status").is_some_and(|code| {
            tonic::Code::from_bytes(code.as_bytes()) == tonic::Code::OutOfRange
        });
        if refused {
            refusal.clone().into_http()
        } else {
            response
        }
    })
}

#[cfg(test)]
mod tests {
    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::*;

    /// What a handler (or tonic before it) answered, through the layer.
    async fn through(answer: Status) -> Status {
        let refusal = Status::resource_exhausted("payload is over the limit of 1 byte");
        let service = service_fn(move |_: ()| {
            let answer = answer.clone();
            async move { Ok::<_, std::convert::Infallible>(answer.into_http::<String>()) }
        });
        let mut service = refuse_too_large(refusal).layer(service);
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("an answer");
        Status::from_header_map(response.headers()).expect("a status in the headers")
    }

    #[tokio::test]
    async fn tonics_refusal_becomes_the_services_and_the_rest_pass() {
        let refused = through(Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 1 bytes",
        ))
        .await;
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refused.message(), "payload is over the limit of 1 byte");

        let other = through(Status::not_found("no such function")).await;
        assert_eq!(other.code(), tonic::Code::NotFound);
        assert_eq!(other.message(), "no such function");
    }
}
