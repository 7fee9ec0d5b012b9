//! The import-cache tree: which zygote serves which package set.
//!
//! Given in OpenLambda's shape, `{"packages": [...], "children": [...]}`.
//! A node's packages are resolved to store versions the first time a
//! function could use the node (its names are all in the function's
//! closure): pinned entries as written, others as pip picks them. A node
//! serves a function only when every package of the node and its
//! ancestors, dependencies included, is in the function's closure at the
//! very same version (OpenLambda compared names only, so a function
//! pinning another version was served the zygote's). The deepest such
//! node wins.
//!
//! `import_cache` is `tree` (default) or `off`. `import_tree` is inline JSON
//! or a file (OpenLambda's `split_generation` is ignored); when it is empty
//! the tree is learned (`learn.rs`). A node is resolved (installed) only
//! when all its names are in a function's closure: its packages and their
//! whole dependency closure (`closure.rs`, on top of its parent's packages),
//! so its zygote can import them. The deepest fitting node is counted
//! (`chosen`). A node's `package_dirs` in the chain are all the packages it
//! adds, dependencies included. Ids: `root`, `root/a==1,b==2` (`root:…` for
//! a root with packages).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sock_proto::v1::TreeNode;

use crate::closure;
use crate::markers::Environment;
use crate::packages::{Package, Packages};
use crate::requirement::Requirement;

/// A tree as written (configured) or as learned (`learn.rs`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSpec {
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub children: Vec<NodeSpec>,
    /// OpenLambda's trees say in which round of their offline split a
    /// node was made: commentary, read and ignored.
    #[serde(default, skip_serializing)]
    pub split_generation: Option<u64>,
}

pub(crate) struct ImportTree {
    root: Node,
}

struct Node {
    /// Its path as written, `root/a,b==1`: what `Tree` shows until it is
    /// resolved (a learned node's packages are pinned and sorted, so the
    /// two agree).
    written: String,
    packages: Vec<String>,
    requirements: Vec<Requirement>,
    children: Vec<Node>,
    /// Resolved once; a failure is not remembered, so it is tried again.
    resolved: tokio::sync::Mutex<Option<Arc<ResolvedNode>>>,
    /// Plans whose chain ended here, and the last one (unix ms).
    chosen: AtomicU64,
    last_chosen_ms: AtomicU64,
}

/// A node with its packages in the store.
#[derive(Debug)]
pub(crate) struct ResolvedNode {
    /// E.g. `root` or `root/numpy==2.1.0`.
    pub id: String,
    /// Its ancestors' packages and then its own, dependencies included.
    pub all: Vec<Arc<Package>>,
    /// The packages this node adds to its parent's.
    pub added: Vec<Arc<Package>>,
    /// Modules this node imports (its listed packages', not yet imported
    /// by an ancestor).
    pub imports: Vec<String>,
    /// Its ancestors' imports and its own.
    pub all_imports: Vec<String>,
}

impl ImportTree {
    /// `spec` is inline JSON (starts with `{`), a path to a JSON file, or
    /// empty for the default: a root with no packages.
    pub(crate) fn load(spec: &str) -> Result<ImportTree, String> {
        let spec = spec.trim();
        let text = if spec.is_empty() {
            "{}".to_string()
        } else if spec.starts_with('{') {
            spec.to_string()
        } else {
            std::fs::read_to_string(spec)
                .map_err(|e| format!("cannot read import_tree file {spec}: {e}"))?
        };
        let root: NodeSpec = serde_json::from_str(&text).map_err(|e| {
            format!(
                "import_tree is not a tree of {{\"packages\": [...], \"children\": [...]}}: {e}"
            )
        })?;
        ImportTree::from_spec(root)
    }

    pub(crate) fn from_spec(root: NodeSpec) -> Result<ImportTree, String> {
        Ok(ImportTree {
            root: Node::new(root, None)?,
        })
    }

    /// Every node, depth first, root first, as `Tree` shows it (sandboxd
    /// fills in its zygotes' side).
    pub(crate) fn describe(&self) -> Vec<TreeNode> {
        let mut nodes = Vec::new();
        let mut stack = vec![(&self.root, 0u32)];
        while let Some((node, depth)) = stack.pop() {
            let resolved = node.resolved.try_lock().ok().and_then(|r| r.clone());
            let (id, packages) = match resolved {
                Some(r) => (r.id.clone(), r.added.iter().map(|p| p.pin()).collect()),
                None => (node.written.clone(), node.packages.clone()),
            };
            nodes.push(TreeNode {
                id,
                depth,
                packages,
                chosen: node.chosen.load(Ordering::Relaxed),
                last_chosen_unix_ms: node.last_chosen_ms.load(Ordering::Relaxed),
                ..TreeNode::default()
            });
            for child in node.children.iter().rev() {
                stack.push((child, depth + 1));
            }
        }
        nodes
    }

    /// The chain of zygotes, root first, ending at the deepest node whose
    /// packages (with their versions) are all in `closure`. Empty when not
    /// even the root fits.
    pub(crate) async fn chain(
        &self,
        packages: &Arc<Packages>,
        env: &Environment,
        closure: &[Arc<Package>],
    ) -> Vec<Arc<ResolvedNode>> {
        let versions: HashMap<&str, &str> = closure
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        let mut best: Vec<Arc<ResolvedNode>> = Vec::new();
        let mut best_node: Option<&Node> = None;
        let mut stack: Vec<(&Node, Vec<Arc<ResolvedNode>>)> = vec![(&self.root, Vec::new())];
        while let Some((node, mut path)) = stack.pop() {
            // Names first: a node the function cannot use is never
            // installed on its behalf.
            let named = node
                .requirements
                .iter()
                .all(|r| versions.contains_key(r.name.as_str()));
            if !named {
                continue;
            }
            let resolved = match node.resolve(packages, env, path.last()).await {
                Ok(resolved) => resolved,
                Err(error) => {
                    tracing::warn!(%error, "cannot resolve an import-cache tree node; functions use its parent");
                    continue;
                }
            };
            let fits = resolved
                .all
                .iter()
                .all(|p| versions.get(p.name.as_str()) == Some(&p.version.as_str()));
            if !fits {
                continue;
            }
            path.push(resolved);
            if path.len() > best.len() {
                best = path.clone();
                best_node = Some(node);
            }
            for child in node.children.iter().rev() {
                stack.push((child, path.clone()));
            }
        }
        if let Some(node) = best_node {
            node.chosen.fetch_add(1, Ordering::Relaxed);
            node.last_chosen_ms
                .store(sock_service::unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
        best
    }
}

impl Node {
    fn new(spec: NodeSpec, parent: Option<&str>) -> Result<Node, String> {
        let requirements = spec
            .packages
            .iter()
            .map(|p| Requirement::parse(p).map_err(|why| format!("import_tree package {why}")))
            .collect::<Result<_, _>>()?;
        let written = node_id(parent, &spec.packages.join(","));
        let children = spec
            .children
            .into_iter()
            .map(|child| Node::new(child, Some(&written)))
            .collect::<Result<_, _>>()?;
        Ok(Node {
            written,
            packages: spec.packages,
            requirements,
            children,
            resolved: tokio::sync::Mutex::default(),
            chosen: AtomicU64::new(0),
            last_chosen_ms: AtomicU64::new(0),
        })
    }

    async fn resolve(
        &self,
        packages: &Arc<Packages>,
        env: &Environment,
        parent: Option<&Arc<ResolvedNode>>,
    ) -> Result<Arc<ResolvedNode>, crate::error::PackageError> {
        let mut resolved = self.resolved.lock().await;
        if let Some(node) = resolved.as_ref() {
            return Ok(node.clone());
        }
        let inherited = parent.map(|p| p.all.clone()).unwrap_or_default();
        let added = closure::resolve(packages, env, &self.requirements, &inherited).await?;
        let mut all = inherited;
        all.extend(added.iter().cloned());
        let listed: HashSet<&str> = self.requirements.iter().map(|r| r.name.as_str()).collect();
        let mut own: Vec<&Arc<Package>> = all
            .iter()
            .filter(|p| listed.contains(p.name.as_str()))
            .collect();
        own.sort_by(|a, b| a.name.cmp(&b.name));
        let segment = own.iter().map(|p| p.pin()).collect::<Vec<_>>().join(",");
        let id = node_id(parent.map(|p| p.id.as_str()), &segment);
        let mut all_imports = parent.map(|p| p.all_imports.clone()).unwrap_or_default();
        let mut imports = Vec::new();
        for module in own.iter().flat_map(|p| &p.modules) {
            if !all_imports.contains(module) {
                all_imports.push(module.clone());
                imports.push(module.clone());
            }
        }
        let node = Arc::new(ResolvedNode {
            id,
            all,
            added,
            imports,
            all_imports,
        });
        *resolved = Some(node.clone());
        Ok(node)
    }
}

/// A node's id: its parent's, `/`, and its packages joined by `,`; the
/// root is `root`, or `root:<packages>` when it has some.
pub(crate) fn node_id(parent: Option<&str>, packages: &str) -> String {
    match (parent, packages.is_empty()) {
        (None, true) => "root".to_string(),
        (None, false) => format!("root:{packages}"),
        (Some(parent), _) => format!("{parent}/{packages}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::tests::{FakeInstaller, open_store};

    fn store_with_numpies() -> (tempfile::TempDir, Arc<Packages>) {
        open_store(Arc::new(FakeInstaller::new(&[
            ("numpy", "2.1.0", &[]),
            ("numpy", "2.2.0", &[]),
            ("pandas", "2.2.0", &["numpy>=2"]),
            ("six", "1.16.0", &[]),
        ])))
    }

    async fn closure_of(store: &Arc<Packages>, lines: &[&str]) -> Vec<Arc<Package>> {
        let roots: Vec<Requirement> = lines
            .iter()
            .map(|l| Requirement::parse(l).expect("valid"))
            .collect();
        closure::resolve(store, &Environment::cpython311_linux(), &roots, &[])
            .await
            .expect("resolves")
    }

    async fn chain_ids(tree: &ImportTree, store: &Arc<Packages>, lines: &[&str]) -> Vec<String> {
        let closure = closure_of(store, lines).await;
        tree.chain(store, &Environment::cpython311_linux(), &closure)
            .await
            .iter()
            .map(|n| n.id.clone())
            .collect()
    }

    const TREE: &str = r#"{"packages": [], "children": [
        {"packages": ["numpy==2.1.0"], "children": [
            {"packages": ["pandas"], "children": []}
        ]},
        {"packages": ["six"]}
    ]}"#;

    #[tokio::test]
    async fn the_deepest_node_with_the_same_versions_wins() {
        let (_dir, store) = store_with_numpies();
        let tree = ImportTree::load(TREE).expect("valid tree");
        assert_eq!(chain_ids(&tree, &store, &[]).await, ["root"]);
        assert_eq!(
            chain_ids(&tree, &store, &["numpy==2.1.0"]).await,
            ["root", "root/numpy==2.1.0"]
        );
        assert_eq!(
            chain_ids(
                &tree,
                &store,
                &["numpy==2.1.0", "pandas==2.2.0", "six==1.16.0"]
            )
            .await,
            [
                "root",
                "root/numpy==2.1.0",
                "root/numpy==2.1.0/pandas==2.2.0"
            ]
        );
        assert_eq!(
            chain_ids(&tree, &store, &["six==1.16.0"]).await,
            ["root", "root/six==1.16.0"]
        );
    }

    #[tokio::test]
    async fn a_pinned_version_other_than_the_nodes_does_not_match() {
        let (_dir, store) = store_with_numpies();
        let tree = ImportTree::load(TREE).expect("valid tree");
        assert_eq!(chain_ids(&tree, &store, &["numpy==2.2.0"]).await, ["root"]);
        // pandas alone brings numpy 2.2.0 (the newest) as a dependency: the
        // numpy node (2.1.0) does not fit, so neither does its child.
        assert_eq!(chain_ids(&tree, &store, &["pandas==2.2.0"]).await, ["root"]);
    }

    #[tokio::test]
    async fn nodes_say_what_they_add_and_import() {
        let (_dir, store) = store_with_numpies();
        let tree = ImportTree::load(TREE).expect("valid tree");
        let closure = closure_of(&store, &["numpy==2.1.0", "pandas==2.2.0"]).await;
        let chain = tree
            .chain(&store, &Environment::cpython311_linux(), &closure)
            .await;
        assert_eq!(chain.len(), 3);
        assert!(chain[0].added.is_empty() && chain[0].imports.is_empty());
        assert_eq!(chain[1].imports, ["numpy"]);
        assert_eq!(chain[1].added[0].pin(), "numpy==2.1.0");
        assert_eq!(chain[2].imports, ["pandas"]);
        assert_eq!(chain[2].added.len(), 1, "numpy comes from the parent");
        assert_eq!(chain[2].all_imports, ["numpy", "pandas"]);
    }

    #[test]
    fn openlambdas_tree_files_load_as_they_are() {
        // The shape of OpenLambda's default-zygotes-40.json: unpinned
        // names, and each node's split generation.
        let openlambda = r#"{"split_generation": 0, "packages": [], "children": [
            {"split_generation": 1, "packages": ["numpy"], "children": [
                {"split_generation": 4, "packages": ["pandas"], "children": []}
            ]},
            {"split_generation": 2, "packages": ["requests", "urllib3"], "children": []}
        ]}"#;
        let tree = ImportTree::load(openlambda).expect("OpenLambda's format");
        let ids: Vec<String> = tree.describe().into_iter().map(|n| n.id).collect();
        assert_eq!(
            ids,
            [
                "root",
                "root/numpy",
                "root/numpy/pandas",
                "root/requests,urllib3"
            ]
        );
    }

    #[test]
    fn trees_load_inline_from_files_or_by_default() {
        assert!(
            ImportTree::load("")
                .expect("default")
                .root
                .requirements
                .is_empty()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tree.json");
        std::fs::write(&file, TREE).expect("write");
        let tree = ImportTree::load(file.to_str().expect("utf-8")).expect("from file");
        assert_eq!(tree.root.children.len(), 2);
        for (bad, says) in [
            (r#"{"packages": "numpy"}"#, "not a tree"),
            (r#"{"pkgs": []}"#, "not a tree"),
            (r#"{"packages": ["-e ."]}"#, "pip option"),
            ("/no/such/tree.json", "cannot read"),
            (r#"{"packages": [], "split_generation": "x"}"#, "not a tree"),
        ] {
            let err = ImportTree::load(bad).err().expect(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
