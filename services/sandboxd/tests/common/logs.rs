//! The kept output lines of a node's functions, for the tests that read
//! them (declared with `#[path]`, as node.rs, which it extends).

use sock_proto::v1::{LogLine, LogsRequest};

use crate::node::Node;

impl Node {
    /// The kept lines of `function`.
    pub async fn logs(&self, function: &str) -> Vec<LogLine> {
        let stream = self
            .client
            .clone()
            .logs(LogsRequest {
                function: function.into(),
                follow: false,
            })
            .await
            .expect("logs")
            .into_inner();
        sock_testkit::collect(stream).await
    }
}
