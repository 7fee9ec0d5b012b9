//! The kept output lines of a node's functions, for the tests that read
//! them (declared with `#[path]`, as node.rs, which it extends).

use sock_proto::v1::{LogLine, LogsRequest};

use crate::node::Node;

impl Node {
    /// The kept lines of `function`.
    pub async fn logs(&self, function: &str) -> Vec<LogLine> {
        let mut stream = self
            .client
            .clone()
            .logs(LogsRequest {
                function: function.into(),
                follow: false,
            })
            .await
            .expect("logs")
            .into_inner();
        let mut lines = Vec::new();
        while let Some(line) = stream.message().await.expect("a log line") {
            lines.push(line);
        }
        lines
    }
}
