//! Unpacked code on local disk.
//!
//! Layout under `data_dir`:
//! - `code/<name>/<version>/`: one bundle, unpacked; what sandboxes mount.
//! - `code/<name>/<version>.info`: what the registry said about it (a
//!   prost-encoded `FunctionInfo`), so a restarted cache revalidates with
//!   a conditional request, and can serve while the registry is down.
//! - `tmp/`: unpacks in progress, emptied at start.
//!
//! Architecture invariant: a `code/<name>/<version>` directory is only
//! ever created by `rename` of a completely unpacked tree, so a
//! half-unpacked bundle is never served.
//!
//! Dirs are 0755. A 200 for a version already on disk reuses it when the
//! ETag matches and replaces it otherwise (a reset registry). Kept per
//! function: the current version and the newest other one.
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use prost::Message;
use sock_bundle::{BundleError, BundleLimits};
use sock_proto::v1::{FunctionConfig, FunctionInfo};

use crate::error::Error;
use crate::registry::{Download, Validators};

/// Sandboxes read the code as an unprivileged uid.
const DIR_MODE: u32 = 0o755;

pub(crate) struct Store {
    /// The data dir, canonical.
    root: PathBuf,
    code: PathBuf,
    tmp: PathBuf,
    limits: BundleLimits,
}

/// One unpacked version of a function and what the registry said about it.
#[derive(Clone, Debug)]
pub(crate) struct Installed {
    pub version: u64,
    pub validators: Validators,
    /// Absolute.
    pub dir: PathBuf,
    pub config: FunctionConfig,
}

impl Store {
    /// Creates the layout under `data_dir` and removes what an earlier run
    /// left half-done.
    pub(crate) fn open(data_dir: &Path) -> Result<Store, Error> {
        create_dir_0755(data_dir, true)?;
        let root = data_dir
            .canonicalize()
            .map_err(|e| Error::io("resolve", data_dir, e))?;
        let code = root.join("code");
        let tmp = root.join("tmp");
        create_dir_0755(&code, false)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io("clean", &tmp, e))?;
        }
        create_dir_0755(&tmp, false)?;
        Ok(Store {
            root,
            code,
            tmp,
            limits: BundleLimits::default(),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Emptied at start; where work in progress lives.
    pub(crate) fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// The newest version of `name` left on disk by an earlier run.
    pub(crate) fn latest(&self, name: &str) -> Option<Installed> {
        let mut versions = self.versions(name);
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        versions
            .into_iter()
            .find_map(|version| self.installed(name, version))
    }

    /// Puts `download` in place as `code/<name>/<version>`, reusing an
    /// existing copy of the very same bundle.
    pub(crate) fn install(&self, name: &str, download: Download) -> Result<Installed, Error> {
        let Download {
            version,
            validators,
            body,
        } = download;
        let name_dir = self.code.join(name);
        create_dir_0755(&name_dir, false)?;
        let dir = name_dir.join(version.to_string());

        let same_bundle = self.installed(name, version).filter(|existing| {
            validators.etag.is_some() && existing.validators.etag == validators.etag
        });
        if let Some(existing) = same_bundle {
            return Ok(Installed {
                validators,
                ..existing
            });
        }

        let staging = tempfile::Builder::new()
            .prefix("unpack-")
            .tempdir_in(&self.tmp)
            .map_err(|e| Error::io("create a directory in", &self.tmp, e))?;
        let unpacked = staging.path().join("code");
        let manifest = sock_bundle::unpack(&body, &unpacked, &self.limits).map_err(|source| {
            let (name, version) = (name.to_string(), version);
            match source {
                // Our disk, not the bundle, failed.
                BundleError::Io { .. } | BundleError::DestinationExists { .. } => Error::Unpack {
                    name,
                    version,
                    source,
                },
                source => Error::InvalidBundle {
                    name,
                    version,
                    source,
                },
            }
        })?;
        set_mode_0755(&unpacked)?;

        // A different bundle under the same version (the registry's data
        // was reset, or an earlier run died before writing the info): move
        // it aside, to be deleted with the staging dir.
        let info = self.info_path(name, version);
        if info.exists() {
            fs::remove_file(&info).map_err(|e| Error::io("remove", &info, e))?;
        }
        if dir.exists() {
            let aside = staging.path().join("replaced");
            fs::rename(&dir, &aside).map_err(|e| Error::io("move aside", &dir, e))?;
        }
        fs::rename(&unpacked, &dir).map_err(|e| Error::io("rename into", &dir, e))?;

        let installed = Installed {
            version,
            validators,
            dir,
            config: manifest.config,
        };
        self.write_info(name, &installed)?;
        Ok(installed)
    }

    /// Removes every version of `name` but `current` and the newest other
    /// one: a sandbox may still run the previous version.
    pub(crate) fn prune(&self, name: &str, current: u64) {
        let mut others: Vec<u64> = self
            .versions(name)
            .into_iter()
            .filter(|v| *v != current)
            .collect();
        others.sort_unstable_by(|a, b| b.cmp(a));
        others.dedup();
        for version in others.into_iter().skip(1) {
            let dir = self.code.join(name).join(version.to_string());
            let info = self.info_path(name, version);
            for (path, result) in [
                (&info, fs::remove_file(&info)),
                (&dir, fs::remove_dir_all(&dir)),
            ] {
                match result {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(path = %path.display(), %error, "cannot remove an old version");
                    }
                    _ => {}
                }
            }
        }
    }

    /// Versions present as a directory or an info file.
    fn versions(&self, name: &str) -> Vec<u64> {
        let Ok(entries) = fs::read_dir(self.code.join(name)) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let file_name = entry.ok()?.file_name();
                let file_name = file_name.to_str()?;
                file_name
                    .strip_suffix(".info")
                    .unwrap_or(file_name)
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn info_path(&self, name: &str, version: u64) -> PathBuf {
        self.code.join(name).join(format!("{version}.info"))
    }

    /// The installed version described by its info file, if both the file
    /// and the directory are there and readable.
    pub(crate) fn installed(&self, name: &str, version: u64) -> Option<Installed> {
        let dir = self.code.join(name).join(version.to_string());
        if !dir.is_dir() {
            return None;
        }
        let path = self.info_path(name, version);
        let bytes = fs::read(&path).ok()?;
        let info = match FunctionInfo::decode(bytes.as_slice()) {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ignoring an unreadable info file");
                return None;
            }
        };
        if info.version != version {
            return None;
        }
        let last_modified = u64::try_from(info.modified_unix_ms)
            .ok()
            .filter(|ms| *ms > 0)
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        Some(Installed {
            version,
            validators: Validators {
                etag: Some(info.etag).filter(|e| !e.is_empty()),
                last_modified,
            },
            dir,
            config: info.config.unwrap_or_default(),
        })
    }

    /// Written whole to `tmp/` first, then renamed, so it is never torn.
    fn write_info(&self, name: &str, installed: &Installed) -> Result<(), Error> {
        let modified_unix_ms = installed
            .validators
            .last_modified
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let info = FunctionInfo {
            name: name.to_string(),
            version: installed.version,
            etag: installed.validators.etag.clone().unwrap_or_default(),
            modified_unix_ms,
            config: Some(installed.config.clone()),
            bundle_bytes: 0,
        };
        let path = self.info_path(name, installed.version);
        let mut file = tempfile::NamedTempFile::new_in(&self.tmp)
            .map_err(|e| Error::io("create a file in", &self.tmp, e))?;
        file.write_all(&info.encode_to_vec())
            .map_err(|e| Error::io("write", file.path().to_path_buf(), e))?;
        file.persist(&path)
            .map_err(|e| Error::io("write", &path, e.error))?;
        Ok(())
    }
}

fn create_dir_0755(path: &Path, with_parents: bool) -> Result<(), Error> {
    let created = if with_parents {
        fs::create_dir_all(path)
    } else {
        match fs::create_dir(path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    };
    created.map_err(|e| Error::io("create", path, e))?;
    set_mode_0755(path)
}

/// Explicit, so a restrictive umask cannot hide the code from sandboxes.
fn set_mode_0755(path: &Path) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| Error::io("set permissions of", path, e))
}
