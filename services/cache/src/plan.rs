//! The package half of `Prepare`: a function version's requirements →
//! its closure in the store → the dirs, imports and zygote chain sandboxd
//! is answered.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sock_proto::v1::ZygoteNode;

use crate::closure;
use crate::config::Config;
use crate::error::Error;
use crate::installer::Installer;
use crate::markers::Environment;
use crate::packages::{Package, Packages};
use crate::requirement::Requirement;
use crate::tree::ImportTree;

type Closure = Arc<Vec<Arc<Package>>>;

/// Closures remembered per function: its newest versions only.
const VERSIONS_REMEMBERED: usize = 2;

pub(crate) struct Planner {
    packages: Arc<Packages>,
    env: Environment,
    /// None when `import_cache` is off.
    tree: Option<ImportTree>,
    /// Per function, (version, closure): unpinned requirements are pinned
    /// once, at the version's first prepare, to what pip resolved.
    closures: Mutex<HashMap<String, Vec<(u64, Closure)>>>,
}

/// What sandboxd needs besides the code.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub package_dirs: Vec<String>,
    pub imports: Vec<String>,
    pub zygote_chain: Vec<ZygoteNode>,
}

impl Planner {
    /// Blocking: reads the store and asks the sandbox python for its
    /// marker environment.
    pub(crate) fn open(
        config: &Config,
        data_dir: &Path,
        tmp: &Path,
        installer: Arc<dyn Installer>,
    ) -> Result<Planner, Error> {
        let tree = match config.import_cache.as_str() {
            "tree" => Some(ImportTree::load(&config.import_tree).map_err(Error::InvalidConfig)?),
            "off" => None,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "import_cache {other:?} is neither \"tree\" nor \"off\""
                )));
            }
        };
        Ok(Planner {
            packages: Arc::new(Packages::open(data_dir, tmp, installer)?),
            env: Environment::probe(&config.python),
            tree,
            closures: Mutex::default(),
        })
    }

    /// Installs what version `version` of `name` needs and says how to run it.
    #[tracing::instrument(name = "cache.packages", skip_all, fields(function = %name, version))]
    pub(crate) async fn plan(
        &self,
        name: &str,
        version: u64,
        requirements: &[String],
    ) -> Result<Plan, Error> {
        let closure = self.closure(name, version, requirements).await?;
        let chain = match &self.tree {
            Some(tree) => tree.chain(&self.packages, &self.env, &closure).await,
            None => Vec::new(),
        };
        // The chain's dirs first, in its order, so they are a prefix of
        // the function's sys.path; then the rest of the closure.
        let mut dirs: Vec<String> = Vec::new();
        for package in chain.iter().flat_map(|n| &n.added).chain(closure.iter()) {
            let dir = package.dir.display().to_string();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        let imported = chain
            .last()
            .map(|n| n.all_imports.as_slice())
            .unwrap_or_default();
        let mut imports: Vec<String> = Vec::new();
        for module in closure.iter().flat_map(|p| &p.modules) {
            if !imported.contains(module) && !imports.contains(module) {
                imports.push(module.clone());
            }
        }
        Ok(Plan {
            package_dirs: dirs,
            imports,
            zygote_chain: chain
                .iter()
                .map(|node| ZygoteNode {
                    id: node.id.clone(),
                    package_dirs: node
                        .added
                        .iter()
                        .map(|p| p.dir.display().to_string())
                        .collect(),
                    imports: node.imports.clone(),
                })
                .collect(),
        })
    }

    async fn closure(
        &self,
        name: &str,
        version: u64,
        requirements: &[String],
    ) -> Result<Closure, Error> {
        let remembered = self
            .closures
            .lock()
            .expect("closures are never held across a panic")
            .get(name)
            .and_then(|versions| versions.iter().find(|(v, _)| *v == version).cloned());
        if let Some((_, closure)) = remembered {
            return Ok(closure);
        }
        let roots = requirements
            .iter()
            .map(|line| Requirement::parse(line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| Error::Requirement {
                name: name.to_string(),
                version,
                reason,
            })?;
        let closure = Arc::new(
            closure::resolve(&self.packages, &self.env, &roots, &[])
                .await
                .map_err(|source| Error::Package {
                    name: name.to_string(),
                    source,
                })?,
        );
        if !closure.is_empty() {
            tracing::info!(packages = ?closure.iter().map(|p| p.pin()).collect::<Vec<_>>(), "resolved the function's packages");
        }
        let mut closures = self
            .closures
            .lock()
            .expect("closures are never held across a panic");
        let versions = closures.entry(name.to_string()).or_default();
        if !versions.iter().any(|(v, _)| *v == version) {
            versions.push((version, closure.clone()));
            versions.sort_unstable_by_key(|(v, _)| std::cmp::Reverse(*v));
            versions.truncate(VERSIONS_REMEMBERED);
        }
        Ok(closure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::tests::FakeInstaller;

    fn planner(tree: &str, installer: Arc<FakeInstaller>) -> (tempfile::TempDir, Planner) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        let config = Config {
            import_tree: tree.into(),
            ..Config::default()
        };
        let planner = Planner::open(&config, dir.path(), &tmp, installer).expect("open");
        (dir, planner)
    }

    #[tokio::test]
    async fn a_plan_lists_the_closure_with_the_chain_first() {
        let installer = Arc::new(FakeInstaller::new(&[
            ("app", "1.0", &["numpy>=2"]),
            ("numpy", "2.1.0", &[]),
        ]));
        let tree = r#"{"children": [{"packages": ["numpy==2.1.0"]}]}"#;
        let (dir, planner) = planner(tree, installer);
        let plan = planner
            .plan("f", 1, &["app==1.0".into(), "numpy==2.1.0".into()])
            .await
            .expect("plans");
        let numpy = dir
            .path()
            .join("packages/numpy==2.1.0/files")
            .display()
            .to_string();
        let app = dir
            .path()
            .join("packages/app==1.0/files")
            .display()
            .to_string();
        assert_eq!(plan.package_dirs, [numpy.clone(), app]);
        assert_eq!(plan.imports, ["app"]);
        let ids: Vec<&str> = plan.zygote_chain.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["root", "root/numpy==2.1.0"]);
        assert_eq!(plan.zygote_chain[1].package_dirs, [numpy]);
        assert_eq!(plan.zygote_chain[1].imports, ["numpy"]);
    }

    #[tokio::test]
    async fn unpinned_requirements_are_pinned_once_per_function_version() {
        let installer = Arc::new(FakeInstaller::new(&[("app", "1.0", &[])]));
        let (_dir, planner) = planner("", installer);
        let first = planner.plan("f", 1, &["app".into()]).await.expect("plans");
        let again = planner.plan("f", 1, &["app".into()]).await.expect("plans");
        assert_eq!(first, again);
        assert_eq!(planner.packages.pip_runs(), 1);
    }

    #[tokio::test]
    async fn bad_requirements_and_failed_installs_name_the_function_and_package() {
        let installer = Arc::new(FakeInstaller::new(&[]));
        let (_dir, planner) = planner("", installer.clone());
        let bad = planner
            .plan("f", 3, &["-e .".into()])
            .await
            .expect_err("refused");
        assert!(matches!(bad, Error::Requirement { .. }));
        assert!(bad.to_string().contains("function 'f' version 3"), "{bad}");
        let missing = planner
            .plan("f", 3, &["nope==1.0".into()])
            .await
            .expect_err("fails");
        let status = tonic::Status::from(missing);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("package 'nope==1.0' failed to install"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("No matching distribution"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn unknown_import_cache_modes_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config {
            import_cache: "sometimes".into(),
            ..Config::default()
        };
        let err = Planner::open(
            &config,
            dir.path(),
            dir.path(),
            Arc::new(FakeInstaller::new(&[])),
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("neither"), "{err}");
    }
}
