//! A fake cache for sandboxd's tests: `Prepare` answers what the test
//! published in its [`Catalog`] (code dirs the test writes, a zygote, a
//! source build to do first) and keeps the wheels sandboxd sends back;
//! `Tree` answers the nodes the test set.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sock_proto::v1::cache_server::{Cache, CacheServer};
use sock_proto::v1::{
    ErrorKind, FunctionConfig, FunctionRef, PrepareRequest, PrepareResponse, SourceBuild, TreeNode,
    TreeRequest, TreeResponse, ZygoteNode,
};
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::serve::Served;

/// What the fake cache answers for a published function, besides its name
/// and version.
#[derive(Clone, Default)]
pub struct Function {
    pub config: FunctionConfig,
    pub package_dirs: Vec<String>,
    /// The zygote whose children run the function: the cache names the
    /// chain from the root zygote to it. None: the cache names no chain.
    pub zygote: Option<ZygoteNode>,
    /// A source build Prepare asks for until sandboxd sends back its wheel.
    pub build: Option<SourceBuild>,
    /// The code dir a compromised cache names instead of the one `publish`
    /// wrote.
    pub code_dir: Option<String>,
    /// Prepares its one version whatever version was asked, as a cache
    /// older than sandboxd did; else another version is not found, as the
    /// real cache answers when the registry no longer keeps it.
    pub any_version: bool,
}

/// The functions the fake cache knows, and what sandboxd sent it.
#[derive(Default)]
pub struct Catalog {
    /// Name → current version, and what Prepare answers for it.
    functions: Mutex<HashMap<String, (u64, Function)>>,
    /// The wheels sandboxd built and sent back, by requirement.
    pub wheels: Mutex<HashMap<String, Vec<u8>>>,
    /// Prepare calls so far.
    pub prepares: AtomicUsize,
    /// The nodes of the configured tree Tree answers, as the test set them.
    pub tree: Mutex<Vec<TreeNode>>,
    /// Tree calls that asked for a rebuild.
    pub tree_rebuilds: AtomicUsize,
}

impl Catalog {
    /// Makes `Prepare` answer `function` as version `version` of `name`
    /// (and any other version not found, unless it says `any_version`).
    pub fn publish(&self, name: &str, version: u64, function: Function) {
        self.functions
            .lock()
            .expect("catalog lock")
            .insert(name.into(), (version, function));
    }
}

struct FakeCache {
    code: PathBuf,
    catalog: Arc<Catalog>,
}

/// Where version `version` of `name`'s code is below the cache's code dir
/// `code`: the dir `Prepare` names, unless the function says another.
pub fn code_dir(code: &Path, name: &str, version: u64) -> PathBuf {
    code.join(name).join(version.to_string())
}

#[tonic::async_trait]
impl Cache for FakeCache {
    async fn prepare(
        &self,
        request: Request<PrepareRequest>,
    ) -> Result<Response<PrepareResponse>, Status> {
        self.catalog.prepares.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let FunctionRef {
            name,
            version: asked,
        } = request.function.unwrap_or_default();
        let mut wheels = self.catalog.wheels.lock().expect("catalog lock");
        for wheel in request.built {
            wheels.insert(wheel.requirement, wheel.wheel);
        }
        let functions = self.catalog.functions.lock().expect("catalog lock");
        let Some((version, function)) = functions.get(&name).cloned() else {
            return Err(ErrorKind::NotFound.status(format!(
                "function '{name}' does not exist; push it with `sock push`"
            )));
        };
        if asked != 0 && asked != version && !function.any_version {
            return Err(ErrorKind::NotFound.status(format!(
                "function '{name}' version {asked} is not available: the registry keeps {version}"
            )));
        }
        if let Some(build) = function.build
            && !wheels.contains_key(&build.requirement)
        {
            return Ok(Response::new(PrepareResponse {
                builds: vec![build],
                ..PrepareResponse::default()
            }));
        }
        let code = function
            .code_dir
            .unwrap_or_else(|| code_dir(&self.code, &name, version).display().to_string());
        Ok(Response::new(PrepareResponse {
            function: Some(FunctionRef { name, version }),
            code_dir: code,
            package_dirs: function.package_dirs,
            config: Some(function.config),
            zygote_chain: function.zygote.map_or_else(Vec::new, |zygote| {
                let root = ZygoteNode {
                    id: "root".into(),
                    ..ZygoteNode::default()
                };
                vec![root, zygote]
            }),
            ..PrepareResponse::default()
        }))
    }

    async fn tree(&self, request: Request<TreeRequest>) -> Result<Response<TreeResponse>, Status> {
        if request.into_inner().rebuild {
            self.catalog.tree_rebuilds.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Response::new(TreeResponse {
            source: "configured".into(),
            nodes: self.catalog.tree.lock().expect("catalog lock").clone(),
            ..TreeResponse::default()
        }))
    }
}

/// Serves a cache that prepares `catalog`'s functions from code dirs
/// below `code` (see [`code_dir`]) on a free loopback port.
pub async fn serve(code: PathBuf, catalog: Arc<Catalog>) -> Served {
    crate::serve::serve(
        Server::builder().add_service(CacheServer::new(FakeCache { code, catalog })),
    )
    .await
}
