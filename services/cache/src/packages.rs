//! The package store: every `name==version` installed once, shared by
//! every function and zygote that needs it.
//!
//! Layout under `data_dir`: `packages/<name>==<version>/files/` is pip's
//! `--target` output (what sandboxes mount). An install runs in
//! `tmp/install-*/files` and the finished tree is renamed into place.
//!
//! Architecture invariant: a `packages/<name>==<version>` directory only
//! appears by `rename` of a complete install whose dist-info names that
//! very package and version.
//!
//! Concurrent requests for one requirement share one install (a flight);
//! the flight is forgotten when it ends, so a failed install is retried
//! by the next request and nothing is cached negatively.
//!
//! Only wheels are installed (see [`crate::installer`]). A package with
//! none is refused, or with `allow_source_builds` its sdist is fetched
//! ([`crate::sdist`]) and the caller told to build it
//! ([`PackageError::NeedsBuild`]): sandboxd builds it with no network and
//! hands the wheel back, installed by [`Packages::install_built`].
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tracing::Instrument;

use crate::error::{Error, PackageError};
use crate::installer::{InstallFailure, Installer, Source};
use crate::metadata::read_dist_info;
use crate::requirement::Requirement;
use crate::sdist::{Sdists, plain_file_name};
use crate::version::{Version, normalize_name};

/// One installed package.
#[derive(Debug, PartialEq)]
pub(crate) struct Package {
    /// Normalised.
    pub name: String,
    pub version: String,
    /// Absolute path of pip's `--target` dir: what goes on `sys.path`.
    pub dir: PathBuf,
    pub requires: Vec<Requirement>,
    pub modules: Vec<String>,
}

impl Package {
    pub(crate) fn pin(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

type Flight = Shared<BoxFuture<'static, Result<Arc<Package>, PackageError>>>;

pub(crate) struct Packages {
    root: PathBuf,
    tmp: PathBuf,
    installer: Arc<dyn Installer>,
    /// Where sdists are looked up.
    sdists: Sdists,
    allow_source_builds: bool,
    /// Installed packages by name.
    index: Mutex<HashMap<String, Vec<Arc<Package>>>>,
    /// Installs in progress by pip requirement string.
    flights: Mutex<HashMap<String, Flight>>,
    /// Two flights (`a` and `a==2`) may install the same version: the
    /// check for an existing copy and the rename happen under this lock.
    adopting: Mutex<()>,
    pip_runs: AtomicU64,
}

impl Packages {
    /// Opens (creating) `<data_dir>/packages` and reads what earlier runs
    /// installed. `tmp` must be below the data dir: the installer writes
    /// only there.
    pub(crate) fn open(
        data_dir: &Path,
        tmp: &Path,
        installer: Arc<dyn Installer>,
        sdists: Sdists,
        allow_source_builds: bool,
    ) -> Result<Packages, Error> {
        let root = data_dir.join("packages");
        match fs::create_dir(&root) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io("create", &root, e));
            }
            _ => {}
        }
        set_mode_0755(&root).map_err(|e| Error::io("set permissions of", &root, e))?;
        let mut index: HashMap<String, Vec<Arc<Package>>> = HashMap::new();
        let entries = fs::read_dir(&root).map_err(|e| Error::io("list", &root, e))?;
        for entry in entries.filter_map(Result::ok) {
            let files = entry.path().join("files");
            match read_dist_info(&files) {
                Ok(dist) => {
                    index
                        .entry(dist.name.clone())
                        .or_default()
                        .push(Arc::new(Package {
                            name: dist.name,
                            version: dist.version,
                            dir: files,
                            requires: dist.requires,
                            modules: dist.modules,
                        }));
                }
                Err(error) => {
                    tracing::warn!(path = %entry.path().display(), %error, "ignoring an unreadable package dir");
                }
            }
        }
        Ok(Packages {
            root,
            tmp: tmp.to_path_buf(),
            installer,
            sdists,
            allow_source_builds,
            index: Mutex::new(index),
            flights: Mutex::default(),
            adopting: Mutex::default(),
            pip_runs: AtomicU64::new(0),
        })
    }

    /// How many times pip was started since this store was opened.
    #[cfg(test)]
    pub(crate) fn pip_runs(&self) -> u64 {
        self.pip_runs.load(Ordering::Relaxed)
    }

    /// The newest installed version `requirement` allows.
    pub(crate) fn installed(&self, requirement: &Requirement) -> Option<Arc<Package>> {
        let index = self
            .index
            .lock()
            .expect("the index is never held across a panic");
        index
            .get(&requirement.name)?
            .iter()
            .filter(|p| requirement.allows(&p.version))
            .max_by(
                |a, b| match (Version::parse(&a.version), Version::parse(&b.version)) {
                    (Some(a), Some(b)) => a.cmp(&b),
                    _ => a.version.cmp(&b.version),
                },
            )
            .cloned()
    }

    /// A package for `requirement`: an installed one when the requirement
    /// pins a version or `reuse` is set and one satisfies it, else what pip
    /// installs for it.
    pub(crate) async fn ensure(
        self: &Arc<Self>,
        requirement: &Requirement,
        reuse: bool,
    ) -> Result<Arc<Package>, PackageError> {
        if (reuse || requirement.pinned().is_some())
            && let Some(package) = self.installed(requirement)
        {
            return Ok(package);
        }
        let key = requirement.pip_spec();
        let flight = {
            let mut flights = self
                .flights
                .lock()
                .expect("flights are never held across a panic");
            match flights.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    // Spawned, so it finishes (and is forgotten) even when
                    // every waiter gives up.
                    let this = self.clone();
                    let (owned_key, requirement) = (key.clone(), requirement.clone());
                    let task = tokio::spawn(
                        async move {
                            let result = this.install(&requirement).await;
                            this.flights
                                .lock()
                                .expect("flights are never held across a panic")
                                .remove(&owned_key);
                            result
                        }
                        .in_current_span(),
                    );
                    let requirement = key.clone();
                    let flight = async move {
                        task.await.unwrap_or_else(|_| {
                            Err(PackageError::Storage {
                                requirement,
                                reason: "the install task panicked".into(),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(key, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    #[tracing::instrument(name = "cache.install", skip_all, fields(requirement = %requirement.pip_spec()))]
    async fn install(
        self: &Arc<Self>,
        requirement: &Requirement,
    ) -> Result<Arc<Package>, PackageError> {
        // A flight that ended just before this one began may have
        // installed it.
        if requirement.pinned().is_some()
            && let Some(package) = self.installed(requirement)
        {
            return Ok(package);
        }
        match self.run_pip(requirement, Source::Configured).await {
            Err(PackageError::NoWheel { log, .. }) => {
                Err(self.source_build(requirement, log).await)
            }
            result => result,
        }
    }

    /// A package that pip found no wheel for: refused, or its sdist
    /// fetched for the caller to build. With no sdist either it is pip's
    /// plain failure (no such package or version).
    async fn source_build(&self, requirement: &Requirement, log: String) -> PackageError {
        let spec = requirement.pip_spec();
        let version = requirement.pinned();
        match self.sdists.exists(&requirement.name, version).await {
            Ok(false) => {
                return PackageError::Install {
                    requirement: spec,
                    log,
                };
            }
            Ok(true) => {}
            // pip said it: no wheel. Whether an sdist exists stays open.
            Err(reason) => {
                tracing::warn!(requirement = %spec, %reason, "cannot look for an sdist");
            }
        }
        if !self.allow_source_builds {
            return PackageError::NoWheel {
                requirement: spec,
                log,
            };
        }
        let Some(version) = version else {
            return PackageError::SourceBuild {
                requirement: spec,
                reason: "pin its version (name==version) in requirements.txt so its sdist can be fetched".into(),
            };
        };
        match self.sdists.fetch(&requirement.name, version).await {
            Ok(sdist) => PackageError::NeedsBuild {
                requirement: format!("{}=={version}", requirement.name),
                dir: sdist.dir.display().to_string(),
                file_name: sdist.file_name,
            },
            Err(reason) => PackageError::SourceBuild {
                requirement: spec,
                reason,
            },
        }
    }

    /// Installs a wheel built (by sandboxd) for a [`PackageError::NeedsBuild`]
    /// this store answered: `requirement` is that `name==version`.
    #[tracing::instrument(name = "cache.install_built", skip_all, fields(requirement = %requirement))]
    pub(crate) async fn install_built(
        self: &Arc<Self>,
        requirement: &str,
        file_name: &str,
        wheel: &[u8],
    ) -> Result<Arc<Package>, PackageError> {
        let refused = |reason: String| PackageError::SourceBuild {
            requirement: requirement.to_string(),
            reason,
        };
        let parsed = Requirement::parse(requirement)
            .ok()
            .filter(|r| r.pinned().is_some() && r.marker.is_none() && r.extras.is_empty())
            .ok_or_else(|| refused("the built wheel names no name==version".into()))?;
        let version = parsed.pinned().expect("filtered on a pin");
        let project = file_name.split('-').next().unwrap_or_default();
        if !plain_file_name(file_name)
            || !file_name.ends_with(".whl")
            || normalize_name(project) != parsed.name
        {
            return Err(refused(format!(
                "the built file {file_name:?} is not a wheel of {}",
                parsed.name
            )));
        }
        if let Some(package) = self.installed(&parsed) {
            return Ok(package);
        }
        if !self.allow_source_builds {
            return Err(refused("source builds are off".into()));
        }
        let sdist_dir = self.sdists.dir(&parsed.name, version);
        if !sdist_dir.is_dir() {
            return Err(refused("the cache asked for no such build".into()));
        }
        let storage = |reason: String| PackageError::Storage {
            requirement: requirement.to_string(),
            reason,
        };
        let wheelhouse = tempfile::Builder::new()
            .prefix("wheel-")
            .tempdir_in(&self.tmp)
            .map_err(|e| storage(format!("cannot create a wheel dir: {e}")))?;
        fs::write(wheelhouse.path().join(file_name), wheel)
            .map_err(|e| storage(format!("cannot write the built wheel: {e}")))?;
        let package = self
            .run_pip(&parsed, Source::Wheelhouse(wheelhouse.path().to_path_buf()))
            .await
            .map_err(|e| match e {
                // Built for another platform, say.
                PackageError::NoWheel { log, .. } => {
                    refused(format!("pip cannot install the built wheel: {log}"))
                }
                other => other,
            })?;
        // Built and installed: the sdist is no longer needed.
        let _ = fs::remove_dir_all(&sdist_dir);
        Ok(package)
    }

    /// One pip run into a staging dir, then into the store.
    async fn run_pip(
        self: &Arc<Self>,
        requirement: &Requirement,
        source: Source,
    ) -> Result<Arc<Package>, PackageError> {
        let spec = requirement.pip_spec();
        let storage = |reason: String| PackageError::Storage {
            requirement: spec.clone(),
            reason,
        };
        let staging = tempfile::Builder::new()
            .prefix("install-")
            .tempdir_in(&self.tmp)
            .map_err(|e| storage(format!("cannot create a staging dir: {e}")))?;
        let files = staging.path().join("files");
        fs::create_dir(&files)
            .and_then(|()| set_mode_0755(staging.path()))
            .and_then(|()| set_mode_0755(&files))
            .map_err(|e| storage(format!("cannot create a staging dir: {e}")))?;

        self.pip_runs.fetch_add(1, Ordering::Relaxed);
        tracing::info!(requirement = %spec, "installing a package");
        self.installer
            .install(spec.clone(), files, source)
            .await
            .map_err(|failure| match failure {
                InstallFailure::Pip(log) => PackageError::Install {
                    requirement: spec.clone(),
                    log: tail(&log),
                },
                InstallFailure::NoWheel(log) => PackageError::NoWheel {
                    requirement: spec.clone(),
                    log: tail(&log),
                },
                InstallFailure::Unavailable(reason) => PackageError::Unavailable { reason },
            })?;

        let this = self.clone();
        let requirement = requirement.clone();
        tokio::task::spawn_blocking(move || this.adopt(&requirement, staging))
            .await
            .unwrap_or_else(|_| Err(storage("adopting the install panicked".into())))
    }

    /// Moves a finished install into the store, or drops it when the same
    /// version is there already.
    fn adopt(
        &self,
        requirement: &Requirement,
        staging: tempfile::TempDir,
    ) -> Result<Arc<Package>, PackageError> {
        let spec = requirement.pip_spec();
        let refused = |log: String| PackageError::Install {
            requirement: spec.clone(),
            log,
        };
        let dist = read_dist_info(&staging.path().join("files")).map_err(refused)?;
        if dist.name != requirement.name {
            return Err(refused(format!("pip installed '{}' instead", dist.name)));
        }
        if !requirement.allows(&dist.version) {
            return Err(refused(format!(
                "pip installed version {} which the requirement does not allow",
                dist.version
            )));
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || "._+!-".contains(c);
        if !dist.version.chars().all(plain) {
            return Err(refused(format!(
                "its version {:?} is unusable",
                dist.version
            )));
        }
        let pinned = Requirement {
            specifiers: vec![crate::version::Specifier {
                op: crate::version::Op::Arbitrary,
                version: dist.version.clone(),
            }],
            ..requirement.clone()
        };
        let _adopting = self
            .adopting
            .lock()
            .expect("adopting is never held across a panic");
        if let Some(existing) = self.installed(&pinned) {
            return Ok(existing);
        }
        let dest = self.root.join(format!("{}=={}", dist.name, dist.version));
        fs::rename(staging.path(), &dest).map_err(|e| PackageError::Storage {
            requirement: spec.clone(),
            reason: format!("cannot move the install into the store: {e}"),
        })?;
        let package = Arc::new(Package {
            name: dist.name,
            version: dist.version,
            dir: dest.join("files"),
            requires: dist.requires,
            modules: dist.modules,
        });
        tracing::info!(package = %package.pin(), "package installed");
        self.index
            .lock()
            .expect("the index is never held across a panic")
            .entry(package.name.clone())
            .or_default()
            .push(package.clone());
        Ok(package)
    }
}

/// pip's last lines: where its reason is.
fn tail(log: &str) -> String {
    const KEEP: usize = 2000;
    let log = log.trim();
    let start = log
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| log.len() - i <= KEEP)
        .unwrap_or(0);
    log[start..].to_string()
}

/// Sandboxes read packages as an unprivileged uid.
fn set_mode_0755(path: &Path) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Installs a fake package for `name==version` (or `name` →
    /// `latest`), with the given Requires-Dist, or fails while `fail` is
    /// set; each install waits for `gate` so tests can pile up waiters.
    pub(crate) struct FakeInstaller {
        pub packages: HashMap<String, (String, Vec<String>)>,
        /// Pins that have no wheel: installed only from a wheelhouse.
        pub sdist_only: Vec<String>,
        pub fail: AtomicBool,
        pub gate: Arc<tokio::sync::Semaphore>,
    }

    impl FakeInstaller {
        pub(crate) fn new(packages: &[(&str, &str, &[&str])]) -> FakeInstaller {
            FakeInstaller {
                packages: packages
                    .iter()
                    .map(|(name, version, requires)| {
                        (
                            format!("{name}=={version}"),
                            (
                                (*version).to_string(),
                                requires.iter().map(|r| (*r).to_string()).collect(),
                            ),
                        )
                    })
                    .collect(),
                sdist_only: Vec::new(),
                fail: AtomicBool::new(false),
                gate: Arc::new(tokio::sync::Semaphore::new(1000)),
            }
        }
    }

    impl Installer for FakeInstaller {
        fn install(
            &self,
            requirement: String,
            target: PathBuf,
            source: Source,
        ) -> BoxFuture<'static, Result<(), InstallFailure>> {
            // `name` alone, or `name>=x`: the newest version we know.
            let name: String = requirement
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let found = self.packages.get(&requirement).cloned().or_else(|| {
                let req = Requirement::parse(&requirement).expect("valid requirement");
                self.packages
                    .iter()
                    .filter(|(key, (version, _))| {
                        key.starts_with(&format!("{name}==")) && req.allows(version)
                    })
                    .max_by_key(|(_, (version, _))| Version::parse(version))
                    .map(|(_, found)| found.clone())
            });
            let wheel_only = found.as_ref().is_some_and(|(version, _)| {
                self.sdist_only.contains(&format!("{name}=={version}"))
            });
            let fail = self.fail.load(Ordering::SeqCst);
            let gate = self.gate.clone();
            Box::pin(async move {
                let _permit = gate.acquire().await.expect("gate open");
                if fail {
                    return Err(InstallFailure::Pip(
                        "ERROR: Could not install packages due to an OSError".into(),
                    ));
                }
                let built = match &source {
                    Source::Configured => false,
                    Source::Wheelhouse(dir) => {
                        fs::read_dir(dir).expect("list the wheelhouse").any(|e| {
                            e.expect("entry")
                                .file_name()
                                .to_string_lossy()
                                .ends_with(".whl")
                        })
                    }
                };
                let (Some((version, requires)), false) = (found, wheel_only && !built) else {
                    return Err(InstallFailure::NoWheel(format!(
                        "ERROR: No matching distribution found for {requirement}"
                    )));
                };
                let module = name.replace('-', "_");
                let info = target.join(format!("{module}-{version}.dist-info"));
                fs::create_dir(&info).expect("mkdir dist-info");
                // The license text before Requires-Dist, its blank lines
                // indented, as pandas' and numpy's METADATA have it.
                let mut metadata = format!(
                    "Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\
                     License: BSD\n        \n        Copyright (c) the {name} authors\n"
                );
                for line in requires {
                    metadata.push_str(&format!("Requires-Dist: {line}\n"));
                }
                fs::write(info.join("METADATA"), metadata).expect("write METADATA");
                fs::write(target.join(format!("{module}.py")), "").expect("write module");
                Ok(())
            })
        }
    }

    pub(crate) fn open_store(installer: Arc<FakeInstaller>) -> (tempfile::TempDir, Arc<Packages>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).expect("mkdir tmp");
        let packages = Packages::open(dir.path(), &tmp, installer, sdists(dir.path(), &tmp), false)
            .expect("open store");
        (dir, Arc::new(packages))
    }

    /// Every fake package has an sdist too, in `<dir>/links`.
    fn sdists(dir: &Path, tmp: &Path) -> Sdists {
        let links = dir.join("links");
        fs::create_dir_all(&links).expect("mkdir links");
        for name in ["alpha-1.0", "alpha-2.0", "beta-1.0"] {
            fs::write(links.join(format!("{name}.tar.gz")), "sdist").expect("write sdist");
        }
        Sdists::open(dir, tmp, vec![links], String::new()).expect("open sdists")
    }

    fn req(text: &str) -> Requirement {
        Requirement::parse(text).expect("valid")
    }

    #[tokio::test]
    async fn a_package_is_installed_once_and_found_again_after_a_restart() {
        let installer = Arc::new(FakeInstaller::new(&[("alpha", "1.0", &[])]));
        let (dir, store) = open_store(installer.clone());
        let first = store
            .ensure(&req("alpha==1.0"), false)
            .await
            .expect("installs");
        assert_eq!(first.pin(), "alpha==1.0");
        assert_eq!(first.dir, dir.path().join("packages/alpha==1.0/files"));
        assert!(first.dir.join("alpha.py").is_file());
        assert_eq!(first.modules, ["alpha"]);
        let again = store
            .ensure(&req("alpha==1.0"), false)
            .await
            .expect("reuses");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(store.pip_runs(), 1);

        let tmp = dir.path().join("tmp");
        let reopened = Packages::open(dir.path(), &tmp, installer, sdists(dir.path(), &tmp), false)
            .expect("reopen");
        assert_eq!(
            reopened.installed(&req("alpha==1.0")).as_deref(),
            Some(&*first)
        );
        assert_eq!(
            fs::read_dir(&tmp).expect("list tmp").count(),
            0,
            "staging left behind"
        );
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_install() {
        let installer = Arc::new(FakeInstaller::new(&[("alpha", "1.0", &[])]));
        let gate = installer.gate.clone();
        let held = gate
            .clone()
            .acquire_many_owned(1000)
            .await
            .expect("hold the gate");
        let (_dir, store) = open_store(installer);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.ensure(&req("alpha==1.0"), false).await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(held);
        for waiter in waiters {
            waiter.await.expect("joins").expect("installed");
        }
        assert_eq!(store.pip_runs(), 1);
    }

    #[tokio::test]
    async fn a_failed_install_names_the_package_and_is_retried_later() {
        let installer = Arc::new(FakeInstaller::new(&[("alpha", "1.0", &[])]));
        installer.fail.store(true, Ordering::SeqCst);
        let (_dir, store) = open_store(installer.clone());
        let err = store
            .ensure(&req("alpha==1.0"), false)
            .await
            .expect_err("fails");
        let message = err.to_string();
        assert!(
            message.contains("package 'alpha==1.0' failed to install"),
            "{message}"
        );
        assert!(message.contains("OSError"), "{message}");

        installer.fail.store(false, Ordering::SeqCst);
        store
            .ensure(&req("alpha==1.0"), false)
            .await
            .expect("retried and installed");
        assert_eq!(store.pip_runs(), 2);

        let missing = store
            .ensure(&req("alpha==9.9"), false)
            .await
            .expect_err("no such version");
        assert!(
            missing.to_string().contains("No matching distribution"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn a_package_with_no_wheel_is_refused_while_source_builds_are_off() {
        let mut installer = FakeInstaller::new(&[("beta", "1.0", &[])]);
        installer.sdist_only.push("beta==1.0".into());
        let (_dir, store) = open_store(Arc::new(installer));
        let err = store
            .ensure(&req("beta==1.0"), false)
            .await
            .expect_err("refused");
        assert!(matches!(err, PackageError::NoWheel { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("package 'beta==1.0' has no wheel for this platform, and source builds are off (the operator can allow them with allow_source_builds): "),
            "{message}"
        );
        assert!(
            message.contains("No matching distribution found for beta==1.0"),
            "{message}"
        );
        let status = tonic::Status::from(Error::Package {
            name: "f".into(),
            source: err,
        });
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status
                .message()
                .starts_with("function 'f' cannot start: package 'beta==1.0' has no wheel"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn unpinned_requirements_take_what_pip_picks_and_reuse_when_asked() {
        let installer = Arc::new(FakeInstaller::new(&[
            ("alpha", "1.0", &[]),
            ("alpha", "2.0", &[]),
        ]));
        let (dir, store) = open_store(installer);
        let one = store
            .ensure(&req("alpha==1.0"), false)
            .await
            .expect("installs");
        // Reuse: an installed version that satisfies the specifier.
        let reused = store
            .ensure(&req("alpha>=0.5"), true)
            .await
            .expect("reuses");
        assert!(Arc::ptr_eq(&one, &reused));
        assert_eq!(store.pip_runs(), 1);
        // No reuse: pip decides (the newest), recorded under its version.
        let picked = store.ensure(&req("alpha"), false).await.expect("installs");
        assert_eq!(picked.pin(), "alpha==2.0");
        assert!(
            dir.path()
                .join("packages/alpha==2.0/files/alpha.py")
                .is_file()
        );
        // Picking the same version again keeps the first install.
        let again = store.ensure(&req("alpha"), false).await.expect("installs");
        assert!(Arc::ptr_eq(&picked, &again));
        assert_eq!(store.pip_runs(), 3);
    }
}
