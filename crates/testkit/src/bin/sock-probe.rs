//! `sock-probe ADDR`: calls `Sandboxd/Status` at ADDR (a URL or
//! `unix:PATH`) with no token and prints what happened on one line:
//! `ok`, `status <code>: <message>`, or `unreachable: <error>`. The trust
//! tests run it as other users, which the test process itself cannot be.
use sock_proto::v1::StatusRequest;
use sock_proto::v1::sandboxd_client::SandboxdClient;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args().nth(1).expect("usage: sock-probe ADDR");
    let endpoint = tonic::transport::Endpoint::from_shared(addr).expect("a valid address");
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            println!("unreachable: {e:?}");
            return;
        }
    };
    match SandboxdClient::new(channel).status(StatusRequest {}).await {
        Ok(_) => println!("ok"),
        Err(status) => println!("status {:?}: {}", status.code(), status.message()),
    }
}
