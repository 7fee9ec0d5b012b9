//! The package half of `Prepare`: a function version's requirements →
//! its closure in the store → the dirs, imports and zygote chain sandboxd
//! is answered.
//!
//! A version's closure is resolved once (unpinned lines pinned to what pip
//! picked) and kept in memory and in `<data_dir>/pins/<name>/<version>`
//! (with the requirements it came from), so a restarted cache serves the same versions without asking pip again.
//!
//! The answer: `package_dirs` = the chain's dirs first, then the rest of the
//! closure; `imports` = the closure's modules the chain did not import;
//! `zygote_chain` empty when the import cache is off or not even the root
//! fits (sandboxd then uses its own root zygote). With
//! `allow_source_builds`, a package with only an sdist makes `Prepare`
//! answer only `builds`, and sandboxd asks again with the wheels.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sock_proto::v1::{BuiltWheel, SourceBuild, TreeResponse, ZygoteNode};
use sock_service::ImportCache;

use crate::closure;
use crate::config::Config;
use crate::error::{Error, PackageError, StartError};
use crate::installer::Installer;
use crate::learn::Learner;
use crate::markers::Environment;
use crate::packages::{Package, Packages};
use crate::requirement::Requirement;
use crate::sdist::Sdists;
use crate::tree::ImportTree;

type Closure = Arc<Vec<Arc<Package>>>;
/// (function version, its requirements' pins header, closure)
type Remembered = (u64, String, Closure);

/// Closures remembered per function: its newest versions only.
const VERSIONS_REMEMBERED: usize = 2;

pub(crate) struct Planner {
    packages: Arc<Packages>,
    /// `<data_dir>/pins`.
    pins: PathBuf,
    tmp: PathBuf,
    env: Environment,
    imports: Imports,
    /// Per function, (version, closure): unpinned requirements are pinned
    /// once, at the version's first prepare, to what pip resolved.
    closures: Mutex<HashMap<String, Vec<Remembered>>>,
}

/// Where zygote chains come from.
enum Imports {
    Off,
    Configured(Arc<ImportTree>),
    Learned(Arc<Learner>),
}

impl Imports {
    fn tree(&self) -> Option<Arc<ImportTree>> {
        match self {
            Imports::Off => None,
            Imports::Configured(tree) => Some(tree.clone()),
            Imports::Learned(learner) => Some(learner.tree()),
        }
    }
}

/// What sandboxd needs besides the code.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub package_dirs: Vec<String>,
    pub imports: Vec<String>,
    pub zygote_chain: Vec<ZygoteNode>,
    /// Source builds the caller must do first; when set, nothing else is.
    pub builds: Vec<SourceBuild>,
}

impl Planner {
    /// Blocking: reads the store and asks the sandbox python for its
    /// marker environment.
    pub(crate) fn open(
        config: &Config,
        data_dir: &Path,
        tmp: &Path,
        installer: Arc<dyn Installer>,
    ) -> Result<Planner, StartError> {
        let imports = match config.import_cache {
            ImportCache::Tree if config.import_tree.trim().is_empty() => Imports::Learned(
                Arc::new(Learner::open(data_dir, tmp, config.tree_budget_mb)),
            ),
            ImportCache::Tree => Imports::Configured(Arc::new(
                ImportTree::load(&config.import_tree).map_err(StartError::InvalidConfig)?,
            )),
            ImportCache::Off => Imports::Off,
        };
        let sdists = Sdists::open(
            data_dir,
            tmp,
            config.find_links.clone(),
            config.index_url.clone(),
        )
        .map_err(|e| Error::io("create", data_dir.join("sdists"), e))?;
        let pins = data_dir.join("pins");
        std::fs::create_dir_all(&pins).map_err(|e| Error::io("create", &pins, e))?;
        Ok(Planner {
            packages: Arc::new(Packages::open(
                data_dir,
                tmp,
                installer,
                sdists,
                config.allow_source_builds,
            )?),
            pins,
            tmp: tmp.to_path_buf(),
            env: Environment::probe(&config.python),
            imports,
            closures: Mutex::default(),
        })
    }

    /// Installs what version `version` of `name` needs (`built`: wheels
    /// the caller built for an earlier plan's `builds`) and says how to
    /// run it, or which source builds it needs first.
    #[tracing::instrument(name = "cache.packages", skip_all, fields(function = %name, version))]
    pub(crate) async fn plan(
        &self,
        name: &str,
        version: u64,
        requirements: &[String],
        built: &[BuiltWheel],
    ) -> Result<Plan, Error> {
        for wheel in built {
            self.packages
                .install_built(&wheel.requirement, &wheel.file_name, &wheel.wheel)
                .await
                .map_err(|source| Error::Package {
                    name: name.to_string(),
                    source,
                })?;
        }
        let closure = match self.closure(name, version, requirements).await {
            Err(Error::Package {
                source:
                    PackageError::NeedsBuild {
                        requirement,
                        dir,
                        file_name,
                    },
                ..
            }) => {
                return Ok(Plan {
                    builds: vec![SourceBuild {
                        requirement,
                        dir,
                        file_name,
                    }],
                    ..Plan::default()
                });
            }
            closure => closure?,
        };
        if let Imports::Learned(learner) = &self.imports {
            learner.record(name, version, &closure);
        }
        let chain = match self.imports.tree() {
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
            builds: Vec::new(),
        })
    }

    /// The tree in use (a learned one rebuilt first when `rebuild`).
    pub(crate) async fn tree(&self, rebuild: bool) -> TreeResponse {
        match &self.imports {
            Imports::Off => TreeResponse {
                source: "off".into(),
                ..TreeResponse::default()
            },
            Imports::Configured(tree) => TreeResponse {
                source: "configured".into(),
                nodes: tree.describe(),
                ..TreeResponse::default()
            },
            Imports::Learned(learner) => {
                if rebuild {
                    self.relearn(true).await;
                }
                learner.describe()
            }
        }
    }

    /// Rebuilds a learned tree if something new was seen, or `always`.
    pub(crate) async fn relearn(&self, always: bool) {
        if let Imports::Learned(learner) = &self.imports {
            let learner = learner.clone();
            tokio::task::spawn_blocking(move || learner.rebuild(SystemTime::now(), always))
                .await
                .expect("rebuilding does not panic");
        }
    }

    async fn closure(
        &self,
        name: &str,
        version: u64,
        requirements: &[String],
    ) -> Result<Closure, Error> {
        let header = pins_header(requirements);
        let remembered = self
            .closures
            .lock()
            .expect("closures are never held across a panic")
            .get(name)
            .and_then(|versions| {
                versions
                    .iter()
                    .find(|(v, h, _)| *v == version && *h == header)
                    .map(|(_, _, closure)| closure.clone())
            });
        if let Some(closure) = remembered {
            return Ok(closure);
        }
        let pinned = self.read_pins(name, version, &header);
        let lines = pinned.as_deref().unwrap_or(requirements);
        let roots = lines
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
        if pinned.is_none() && !closure.is_empty() {
            tracing::info!(packages = ?closure.iter().map(|p| p.pin()).collect::<Vec<_>>(), "resolved the function's packages");
            self.write_pins(name, version, &header, &closure);
        }
        let mut closures = self
            .closures
            .lock()
            .expect("closures are never held across a panic");
        let versions = closures.entry(name.to_string()).or_default();
        versions.retain(|(v, _, _)| *v != version);
        versions.push((version, header, closure.clone()));
        versions.sort_unstable_by_key(|(v, _, _)| std::cmp::Reverse(*v));
        versions.truncate(VERSIONS_REMEMBERED);
        Ok(closure)
    }

    /// The closure written at the version's first prepare, if it was for
    /// these very requirements (a reset registry may reuse a version).
    fn read_pins(&self, name: &str, version: u64, header: &str) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.pins.join(name).join(version.to_string())).ok()?;
        let mut lines = text.lines();
        (lines.next() == Some(header)).then(|| lines.map(str::to_string).collect())
    }

    /// Best effort: without the file, a restart resolves again.
    fn write_pins(&self, name: &str, version: u64, header: &str, closure: &[Arc<Package>]) {
        let dir = self.pins.join(name);
        let mut text = format!("{header}\n");
        for package in closure {
            text.push_str(&package.pin());
            text.push('\n');
        }
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| tempfile::NamedTempFile::new_in(&self.tmp))
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.persist(dir.join(version.to_string()))
                    .map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(error) = written {
            tracing::warn!(function = %name, version, %error, "cannot remember the resolved packages");
            return;
        }
        // Only the versions the code store keeps need their pins.
        let mut versions: Vec<u64> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        versions.sort_unstable_by_key(|v| std::cmp::Reverse(*v));
        for old in versions.into_iter().skip(VERSIONS_REMEMBERED) {
            let _ = std::fs::remove_file(dir.join(old.to_string()));
        }
    }
}

fn pins_header(requirements: &[String]) -> String {
    format!("# requirements: {}", requirements.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::tests::FakeInstaller;

    fn planner(tree: &str, installer: Arc<FakeInstaller>) -> (tempfile::TempDir, Planner) {
        planner_with(
            Config {
                import_tree: tree.into(),
                ..Config::default()
            },
            installer,
        )
    }

    /// Offline: with no `find_links` given, an empty dir of them.
    fn planner_with(
        mut config: Config,
        installer: Arc<FakeInstaller>,
    ) -> (tempfile::TempDir, Planner) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        if config.find_links.is_empty() {
            let links = dir.path().join("links");
            std::fs::create_dir(&links).expect("mkdir links");
            std::fs::write(links.join("beta-1.0.tar.gz"), "sdist").expect("write sdist");
            config.find_links.push(links);
        }
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
            .plan("f", 1, &["app==1.0".into(), "numpy==2.1.0".into()], &[])
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
    async fn a_nodes_zygote_gets_its_packages_whole_closure_and_fits_only_the_same_versions() {
        let installer = Arc::new(FakeInstaller::new(&[
            (
                "pandas",
                "2.2.3",
                &["numpy>=1.26", "python-dateutil>=2.8.2", "pytz>=2020.1"],
            ),
            ("numpy", "2.2.3", &[]),
            ("python-dateutil", "2.9.0", &["six>=1.5"]),
            ("six", "1.17.0", &[]),
            ("pytz", "2024.1", &[]),
            ("pytz", "2025.1", &[]),
        ]));
        let tree = r#"{"children": [{"packages": ["numpy==2.2.3", "pandas==2.2.3"]}]}"#;
        let (dir, planner) = planner(tree, installer);
        let dir_of = |pin: &str| {
            dir.path()
                .join(format!("packages/{pin}/files"))
                .display()
                .to_string()
        };
        let plan = planner
            .plan("f", 1, &["pandas==2.2.3".into()], &[])
            .await
            .expect("plans");
        let ids: Vec<&str> = plan.zygote_chain.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["root", "root/numpy==2.2.3,pandas==2.2.3"]);
        let mut node_dirs = plan.zygote_chain[1].package_dirs.clone();
        node_dirs.sort();
        let mut closure = [
            "numpy==2.2.3",
            "pandas==2.2.3",
            "python-dateutil==2.9.0",
            "pytz==2025.1",
            "six==1.17.0",
        ]
        .map(dir_of);
        closure.sort();
        assert_eq!(
            node_dirs, closure,
            "pandas' dependencies are on its zygote's path"
        );
        assert_eq!(plan.zygote_chain[1].imports, ["numpy", "pandas"]);

        // A function pinning another version of a dependency: the node's
        // zygote would give it the wrong pytz, so only the root fits.
        let other = planner
            .plan(
                "g",
                1,
                &["pandas==2.2.3".into(), "pytz==2024.1".into()],
                &[],
            )
            .await
            .expect("plans");
        let ids: Vec<&str> = other.zygote_chain.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["root"]);
        assert!(other.package_dirs.contains(&dir_of("pytz==2024.1")));
    }

    #[tokio::test]
    async fn with_no_tree_configured_one_is_learned_from_cold_starts() {
        let installer = Arc::new(FakeInstaller::new(&[
            ("app", "1.0", &["dep"]),
            ("dep", "1.0", &[]),
            ("other", "1.0", &[]),
        ]));
        let (dir, planner) = planner("", installer);
        let chain = |plan: &Plan| -> Vec<String> {
            plan.zygote_chain.iter().map(|n| n.id.clone()).collect()
        };
        for name in ["f", "g"] {
            let plan = planner
                .plan(name, 1, &["app==1.0".into()], &[])
                .await
                .expect("plans");
            assert_eq!(chain(&plan), ["root"], "nothing learned yet");
        }
        planner
            .plan("h", 1, &["other==1.0".into()], &[])
            .await
            .expect("plans");
        planner.relearn(false).await;

        let learned = "root/app==1.0,dep==1.0";
        let later = planner
            .plan("k", 1, &["app==1.0".into()], &[])
            .await
            .expect("plans");
        assert_eq!(chain(&later), ["root", learned]);
        assert_eq!(later.zygote_chain[1].imports, ["app", "dep"]);
        assert!(later.imports.is_empty(), "the zygote imported them all");
        let tree = planner.tree(false).await;
        assert_eq!(tree.source, "learned");
        assert_eq!(tree.functions, 4);
        let node = tree.nodes.iter().find(|n| n.id == learned).expect("listed");
        assert_eq!((node.depth, node.chosen), (1, 1));
        assert_eq!(node.packages, ["app==1.0", "dep==1.0"]);
        assert!(node.estimated_mb >= 10, "{node:?}");
        assert!(node.last_chosen_unix_ms > 0);

        // A restarted cache serves the learned node before anything new.
        let tmp = dir.path().join("tmp");
        let restarted = Planner::open(
            &Config::default(),
            dir.path(),
            &tmp,
            Arc::new(FakeInstaller::new(&[])),
        )
        .expect("reopen");
        let ids: Vec<String> = restarted
            .tree(false)
            .await
            .nodes
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, ["root", learned]);
    }

    #[tokio::test]
    async fn a_configured_or_disabled_tree_says_so() {
        let installer = Arc::new(FakeInstaller::new(&[]));
        let (_dir, configured) = planner(
            r#"{"children": [{"packages": ["six"]}]}"#,
            installer.clone(),
        );
        let tree = configured.tree(true).await;
        assert_eq!(tree.source, "configured");
        let ids: Vec<(String, u32)> = tree.nodes.into_iter().map(|n| (n.id, n.depth)).collect();
        assert_eq!(
            ids,
            [("root".into(), 0), ("root/six".into(), 1)],
            "as written until resolved"
        );
        let (_dir, off) = planner_with(
            Config {
                import_cache: ImportCache::Off,
                ..Config::default()
            },
            installer,
        );
        let tree = off.tree(true).await;
        assert_eq!((tree.source.as_str(), tree.nodes.len()), ("off", 0));
    }

    #[tokio::test]
    async fn unpinned_requirements_are_pinned_once_per_function_version() {
        let installer = Arc::new(FakeInstaller::new(&[("app", "1.0", &[])]));
        let (_dir, planner) = planner("", installer);
        let first = planner
            .plan("f", 1, &["app".into()], &[])
            .await
            .expect("plans");
        let again = planner
            .plan("f", 1, &["app".into()], &[])
            .await
            .expect("plans");
        assert_eq!(first, again);
        assert_eq!(planner.packages.pip_runs(), 1);
    }

    #[tokio::test]
    async fn a_restart_keeps_the_versions_pip_picked() {
        let installer = Arc::new(FakeInstaller::new(&[
            ("app", "1.0", &["dep"]),
            ("dep", "1.0", &[]),
        ]));
        let (dir, planner) = planner("", installer);
        let first = planner
            .plan("f", 1, &["app".into()], &[])
            .await
            .expect("plans");

        // A newer app appears on the index; the restarted cache keeps 1.0
        // for this function version, without pip.
        let newer = Arc::new(FakeInstaller::new(&[
            ("app", "2.0", &[]),
            ("dep", "1.0", &[]),
        ]));
        let tmp = dir.path().join("tmp");
        let restarted =
            Planner::open(&Config::default(), dir.path(), &tmp, newer.clone()).expect("reopen");
        let again = restarted
            .plan("f", 1, &["app".into()], &[])
            .await
            .expect("plans");
        assert_eq!(first.package_dirs, again.package_dirs);
        assert_eq!(restarted.packages.pip_runs(), 0);

        // Other requirements under the same version (a reset registry):
        // resolved anew.
        let other = restarted
            .plan("f", 1, &["app>=2".into()], &[])
            .await
            .expect("plans");
        assert!(
            other.package_dirs[0].ends_with("app==2.0/files"),
            "{other:?}"
        );
    }

    #[tokio::test]
    async fn bad_requirements_and_failed_installs_name_the_function_and_package() {
        let installer = Arc::new(FakeInstaller::new(&[]));
        let (_dir, planner) = planner("", installer.clone());
        let bad = planner
            .plan("f", 3, &["-e .".into()], &[])
            .await
            .expect_err("refused");
        assert!(matches!(bad, Error::Requirement { .. }));
        assert!(bad.to_string().contains("function 'f' version 3"), "{bad}");
        let missing = planner
            .plan("f", 3, &["nope==1.0".into()], &[])
            .await
            .expect_err("fails");
        let status = tonic::Status::from(missing);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            sock_proto::v1::ErrorKind::stamped(&status),
            Some(sock_proto::v1::ErrorKind::CannotStart)
        );
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

    #[tokio::test]
    async fn a_package_with_only_an_sdist_is_built_by_the_caller_then_installed() {
        let links = tempfile::tempdir().expect("tempdir");
        std::fs::write(links.path().join("beta-1.0.tar.gz"), "sdist").expect("write sdist");
        let mut installer =
            FakeInstaller::new(&[("app", "1.0", &["beta==1.0"]), ("beta", "1.0", &[])]);
        installer.sdist_only.push("beta==1.0".into());
        let config = Config {
            allow_source_builds: true,
            find_links: vec![links.path().to_path_buf()],
            import_cache: ImportCache::Off,
            ..Config::default()
        };
        let (dir, planner) = planner_with(config, Arc::new(installer));
        let requirements = ["app==1.0".to_string()];

        let first = planner
            .plan("f", 1, &requirements, &[])
            .await
            .expect("plans");
        let sdists = dir.path().join("sdists/beta==1.0");
        assert_eq!(
            first,
            Plan {
                builds: vec![SourceBuild {
                    requirement: "beta==1.0".into(),
                    dir: sdists.display().to_string(),
                    file_name: "beta-1.0.tar.gz".into(),
                }],
                ..Plan::default()
            }
        );
        assert_eq!(std::fs::read_dir(&sdists).expect("list").count(), 1);

        // A wheel for a build nobody asked for is refused.
        let unasked = BuiltWheel {
            requirement: "app==9.0".into(),
            file_name: "app-9.0-py3-none-any.whl".into(),
            wheel: b"zip".to_vec(),
        };
        let err = planner
            .plan("f", 1, &requirements, &[unasked])
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("the cache asked for no such build"),
            "{err}"
        );
        // A file that is not a wheel of the package is refused too.
        let misnamed = BuiltWheel {
            requirement: "beta==1.0".into(),
            file_name: "../beta-1.0-py3-none-any.whl".into(),
            wheel: b"zip".to_vec(),
        };
        let err = planner
            .plan("f", 1, &requirements, &[misnamed])
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("is not a wheel of beta"), "{err}");

        let built = BuiltWheel {
            requirement: "beta==1.0".into(),
            file_name: "beta-1.0-py3-none-any.whl".into(),
            wheel: b"zip".to_vec(),
        };
        let second = planner
            .plan("f", 1, &requirements, &[built])
            .await
            .expect("plans");
        assert!(second.builds.is_empty(), "{second:?}");
        assert_eq!(
            second.package_dirs,
            [
                dir.path()
                    .join("packages/app==1.0/files")
                    .display()
                    .to_string(),
                dir.path()
                    .join("packages/beta==1.0/files")
                    .display()
                    .to_string(),
            ]
        );
        assert!(!sdists.exists(), "the sdist is removed once installed");
    }

    #[tokio::test]
    async fn an_unpinned_package_with_only_an_sdist_must_be_pinned() {
        let mut installer = FakeInstaller::new(&[("beta", "1.0", &[])]);
        installer.sdist_only.push("beta==1.0".into());
        let config = Config {
            allow_source_builds: true,
            import_cache: ImportCache::Off,
            ..Config::default()
        };
        let (_dir, planner) = planner_with(config, Arc::new(installer));
        let err = planner
            .plan("f", 1, &["beta>=0.5".into()], &[])
            .await
            .expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("package 'beta>=0.5' has no wheel for this platform and cannot be built from source: pin its version"), "{message}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::FailedPrecondition
        );
    }
}
