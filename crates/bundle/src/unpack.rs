//! Writing a checked bundle to disk.
//!
//! Every path written is `dest` joined with a normalised entry path whose
//! parents this writer created itself as plain directories; symlinks come
//! last (the reader's contract), so no write ever goes through one. Modes
//! ignore the archive's: 0755 directories and 0644 files (0755 when any
//! execute bit was set), so an unprivileged sandbox user can read them.
//!
//! `dest` is created here, every file with `create_new` under directories
//! this writer made; on any error `dest` is removed again.
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::BundleError;
use crate::reader::{self, BundleLimits, Manifest, Sink};

const DIR_MODE: u32 = 0o755;

pub(crate) fn unpack(
    bundle: &[u8],
    dest: &Path,
    limits: &BundleLimits,
) -> Result<Manifest, BundleError> {
    create_dir(dest).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => BundleError::DestinationExists {
            path: dest.to_path_buf(),
        },
        _ => BundleError::io("create directory", dest, e),
    })?;
    let mut writer = Writer {
        root: dest.to_path_buf(),
    };
    reader::read(bundle, limits, &mut writer).inspect_err(|_| {
        // Half a bundle must never look like a bundle. Best effort: the
        // error being returned matters more than one from cleaning up.
        let _ = fs::remove_dir_all(dest);
    })
}

fn create_dir(path: &Path) -> io::Result<()> {
    DirBuilder::new().mode(DIR_MODE).create(path)?;
    // The umask may have taken bits away.
    fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

struct Writer {
    root: PathBuf,
}

impl Sink for Writer {
    fn dir(&mut self, path: &str) -> Result<(), BundleError> {
        let full = self.root.join(path);
        create_dir(&full).map_err(|e| BundleError::io("create directory", full, e))
    }

    fn file(
        &mut self,
        path: &str,
        executable: bool,
        data: &mut dyn Read,
    ) -> Result<(), BundleError> {
        let full = self.root.join(path);
        let mode = if executable { 0o755 } else { 0o644 };
        // create_new (O_EXCL) also refuses to open through a symlink.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&full)
            .map_err(|e| BundleError::io("create file", &full, e))?;
        io::copy(data, &mut file).map_err(|e| BundleError::io("write", &full, e))?;
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| BundleError::io("set permissions of", full, e))
    }

    fn hard_link(&mut self, path: &str, target: &str) -> Result<(), BundleError> {
        let full = self.root.join(path);
        fs::hard_link(self.root.join(target), &full)
            .map_err(|e| BundleError::io("create hard link", full, e))
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), BundleError> {
        let full = self.root.join(path);
        std::os::unix::fs::symlink(target, &full)
            .map_err(|e| BundleError::io("create symlink", full, e))
    }
}
