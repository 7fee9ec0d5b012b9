//! Packing a function directory for `sock push`.
//!
//! The archive is deterministic (sorted names, fixed times and owners), so
//! the same directory always packs to the same bytes, and it holds what the
//! reader accepts: files, directories and symlinks that stay inside.
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::error::{BundleError, shown};
use crate::tree::{Node, Tree};

/// Build and VCS leftovers that never belong in a bundle.
fn skipped(name: &str, is_dir: bool) -> bool {
    name == ".git" || (is_dir && name == "__pycache__") || (!is_dir && name.ends_with(".pyc"))
}

enum Item {
    Dir,
    File { executable: bool },
    Symlink(String),
}

pub(crate) fn pack(dir: &Path) -> Result<Vec<u8>, BundleError> {
    let mut items = Vec::new();
    let mut tree = Tree::default();
    walk(dir, "", &mut tree, &mut items)?;
    tree.check_symlinks()?;

    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (path, item) in &items {
        let mut header = Header::new_gnu();
        header.set_mtime(tar::DETERMINISTIC_TIMESTAMP);
        header.set_uid(0);
        header.set_gid(0);
        let full = dir.join(path);
        let written = match item {
            Item::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), io::empty())
            }
            Item::File { executable } => {
                let file = File::open(&full).map_err(|e| BundleError::io("open", &full, e))?;
                let size = file
                    .metadata()
                    .map_err(|e| BundleError::io("read metadata of", &full, e))?
                    .len();
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(size);
                builder.append_data(&mut header, path, file)
            }
            Item::Symlink(target) => {
                header.set_entry_type(EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)
            }
        };
        written.map_err(|e| BundleError::io("pack", &full, e))?;
    }
    builder
        .into_inner()
        .and_then(GzEncoder::finish)
        .map_err(|e| BundleError::io("compress the bundle of", dir, e))
}

/// Collects the entries under `dir/rel` in sorted order, parents first.
fn walk(
    dir: &Path,
    rel: &str,
    tree: &mut Tree,
    items: &mut Vec<(String, Item)>,
) -> Result<(), BundleError> {
    let here = dir.join(rel);
    let mut names = Vec::new();
    for entry in fs::read_dir(&here).map_err(|e| BundleError::io("read directory", &here, e))? {
        let entry = entry.map_err(|e| BundleError::io("read directory", &here, e))?;
        names.push(entry.file_name());
    }
    names.sort();
    for name in names {
        let name = name
            .into_string()
            .map_err(|raw| BundleError::InvalidEntry {
                entry: shown(&raw.to_string_lossy()),
                reason: "its name is not valid UTF-8",
            })?;
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let full = dir.join(&path);
        let meta = fs::symlink_metadata(&full)
            .map_err(|e| BundleError::io("read metadata of", &full, e))?;
        let kind = meta.file_type();
        if skipped(&name, kind.is_dir()) {
            continue;
        }
        let (node, item) =
            if kind.is_dir() {
                (Node::Dir, Item::Dir)
            } else if kind.is_file() {
                let executable = meta.permissions().mode() & 0o111 != 0;
                (Node::File, Item::File { executable })
            } else if kind.is_symlink() {
                let target =
                    fs::read_link(&full).map_err(|e| BundleError::io("read symlink", &full, e))?;
                let target = target.into_os_string().into_string().map_err(|_| {
                    BundleError::InvalidEntry {
                        entry: shown(&path),
                        reason: "its symlink target is not valid UTF-8",
                    }
                })?;
                (Node::Symlink(target.clone()), Item::Symlink(target))
            } else {
                let kind = if kind.is_fifo() {
                    "fifo"
                } else if kind.is_socket() {
                    "socket"
                } else if kind.is_char_device() {
                    "character device"
                } else {
                    "block device"
                };
                return Err(BundleError::SpecialFile {
                    entry: shown(&path),
                    kind: kind.into(),
                });
            };
        tree.insert(&path, node, &mut |_| Ok(()))?;
        let is_dir = matches!(item, Item::Dir);
        items.push((path.clone(), item));
        if is_dir {
            walk(dir, &path, tree, items)?;
        }
    }
    Ok(())
}
