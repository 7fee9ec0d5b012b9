//! Who runs `pip install`: sandboxd's `Install` RPC, which runs pip in an
//! installer sandbox (the cache itself never executes package code). A
//! trait, so the store's single-flight and failure rules are testable
//! without sandboxes.
use std::path::PathBuf;

use futures::future::BoxFuture;
use sock_proto::v1::InstallRequest;
use sock_proto::v1::sandboxd_client::SandboxdClient;
use sock_telemetry::grpc::TracedChannel;
use tonic::Code;

use crate::config::Config;
use crate::error::Error;

#[derive(Debug)]
pub(crate) enum InstallFailure {
    /// pip ran and failed: the tail of its output.
    Pip(String),
    /// The installer could not be reached or refused the request.
    Unavailable(String),
}

pub(crate) trait Installer: Send + Sync + 'static {
    /// `pip install --no-deps --target <target> <requirement>`; `target`
    /// exists and is empty.
    fn install(
        &self,
        requirement: String,
        target: PathBuf,
    ) -> BoxFuture<'static, Result<(), InstallFailure>>;
}

pub(crate) struct SandboxdInstaller {
    client: SandboxdClient<TracedChannel>,
    find_links: Vec<String>,
    index_url: String,
    timeout_ms: u32,
    memory_mb: u64,
}

impl SandboxdInstaller {
    pub(crate) fn new(config: &Config) -> Result<SandboxdInstaller, Error> {
        let channel = tonic::transport::Endpoint::from_shared(config.sandboxd_addr.clone())
            .map_err(|e| {
                Error::InvalidConfig(format!("sandboxd_addr {:?}: {e}", config.sandboxd_addr))
            })?
            .connect_lazy();
        let mut find_links = Vec::new();
        for dir in &config.find_links {
            let absolute = dir
                .canonicalize()
                .map_err(|e| Error::InvalidConfig(format!("find_links {}: {e}", dir.display())))?;
            find_links.push(absolute.display().to_string());
        }
        Ok(SandboxdInstaller {
            client: SandboxdClient::new(sock_telemetry::grpc::traced(channel)),
            find_links,
            index_url: config.index_url.clone(),
            timeout_ms: u32::try_from(config.installer_timeout_s.saturating_mul(1000))
                .unwrap_or(u32::MAX),
            memory_mb: config.installer_mem_mb,
        })
    }
}

impl Installer for SandboxdInstaller {
    fn install(
        &self,
        requirement: String,
        target: PathBuf,
    ) -> BoxFuture<'static, Result<(), InstallFailure>> {
        let mut client = self.client.clone();
        let request = InstallRequest {
            requirement,
            target_dir: target.display().to_string(),
            find_links: self.find_links.clone(),
            // With find_links, sandboxd installs offline (--no-index).
            index_url: if self.find_links.is_empty() {
                self.index_url.clone()
            } else {
                String::new()
            },
            timeout_ms: self.timeout_ms,
            memory_mb: self.memory_mb,
        };
        Box::pin(async move {
            match client.install(request).await {
                Ok(answer) => {
                    let answer = answer.into_inner();
                    if answer.ok {
                        Ok(())
                    } else {
                        Err(InstallFailure::Pip(answer.log))
                    }
                }
                Err(status) => match status.code() {
                    Code::InvalidArgument | Code::FailedPrecondition => {
                        Err(InstallFailure::Pip(status.message().to_string()))
                    }
                    _ => Err(InstallFailure::Unavailable(status.message().to_string())),
                },
            }
        })
    }
}
