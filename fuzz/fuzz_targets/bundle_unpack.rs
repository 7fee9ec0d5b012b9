//! A pushed bundle as the registry validates it and the cache unpacks it.
//! The input is a tar archive, gzipped here so the fuzzer's mutations
//! reach the tar reader (an input that already starts with the gzip magic
//! is taken as it is, for the gzip layer). Validation and unpacking agree;
//! unpacking writes nothing beside its destination, leaves nothing on an
//! error, and leaves only plain directories, files with the modes the
//! cache promises, and symlinks that stay inside the bundle.
#![no_main]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;
use sock_bundle::BundleLimits;

/// One directory per fuzzing process, holding only `dest` while a bundle
/// is unpacked into it.
static SCRATCH: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::tempdir().expect("a scratch directory"));

/// Small limits, so the fuzzer reaches them.
const LIMITS: BundleLimits = BundleLimits {
    max_bundle_bytes: 1 << 20,
    max_unpacked_bytes: 1 << 20,
    max_entries: 64,
};

fuzz_target!(|data: &[u8]| {
    let bundle = if data.starts_with(&[0x1f, 0x8b]) {
        data.to_vec()
    } else {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(data).expect("writing to a Vec");
        gz.finish().expect("writing to a Vec")
    };
    let scratch = SCRATCH.path();
    let dest = scratch.join("dest");
    let validated = sock_bundle::validate(&bundle, &LIMITS);
    let unpacked = sock_bundle::unpack(&bundle, &dest, &LIMITS);
    assert_eq!(
        validated.as_ref().map_err(ToString::to_string),
        unpacked.as_ref().map_err(ToString::to_string),
        "validate and unpack disagree"
    );
    let beside: Vec<PathBuf> = fs::read_dir(scratch)
        .expect("read the scratch directory")
        .map(|e| e.expect("an entry").path())
        .filter(|p| *p != dest)
        .collect();
    assert!(
        beside.is_empty(),
        "unpacking wrote beside its destination: {beside:?}"
    );
    if unpacked.is_err() {
        assert!(
            !dest.exists(),
            "a failed unpack left its destination behind"
        );
        return;
    }
    check_tree(&dest, &dest);
    fs::remove_dir_all(&dest).expect("remove the unpacked bundle");
});

fn check_tree(root: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).expect("read an unpacked directory") {
        let path = entry.expect("an entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat an unpacked entry");
        let mode = meta.permissions().mode() & 0o7777;
        if meta.is_dir() {
            assert_eq!(mode, 0o755, "{path:?}");
            check_tree(root, &path);
        } else if meta.is_file() {
            assert!(mode == 0o644 || mode == 0o755, "{path:?} has mode {mode:o}");
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).expect("read a symlink");
            let parent = path.parent().expect("a symlink has a parent");
            assert!(
                stays_inside(root, &parent.join(&target)),
                "{path:?} points outside the bundle, at {target:?}"
            );
        } else {
            panic!("{path:?} is neither a directory, a file nor a symlink");
        }
    }
}

/// Whether `path` is inside `root`: resolved on disk when it exists, else
/// (a dangling link) lexically.
fn stays_inside(root: &Path, path: &Path) -> bool {
    if let (Ok(root), Ok(path)) = (root.canonicalize(), path.canonicalize()) {
        return path.starts_with(root);
    }
    let Ok(rest) = path.strip_prefix(root) else {
        return false;
    };
    let mut depth = 0usize;
    for component in rest.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}
