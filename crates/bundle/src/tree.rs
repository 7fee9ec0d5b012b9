//! The shape of a bundle as a map of normalised paths, built entry by entry.
//! It is what decides whether a path, a hard link or a symlink stays inside
//! the bundle, so reading an archive and packing a directory share it.
//!
//! Paths are normalised (`./`, `a/../b`); nothing may sit below a file or a
//! symlink; symlinks are resolved as the kernel would (through the bundle's
//! other symlinks, at most 40 hops) and must stay inside; hard links may
//! point only to earlier regular files.
use std::collections::BTreeMap;

use crate::error::{BundleError, shown};

/// Symlinks followed while resolving one path before it counts as a loop
/// (the kernel's limit).
const MAX_HOPS: u32 = 40;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    Dir,
    File,
    Symlink(String),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathProblem {
    Absolute,
    Escapes,
}

/// Turns an entry name into `a/b/c`: no leading `./`, no `.` or empty
/// components, `..` applied. `None` is the bundle's root itself.
pub(crate) fn normalize(raw: &str) -> Result<Option<String>, PathProblem> {
    if raw.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(PathProblem::Escapes)?;
            }
            name => parts.push(name),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Why resolving a path through the tree's symlinks failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolve {
    Escapes,
    Loop,
}

#[derive(Debug, Default)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Symlink paths in the order they were added.
    symlinks: Vec<String>,
}

impl Tree {
    /// Records `path` (normalised) as `node`. Missing parent directories
    /// are implied; `on_new_dir` hears of each directory that did not exist
    /// yet, parents first, so a writer can create them in order. An entry
    /// below a file or a symlink is refused: writing it would mean going
    /// through that symlink.
    pub(crate) fn insert(
        &mut self,
        path: &str,
        node: Node,
        on_new_dir: &mut dyn FnMut(&str) -> Result<(), BundleError>,
    ) -> Result<(), BundleError> {
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            match self.nodes.get(parent) {
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(BundleError::NotADirectory {
                        entry: shown(path),
                        parent: shown(parent),
                    });
                }
                None => {
                    on_new_dir(parent)?;
                    self.nodes.insert(parent.to_string(), Node::Dir);
                }
            }
        }
        match (self.nodes.get(path), &node) {
            (Some(Node::Dir), Node::Dir) => return Ok(()),
            (Some(_), _) => return Err(BundleError::Duplicate { entry: shown(path) }),
            (None, Node::Dir) => on_new_dir(path)?,
            (None, Node::Symlink(_)) => self.symlinks.push(path.to_string()),
            (None, Node::File) => {}
        }
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Symlinks in the order they were added, with their targets.
    pub(crate) fn symlinks(&self) -> impl Iterator<Item = (&str, &str)> {
        self.symlinks
            .iter()
            .filter_map(|path| match self.nodes.get(path) {
                Some(Node::Symlink(target)) => Some((path.as_str(), target.as_str())),
                _ => None,
            })
    }

    /// Refuses any symlink that, followed the way the kernel would (through
    /// the other symlinks of the bundle), leaves the bundle or loops.
    pub(crate) fn check_symlinks(&self) -> Result<(), BundleError> {
        for (path, target) in self.symlinks() {
            match self.resolve(parent_of(path), target) {
                Ok(_) => {}
                Err(Resolve::Escapes) => {
                    return Err(BundleError::SymlinkOutside {
                        entry: shown(path),
                        target: shown(target),
                    });
                }
                Err(Resolve::Loop) => return Err(BundleError::SymlinkLoop { entry: shown(path) }),
            }
        }
        Ok(())
    }

    /// Whether `path` (relative to the root) leads to a regular file,
    /// following symlinks inside the bundle.
    pub(crate) fn is_file(&self, path: &str) -> bool {
        match self.resolve("", path) {
            Ok(parts) => self.nodes.get(&parts.join("/")) == Some(&Node::File),
            Err(_) => false,
        }
    }

    /// Resolves `target` relative to directory `from` (normalised, "" for
    /// the root) into path components. Components the bundle does not have
    /// are taken as plain directories, which is the stricter reading.
    fn resolve(&self, from: &str, target: &str) -> Result<Vec<String>, Resolve> {
        let mut hops = 0;
        let start = from
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        self.resolve_from(start, target, &mut hops)
    }

    fn resolve_from(
        &self,
        mut stack: Vec<String>,
        target: &str,
        hops: &mut u32,
    ) -> Result<Vec<String>, Resolve> {
        if target.starts_with('/') {
            return Err(Resolve::Escapes);
        }
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    stack.pop().ok_or(Resolve::Escapes)?;
                }
                name => {
                    stack.push(name.to_string());
                    if let Some(Node::Symlink(next)) = self.nodes.get(&stack.join("/")) {
                        *hops += 1;
                        if *hops > MAX_HOPS {
                            return Err(Resolve::Loop);
                        }
                        stack.pop();
                        stack = self.resolve_from(stack, next, hops)?;
                    }
                }
            }
        }
        Ok(stack)
    }
}

/// The directory holding a normalised path ("" for the root).
pub(crate) fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[(&str, Node)]) -> Result<Tree, BundleError> {
        let mut tree = Tree::default();
        for (path, node) in entries {
            tree.insert(path, node.clone(), &mut |_| Ok(()))?;
        }
        Ok(tree)
    }

    fn link(target: &str) -> Node {
        Node::Symlink(target.to_string())
    }

    #[test]
    fn normalize_strips_dots_and_refuses_escapes() {
        assert_eq!(normalize("./a//b/./c"), Ok(Some("a/b/c".into())));
        assert_eq!(normalize("a/../b"), Ok(Some("b".into())));
        assert_eq!(normalize("./"), Ok(None));
        assert_eq!(normalize("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(normalize("a/../../b"), Err(PathProblem::Escapes));
    }

    #[test]
    fn implied_parents_are_announced_once_in_order() {
        let mut seen = Vec::new();
        let mut tree = Tree::default();
        for (path, node) in [
            ("a/b/c.py", Node::File),
            ("a/b", Node::Dir),
            ("a/d", Node::Dir),
        ] {
            tree.insert(path, node, &mut |d| {
                seen.push(d.to_string());
                Ok(())
            })
            .expect("insert");
        }
        assert_eq!(seen, ["a", "a/b", "a/d"]);
    }

    #[test]
    fn symlinks_inside_are_fine() {
        let t = tree(&[
            ("lib/x.py", Node::File),
            ("a/l", link("../lib/x.py")),
            ("here", link(".")),
            ("b", link("a/l")),
        ])
        .expect("tree");
        t.check_symlinks().expect("inside");
        assert!(t.is_file("b"));
        assert!(!t.is_file("here"));
    }

    #[test]
    fn a_chain_through_another_symlink_is_followed_like_the_kernel() {
        // Lexically "d/up/.." is "d", but the kernel resolves d/up first:
        // it is the root, and the root's parent is outside.
        let t = tree(&[("d/up", link("..")), ("l", link("d/up/.."))]).expect("tree");
        let err = t.check_symlinks().expect_err("escapes");
        assert!(
            matches!(err, BundleError::SymlinkOutside { ref entry, .. } if entry == "l"),
            "{err}"
        );
    }

    #[test]
    fn loops_are_refused() {
        let t = tree(&[("a", link("b")), ("b", link("a"))]).expect("tree");
        assert!(matches!(
            t.check_symlinks(),
            Err(BundleError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn entries_below_a_symlink_or_file_and_duplicates_are_refused() {
        let below_link = tree(&[("d", Node::Dir), ("l", link("d")), ("l/x", Node::File)]);
        assert!(matches!(below_link, Err(BundleError::NotADirectory { .. })));
        let below_file = tree(&[("f", Node::File), ("f/x", Node::File)]);
        assert!(matches!(below_file, Err(BundleError::NotADirectory { .. })));
        let twice = tree(&[("f", Node::File), ("f", Node::File)]);
        assert!(matches!(twice, Err(BundleError::Duplicate { .. })));
        tree(&[("d", Node::Dir), ("d", Node::Dir)]).expect("a directory may repeat");
    }
}
