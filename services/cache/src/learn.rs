//! The learned import-cache tree (the default when no `import_tree` is
//! configured): which packages deserve a zygote, worked out from the cold
//! starts this node's cache prepared.
//!
//! sandboxd asks `Prepare` only for a cold start, so each plan records one
//! cold start of the function with its closure. Counts decay (half-life a
//! day): functions that stopped being called fade. A rebuild (every
//! `tree_rebuild_ms` when something new was seen, and on demand) splits
//! greedily, as OpenLambda's offline split generation does: among a node's
//! functions, the *unit* (a package with the dependencies it brings,
//! pinned as those functions have them) with the largest cold starts ×
//! (10 + installed MB) becomes a child, the functions holding it move under
//! it and are split again below it, and the rest are split again beside
//! it, as long as the unit was needed by at least [`MIN_COLD_STARTS`] cold
//! starts (lately) and its estimated memory fits what is left of the budget.
//! Installed size stands in for import cost and memory: the cache never
//! runs package code, so it cannot time an import.
//!
//! A learned node lists every package of its unit, pinned, so its zygote
//! gets exactly the versions its functions have and its id names them all.
//! What was seen is kept in `<data_dir>/learned.json`: a restarted cache
//! rebuilds the same tree before it serves.
//!
//! A unit needs its cold starts within about an hour, and what is left of
//! `tree_budget_mb` must hold it. A changed tree is swapped in whole (plans
//! in flight keep the one they hold); `learned.json` is written at each
//! rebuild and read at start (damaged: learned anew), and the tree is
//! rebuilt from it before the cache serves. `Tree` answers the tree in
//! use: its source, the nodes depth first with their packages, `chosen`
//! and estimated MB.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sock_proto::v1::TreeResponse;

use crate::packages::Package;
use crate::tree::{ImportTree, NodeSpec, node_id};

/// Cold starts a unit must have been needed by to get a node, within
/// [`MIN_WITHIN`] (counts decay from the moment they are made).
const MIN_COLD_STARTS: f64 = 2.0;
const MIN_WITHIN: Duration = Duration::from_secs(3600);
/// What a zygote costs besides its imports: the interpreter and runtime.
const ZYGOTE_BASE_MB: u64 = 10;
/// A cold start counts half as much after this long.
const HALF_LIFE: Duration = Duration::from_secs(24 * 3600);
/// Below this decayed count a function is forgotten.
const FORGET_BELOW: f64 = 0.01;
/// Nodes deeper than this are not planned.
const MAX_DEPTH: usize = 8;

/// What the cache saw of one function, as kept on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Usage {
    version: u64,
    packages: Vec<SeenPackage>,
    /// Cold starts, decayed to `at_unix_ms`.
    cold_starts: f64,
    at_unix_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SeenPackage {
    /// `name==version`, the name normalised.
    pin: String,
    /// Where it is installed: its size is measured there.
    dir: PathBuf,
    /// The names of the closure's packages it requires.
    requires: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    functions: BTreeMap<String, Usage>,
}

/// A function as the split sees it: its weight now and its packages by name.
struct Weighted<'a> {
    weight: f64,
    by_name: HashMap<&'a str, &'a SeenPackage>,
}

impl Weighted<'_> {
    /// `package` and everything it requires in this function's closure,
    /// sorted by name (the order a resolved node's id lists them in).
    fn unit(&self, package: &SeenPackage) -> Vec<String> {
        let mut names = BTreeSet::new();
        let mut queue = vec![package];
        while let Some(next) = queue.pop() {
            if names.insert(name_of(&next.pin)) {
                queue.extend(
                    next.requires
                        .iter()
                        .filter_map(|name| self.by_name.get(name.as_str())),
                );
            }
        }
        names
            .into_iter()
            .map(|name| self.by_name[name].pin.clone())
            .collect()
    }

    fn holds(&self, unit: &[String]) -> bool {
        unit.iter().all(|pin| {
            self.by_name
                .get(name_of(pin))
                .is_some_and(|p| p.pin == *pin)
        })
    }
}

fn name_of(pin: &str) -> &str {
    pin.split_once("==").map_or(pin, |(name, _)| name)
}

/// The tree planned from `functions` within `budget_mb`, and each node's
/// estimated memory by id.
fn plan(
    functions: &[Weighted<'_>],
    size_mb: &dyn Fn(&str) -> u64,
    budget_mb: u64,
) -> (NodeSpec, BTreeMap<String, u64>) {
    let mut estimates = BTreeMap::new();
    let mut left = budget_mb;
    let all: Vec<&Weighted<'_>> = functions.iter().collect();
    let children = split(
        "root",
        &BTreeSet::new(),
        all,
        size_mb,
        &mut left,
        &mut estimates,
    );
    (
        NodeSpec {
            children,
            ..NodeSpec::default()
        },
        estimates,
    )
}

/// The children of the node `id` that already imports `above`, for
/// `functions` (all of which hold `above`).
fn split(
    id: &str,
    above: &BTreeSet<String>,
    mut functions: Vec<&Weighted<'_>>,
    size_mb: &dyn Fn(&str) -> u64,
    left: &mut u64,
    estimates: &mut BTreeMap<String, u64>,
) -> Vec<NodeSpec> {
    let mut children = Vec::new();
    if id.matches('/').count() >= MAX_DEPTH {
        return children;
    }
    loop {
        let mut candidates: BTreeMap<Vec<String>, f64> = BTreeMap::new();
        for function in &functions {
            let mut units: BTreeSet<Vec<String>> = BTreeSet::new();
            for package in function.by_name.values() {
                let unit: Vec<String> = function
                    .unit(package)
                    .into_iter()
                    .filter(|pin| !above.contains(pin))
                    .collect();
                if !unit.is_empty() {
                    units.insert(unit);
                }
            }
            for unit in units {
                *candidates.entry(unit).or_default() += function.weight;
            }
        }
        let cost = |unit: &[String]| ZYGOTE_BASE_MB + unit.iter().map(|p| size_mb(p)).sum::<u64>();
        let best = candidates
            .into_iter()
            .filter(|(unit, weight)| *weight >= min_weight() && cost(unit) <= *left)
            .map(|(unit, weight)| {
                let score = weight * cost(&unit) as f64;
                (unit, score)
            })
            // The highest score; of equals, the first unit in order.
            .reduce(|best, next| if next.1 > best.1 { next } else { best });
        let Some((unit, _)) = best else {
            return children;
        };
        let estimate = cost(&unit);
        *left -= estimate;
        let child_id = node_id(Some(id), &unit.join(","));
        estimates.insert(child_id.clone(), estimate);
        let (members, rest): (Vec<_>, Vec<_>) = functions.into_iter().partition(|f| f.holds(&unit));
        functions = rest;
        let mut below = above.clone();
        below.extend(unit.iter().cloned());
        let grandchildren = split(&child_id, &below, members, size_mb, left, estimates);
        children.push(NodeSpec {
            packages: unit,
            children: grandchildren,
            split_generation: None,
        });
    }
}

/// Learns the tree and holds the one in use.
pub(crate) struct Learner {
    /// `<data_dir>/learned.json`.
    file: PathBuf,
    tmp: PathBuf,
    budget_mb: u64,
    state: Mutex<State>,
}

struct State {
    seen: Seen,
    /// Something was recorded since the last rebuild.
    dirty: bool,
    /// Installed MB per pin, measured once.
    sizes: HashMap<String, u64>,
    spec: NodeSpec,
    tree: Arc<ImportTree>,
    estimates: BTreeMap<String, u64>,
    rebuilt: Option<SystemTime>,
}

impl Learner {
    /// Blocking: reads what an earlier run learned and builds its tree.
    pub(crate) fn open(data_dir: &Path, tmp: &Path, budget_mb: u64) -> Learner {
        let file = data_dir.join("learned.json");
        let seen = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(file = %file.display(), %error, "cannot read what the import cache learned; learning anew");
                Seen::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::default(),
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "cannot read what the import cache learned; learning anew");
                Seen::default()
            }
        };
        let learner = Learner {
            file,
            tmp: tmp.to_path_buf(),
            budget_mb,
            state: Mutex::new(State {
                seen,
                dirty: true,
                sizes: HashMap::new(),
                spec: NodeSpec::default(),
                tree: Arc::new(
                    ImportTree::from_spec(NodeSpec::default()).expect("an empty root is a tree"),
                ),
                estimates: BTreeMap::new(),
                rebuilt: None,
            }),
        };
        learner.rebuild(SystemTime::now(), true);
        learner
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn tree(&self) -> Arc<ImportTree> {
        self.state().tree.clone()
    }

    /// One cold start of version `version` of `name`, with its closure.
    pub(crate) fn record(&self, name: &str, version: u64, closure: &[Arc<Package>]) {
        if closure.is_empty() {
            return;
        }
        let names: BTreeSet<&str> = closure.iter().map(|p| p.name.as_str()).collect();
        let packages = closure
            .iter()
            .map(|p| SeenPackage {
                pin: p.pin(),
                dir: p.dir.clone(),
                requires: p
                    .requires
                    .iter()
                    .map(|r| r.name.clone())
                    .filter(|n| names.contains(n.as_str()))
                    .collect(),
            })
            .collect();
        let now = SystemTime::now();
        let mut state = self.state();
        let usage = state
            .seen
            .functions
            .entry(name.to_string())
            .or_insert_with(|| Usage {
                version,
                packages: Vec::new(),
                cold_starts: 0.0,
                at_unix_ms: 0,
            });
        usage.cold_starts = decayed(usage, now) + 1.0;
        usage.at_unix_ms = sock_service::unix_ms(now);
        usage.version = version;
        usage.packages = packages;
        state.dirty = true;
    }

    /// Rebuilds the tree from what was seen, if anything was since the
    /// last time or `always`, swaps it in when it changed, and keeps what
    /// was seen on disk. Blocking: measures package dirs.
    pub(crate) fn rebuild(&self, now: SystemTime, always: bool) {
        let (functions, unmeasured, seen) = {
            let mut state = self.state();
            if !state.dirty && !always {
                return;
            }
            state.dirty = false;
            state
                .seen
                .functions
                .retain(|_, usage| decayed(usage, now) >= FORGET_BELOW);
            let functions: Vec<(f64, Vec<SeenPackage>)> = state
                .seen
                .functions
                .values()
                .map(|usage| (decayed(usage, now), usage.packages.clone()))
                .collect();
            let unmeasured: Vec<(String, PathBuf)> = functions
                .iter()
                .flat_map(|(_, packages)| packages)
                .filter(|p| !state.sizes.contains_key(&p.pin))
                .map(|p| (p.pin.clone(), p.dir.clone()))
                .collect();
            (functions, unmeasured, serde_json::to_vec(&state.seen))
        };
        self.persist(seen);
        // Measured without the lock: plans go on meanwhile.
        let measured: Vec<(String, u64)> = unmeasured
            .into_iter()
            .map(|(pin, dir)| (pin, dir_mb(&dir)))
            .collect();
        let mut state = self.state();
        state.sizes.extend(measured);
        let weighted: Vec<Weighted<'_>> = functions
            .iter()
            .map(|(weight, packages)| Weighted {
                weight: *weight,
                by_name: packages.iter().map(|p| (name_of(&p.pin), p)).collect(),
            })
            .collect();
        let sizes = &state.sizes;
        let (spec, estimates) = plan(
            &weighted,
            &|pin| sizes.get(pin).copied().unwrap_or(0),
            self.budget_mb,
        );
        state.rebuilt = Some(now);
        state.estimates = estimates;
        if spec == state.spec {
            return;
        }
        match ImportTree::from_spec(spec.clone()) {
            Ok(tree) => {
                tracing::info!(nodes = ?state.estimates.keys().collect::<Vec<_>>(), functions = functions.len(), "import-cache tree learned");
                state.tree = Arc::new(tree);
                state.spec = spec;
            }
            // Pins come from installed packages: they always parse.
            Err(error) => tracing::error!(%error, "a learned tree did not load"),
        }
    }

    /// What `Tree` answers of the learned tree.
    pub(crate) fn describe(&self) -> TreeResponse {
        let state = self.state();
        let mut nodes = state.tree.describe();
        for node in &mut nodes {
            node.estimated_mb = state.estimates.get(&node.id).copied().unwrap_or(0);
        }
        TreeResponse {
            source: "learned".into(),
            nodes,
            rebuilt_unix_ms: state.rebuilt.map_or(0, sock_service::unix_ms),
            functions: u32::try_from(state.seen.functions.len()).unwrap_or(u32::MAX),
            budget_mb: self.budget_mb,
            node: String::new(),
        }
    }

    /// Best effort: without the file, a restart learns anew.
    fn persist(&self, seen: serde_json::Result<Vec<u8>>) {
        let written = seen.map_err(std::io::Error::other).and_then(|bytes| {
            let mut file = tempfile::NamedTempFile::new_in(&self.tmp)?;
            file.write_all(&bytes)?;
            file.persist(&self.file).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(error) = written {
            tracing::warn!(file = %self.file.display(), %error, "cannot keep what the import cache learned");
        }
    }
}

/// [`MIN_COLD_STARTS`] made [`MIN_WITHIN`] ago, decayed.
fn min_weight() -> f64 {
    MIN_COLD_STARTS * 0.5f64.powf(MIN_WITHIN.as_secs_f64() / HALF_LIFE.as_secs_f64())
}

fn decayed(usage: &Usage, now: SystemTime) -> f64 {
    let age_ms = sock_service::unix_ms(now).saturating_sub(usage.at_unix_ms) as f64;
    usage.cold_starts * 0.5f64.powf(age_ms / HALF_LIFE.as_millis() as f64)
}

/// Installed size in MB, rounded up; 0 for what cannot be read.
fn dir_mb(dir: &Path) -> u64 {
    let mut bytes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(entry.path()),
                Ok(kind) if kind.is_file() => {
                    bytes += entry.metadata().map_or(0, |m| m.len());
                }
                _ => {}
            }
        }
    }
    bytes.div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function's packages from `(pin, requires)`.
    fn packages(pins: &[(&str, &[&str])]) -> Vec<SeenPackage> {
        pins.iter()
            .map(|(pin, requires)| SeenPackage {
                pin: pin.to_string(),
                dir: PathBuf::new(),
                requires: requires.iter().map(|r| r.to_string()).collect(),
            })
            .collect()
    }

    fn weighted(weight: f64, packages: &[SeenPackage]) -> Weighted<'_> {
        Weighted {
            weight,
            by_name: packages.iter().map(|p| (name_of(&p.pin), p)).collect(),
        }
    }

    fn ids(spec: &NodeSpec, parent: &str, out: &mut Vec<String>) {
        for child in &spec.children {
            let id = format!("{parent}/{}", child.packages.join(","));
            out.push(id.clone());
            ids(child, &id, out);
        }
    }

    fn planned(functions: &[Weighted<'_>], budget_mb: u64) -> Vec<String> {
        let sizes = |pin: &str| match name_of(pin) {
            "numpy" => 40,
            "pandas" => 60,
            "flask" => 3,
            _ => 1,
        };
        let (spec, estimates) = plan(functions, &sizes, budget_mb);
        let mut out = Vec::new();
        ids(&spec, "root", &mut out);
        assert_eq!(
            estimates.keys().cloned().collect::<BTreeSet<_>>(),
            out.iter().cloned().collect::<BTreeSet<_>>()
        );
        out
    }

    fn pandas() -> Vec<SeenPackage> {
        packages(&[
            ("pandas==2.2.3", &["numpy", "python-dateutil", "pytz"]),
            ("numpy==2.2.3", &[]),
            ("python-dateutil==2.9.0", &["six"]),
            ("six==1.17.0", &[]),
            ("pytz==2025.1", &[]),
        ])
    }

    #[test]
    fn a_package_several_cold_starts_needed_gets_a_node_with_its_dependencies() {
        let (a, b) = (pandas(), pandas());
        let alone = packages(&[("flask==3.1.0", &[])]);
        let nodes = planned(
            &[weighted(1.0, &a), weighted(1.0, &b), weighted(1.0, &alone)],
            2048,
        );
        assert_eq!(
            nodes,
            ["root/numpy==2.2.3,pandas==2.2.3,python-dateutil==2.9.0,pytz==2025.1,six==1.17.0"],
            "flask was needed once: no node"
        );
        // One function cold-started twice counts as much as two.
        assert_eq!(
            planned(&[weighted(2.0, &alone)], 2048),
            ["root/flask==3.1.0"]
        );
        assert!(planned(&[weighted(1.9, &alone)], 2048).is_empty());
        assert!(
            !planned(&[weighted(1.95, &alone)], 2048).is_empty(),
            "two, an hour ago"
        );
    }

    #[test]
    fn a_package_shared_more_widely_becomes_the_parent() {
        let numpy_only = packages(&[("numpy==2.2.3", &[])]);
        let (a, b) = (pandas(), pandas());
        let functions = [
            weighted(3.0, &numpy_only),
            weighted(3.0, &numpy_only),
            weighted(1.0, &a),
            weighted(1.0, &b),
        ];
        assert_eq!(
            planned(&functions, 2048),
            [
                "root/numpy==2.2.3",
                "root/numpy==2.2.3/pandas==2.2.3,python-dateutil==2.9.0,pytz==2025.1,six==1.17.0",
            ]
        );
    }

    #[test]
    fn versions_must_agree_and_the_budget_bounds_the_tree() {
        let old = packages(&[("numpy==2.1.0", &[])]);
        let new = packages(&[("numpy==2.2.3", &[])]);
        assert!(
            planned(&[weighted(1.0, &old), weighted(1.0, &new)], 2048).is_empty(),
            "two versions, each needed once"
        );
        let (a, b) = (pandas(), pandas());
        let functions = [weighted(5.0, &a), weighted(5.0, &b), weighted(2.0, &new)];
        // The pandas unit alone costs 10 + 40 + 60 + 3 MB.
        assert!(
            planned(&functions, 100)
                .iter()
                .all(|id| !id.contains("pandas"))
        );
        assert_eq!(planned(&functions, 113).len(), 1);
        assert!(planned(&functions, 5).is_empty());
    }

    #[test]
    fn what_was_seen_survives_a_restart_and_fades_with_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let usage = Usage {
            version: 3,
            packages: packages(&[("flask==3.1.0", &[])]),
            cold_starts: 4.0,
            at_unix_ms: sock_service::unix_ms(now),
        };
        let learner = Learner::open(dir.path(), dir.path(), 2048);
        {
            let mut state = learner.state();
            state.seen.functions.insert("f".into(), usage.clone());
            state.dirty = true;
        }
        learner.rebuild(now, false);
        let ids =
            |l: &Learner| -> Vec<String> { l.describe().nodes.into_iter().map(|n| n.id).collect() };
        assert_eq!(ids(&learner), ["root", "root/flask==3.1.0"]);

        let restarted = Learner::open(dir.path(), dir.path(), 2048);
        assert_eq!(ids(&restarted), ["root", "root/flask==3.1.0"]);
        assert_eq!(restarted.describe().functions, 1);

        // Two days on, four cold starts count as one: the node goes.
        restarted.rebuild(now + 2 * HALF_LIFE, true);
        assert_eq!(ids(&restarted), ["root"]);
    }

    #[test]
    fn a_damaged_file_is_learned_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("learned.json"), "{not json").expect("write");
        let learner = Learner::open(dir.path(), dir.path(), 2048);
        assert_eq!(learner.describe().functions, 0);
    }
}
