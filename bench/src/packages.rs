//! Cold starts of functions that import real packages (pandas, numpy,
//! flask and requests from PyPI; with `--quick`, a wheel built here),
//! under four node configurations, each its own cluster: the default after
//! a warm-up, the import cache off, a fresh sandbox per call, and an
//! explicit import-cache tree.
//!
//! The tree's convergence is timed by polling sandboxd's `Status` for a
//! zygote whose id names a set's package; the wheels come from
//! `sock_e2e::wheels`.
use std::path::Path;
use std::time::{Duration, Instant};

use sock_proto::v1::ZygoteStatus;
use sock_testkit::cluster::Cluster;
use sock_testkit::wheels;

use crate::density::{self, Density};
use crate::run::{self, Machine};
use crate::sock;
use crate::stats::Series;

/// The functions' packages, pinned to what pip resolved for them (python
/// 3.11, December 2026); pandas and numpy at OpenLambda's example pins.
const NUMPY: &str = "numpy==2.2.3";
const PANDAS: &str = "pandas==2.2.3";
const FLASK: &str = "flask==3.1.3";
const REQUESTS: &str = "requests==2.34.2";
/// The `--quick` package, built here so the smoke run needs no PyPI.
const QUICK_PACKAGE: &str = "benchpkg==1.0";

/// `ol.yaml` of a function that wants a fresh sandbox for every call.
const FRESH_PER_CALL: &str = "reuse-sandbox: false\n";
/// The pause before each measured cold start: the previous call's sandbox
/// has gone idle and its zygote has parked the next child, as between
/// cold starts that are not a burst. Back to back, each cold start of a
/// node after the first waits for its zygote to fork (bench/RESULTS.md).
pub const SPACED: Duration = Duration::from_millis(250);
/// How often a new function of each package set not yet served by its
/// own zygote is called while waiting for the import-cache tree.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The packages one group of functions imports.
pub struct PackageSet {
    /// What the report calls it; also the prefix of its functions' names.
    pub name: &'static str,
    /// The module `f.py` imports.
    module: &'static str,
    /// `requirements.txt`: the package and every dependency, pinned.
    pub pins: &'static [&'static str],
    /// The pin a zygote that imported the set's package names in its id.
    key: &'static str,
}

impl PackageSet {
    /// `f.py` and `requirements.txt`, and with `fresh_per_call` an ol.yaml
    /// asking for a fresh sandbox per call.
    fn files(&self, fresh_per_call: bool) -> Vec<(&'static str, String)> {
        let mut files = vec![
            (
                "f.py",
                format!(
                    "import {}\n\n\ndef f(event):\n    return event\n",
                    self.module
                ),
            ),
            ("requirements.txt", format!("{}\n", self.pins.join("\n"))),
        ];
        if fresh_per_call {
            files.push(("ol.yaml", FRESH_PER_CALL.into()));
        }
        files
    }

    /// Whether the zygote `id` imported this set's package and nothing
    /// outside it, so a function of the set forks from it. Ids name the
    /// pins of a tree node and its ancestors (`root/numpy==2.2.3/pandas==2.2.3`,
    /// `root:flask==3.1.3`).
    fn served_by(&self, id: &str) -> bool {
        let pins: Vec<&str> = id
            .split(['/', ':', ','])
            .filter(|p| p.contains("=="))
            .collect();
        pins.contains(&self.key) && pins.iter().all(|p| self.pins.contains(p))
    }
}

fn pypi_sets() -> Vec<PackageSet> {
    vec![
        PackageSet {
            name: "pandas",
            module: "pandas",
            pins: &[
                NUMPY,
                PANDAS,
                "python-dateutil==4.0.0",
                "pytz==2026.6",
                "tzdata==2026.6",
            ],
            key: PANDAS,
        },
        PackageSet {
            name: "numpy",
            module: "numpy",
            pins: &[NUMPY],
            key: NUMPY,
        },
        PackageSet {
            name: "flask",
            module: "flask",
            pins: &[
                FLASK,
                "blinker==1.9.0",
                "click==8.5.1",
                "itsdangerous==2.2.0",
                "jinja2==3.1.6",
                "markupsafe==3.0.4",
                "werkzeug==3.1.9",
            ],
            key: FLASK,
        },
        PackageSet {
            name: "requests",
            module: "requests",
            pins: &[
                REQUESTS,
                "certifi==2026.10.19.post1",
                "charset-normalizer==3.5.3",
                "idna==3.20",
                "urllib3==2.8.0",
            ],
            key: REQUESTS,
        },
    ]
}

/// The node configurations measured, each on a cluster of its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Nothing configured: whatever the node makes of the warm-up.
    Default,
    /// `import_cache = off` in sandboxd and the cache.
    ImportCacheOff,
    /// The default node; the functions' ol.yaml asks for a fresh sandbox
    /// per call.
    FreshPerCall,
    /// An import-cache tree with a node per package set.
    ExplicitTree,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Default,
        Mode::ImportCacheOff,
        Mode::FreshPerCall,
        Mode::ExplicitTree,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Default => "(a) default, after the warm-up",
            Mode::ImportCacheOff => "(b) import cache off",
            Mode::FreshPerCall => "(c) fresh sandbox per call",
            Mode::ExplicitTree => "(d) explicit tree",
        }
    }

    /// What the cluster is told besides the wheels and timeouts.
    fn env(self, tree: &str) -> Vec<(&'static str, String)> {
        match self {
            Mode::Default | Mode::FreshPerCall => Vec::new(),
            Mode::ImportCacheOff => vec![
                ("SOCK_SANDBOXD_IMPORT_CACHE", "off".into()),
                ("SOCK_CACHE_IMPORT_CACHE", "off".into()),
            ],
            Mode::ExplicitTree => vec![("SOCK_CACHE_IMPORT_TREE", tree.into())],
        }
    }

    /// Whether zygotes may serve the package sets, so waiting for them
    /// means something.
    fn has_tree(self) -> bool {
        self != Mode::ImportCacheOff
    }
}

#[derive(Clone, Debug)]
pub struct Sizes {
    /// Functions of each set called before the measured ones.
    pub warmup: usize,
    /// Measured functions of each set, each called once.
    pub functions: usize,
    /// How long after the first warm-up call to wait for the zygotes.
    pub converge_within: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                warmup: 1,
                functions: 3,
                converge_within: Duration::from_secs(10),
            }
        } else {
            Sizes {
                warmup: 5,
                functions: 20,
                converge_within: Duration::from_secs(120),
            }
        }
    }
}

/// What one configuration's cluster measured.
pub struct ModeRun {
    pub mode: Mode,
    /// The environment it differs from the default by, for the report.
    pub env: Vec<(&'static str, String)>,
    /// One series per package set, in the order of [`Results::sets`].
    pub cold: Vec<Series>,
    /// Zygote forks sandboxd counted over the measured cold starts.
    pub forks: u64,
    /// Per package set, when sandboxd first listed a zygote serving it,
    /// from the first warm-up call; None if not within
    /// [`Sizes::converge_within`]. Empty when the mode has no zygotes.
    pub converged: Vec<Option<Duration>>,
    /// The zygotes alive after the cold starts, as sandboxd lists them.
    pub zygotes: Vec<ZygoteStatus>,
    /// PSS of the paused sandboxes and zygotes; None when no sandbox is
    /// kept (a fresh sandbox per call).
    pub density: Option<Density>,
}

pub struct Results {
    /// How sock-bench was run.
    pub command: String,
    pub quick: bool,
    pub sizes: Sizes,
    pub machine: Machine,
    pub sets: Vec<PackageSet>,
    pub runs: Vec<ModeRun>,
}

pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Results> {
    let sizes = Sizes::new(quick);
    let mut machine = run::machine(bin);
    // Downloaded once (target/pypi-wheels) or built; every cluster's cache
    // installs from here with no index, untimed.
    let (sets, tree, wheels) = tokio::task::spawn_blocking(move || package_sets(quick)).await?;
    let links = wheels.path().display().to_string();
    let mut runs = Vec::new();
    for mode in Mode::ALL {
        eprintln!("sock-bench: packages, {}", mode.label());
        runs.push(measure(bin, mode, &sets, &tree, &links, &sizes, quick).await?);
    }
    machine.load_after = run::loadavg();
    Ok(Results {
        command: std::iter::once("sock-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        quick,
        sizes,
        machine,
        sets,
        runs,
    })
}

/// The package sets, the explicit tree for them (OpenLambda's format) and
/// a wheel dir holding everything they install.
fn package_sets(quick: bool) -> (Vec<PackageSet>, String, tempfile::TempDir) {
    if quick {
        let dir = wheels::wheel_dir();
        let (name, version) = QUICK_PACKAGE.split_once("==").expect("a pin");
        wheels::module_wheel(dir.path(), name, version, &[], "VALUE = 1\n");
        let set = PackageSet {
            name,
            module: name,
            pins: &[QUICK_PACKAGE],
            key: QUICK_PACKAGE,
        };
        let tree = format!(r#"{{"packages":[],"children":[{{"packages":["{QUICK_PACKAGE}"]}}]}}"#);
        return (vec![set], tree, dir);
    }
    let sets = pypi_sets();
    let pins: Vec<&[&str]> = sets.iter().map(|s| s.pins).collect();
    let dir = wheels::readable_pypi_wheels(&pins);
    // pandas under numpy, its dependency, whose zygote the numpy
    // functions share.
    let tree = format!(
        r#"{{"packages":[],"children":[{{"packages":["{NUMPY}"],"children":[{{"packages":["{PANDAS}"]}}]}},{{"packages":["{FLASK}"]}},{{"packages":["{REQUESTS}"]}}]}}"#
    );
    (sets, tree, dir)
}

/// `files` as [`sock::push`] takes them.
fn borrowed<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(p, c)| (*p, c.as_str())).collect()
}

async fn measure(
    bin: &Path,
    mode: Mode,
    sets: &[PackageSet],
    tree: &str,
    links: &str,
    sizes: &Sizes,
    quick: bool,
) -> anyhow::Result<ModeRun> {
    let mut env: Vec<(&str, String)> = vec![
        ("SOCK_CACHE_FIND_LINKS", links.into()),
        // A zygote that imports pandas may take longer than the default
        // 30 s on a loaded machine; the first call that needs it waits.
        ("SOCK_GATEWAY_DEFAULT_TIMEOUT_MS", "240000".into()),
        ("SOCK_SANDBOXD_TIMEOUT_MS", "240000".into()),
    ];
    if quick {
        // The learned tree's rebuild period (10 s by default): the smoke
        // run waits only 10 s for it.
        env.push(("SOCK_CACHE_TREE_REBUILD_MS", "1000".into()));
    }
    env.extend(mode.env(tree));
    let cluster = tokio::task::spawn_blocking({
        let bin = bin.to_path_buf();
        move || sock::start(&bin, &borrowed(&env))
    })
    .await?;
    let fresh_per_call = mode == Mode::FreshPerCall;
    let files: Vec<Vec<(&str, String)>> = sets.iter().map(|s| s.files(fresh_per_call)).collect();

    // The first push of a set installs its packages (prepared before the
    // clock starts); the warm-up calls then show the node which packages
    // its functions use.
    let mut warmups = Vec::new();
    for (set, files) in sets.iter().zip(&files) {
        let prefix = format!("warm-{}", set.name);
        warmups.push(sock::push_all(&cluster, &prefix, &borrowed(files), sizes.warmup).await?);
    }
    let started = Instant::now();
    for names in &warmups {
        sock::first_calls(&cluster, names, Duration::ZERO).await?;
    }
    let converged = if mode.has_tree() {
        converge(&cluster, sets, started, sizes.converge_within).await?
    } else {
        Vec::new()
    };

    let forks_before = sock::status(&cluster).await?.zygote_forks_total;
    let mut cold = Vec::new();
    for (set, files) in sets.iter().zip(&files) {
        eprintln!(
            "sock-bench: packages, {}: {} cold starts of {}",
            mode.label(),
            sizes.functions,
            set.name
        );
        let mut series = Series::new(
            format!("{} {}", set.name, mode.label()),
            format!("import {}", set.module),
        );
        series.samples = sock::cold_starts(
            &cluster,
            &format!("cold-{}", set.name),
            &borrowed(files),
            sizes.functions,
            SPACED,
        )
        .await?;
        cold.push(series);
    }
    let status = sock::status(&cluster).await?;
    let forks = status.zygote_forks_total - forks_before;
    let density = match fresh_per_call {
        true => None,
        false => Some(density::measure(&cluster, 1).await?),
    };
    sock::stop(cluster).await?;
    Ok(ModeRun {
        mode,
        env: mode.env(tree),
        cold,
        forks,
        converged,
        zygotes: status.zygotes,
        density,
    })
}

/// Per set, how long after `started` sandboxd first listed a zygote that
/// serves it: checked now, and after each round of calls of one new
/// function per set not yet served (a fresh sandbox per call, so they
/// leave nothing behind), a round every [`PROBE_EVERY`], until all are
/// served or `within` has passed.
async fn converge(
    cluster: &Cluster,
    sets: &[PackageSet],
    started: Instant,
    within: Duration,
) -> anyhow::Result<Vec<Option<Duration>>> {
    let probes: Vec<Vec<(&str, String)>> = sets.iter().map(|s| s.files(true)).collect();
    let mut served: Vec<Option<Duration>> = vec![None; sets.len()];
    for round in 0.. {
        let zygotes = sock::status(cluster).await?.zygotes;
        for (set, at) in sets.iter().zip(served.iter_mut()) {
            if at.is_none() && zygotes.iter().any(|z| set.served_by(&z.id)) {
                *at = Some(started.elapsed());
            }
        }
        if served.iter().all(Option::is_some) || started.elapsed() > within {
            break;
        }
        let next = tokio::time::Instant::now() + PROBE_EVERY;
        for ((set, files), _) in sets
            .iter()
            .zip(&probes)
            .zip(&served)
            .filter(|(_, at)| at.is_none())
        {
            let name = format!("probe-{}-{round}", set.name);
            sock::push(cluster, &name, &borrowed(files)).await?;
            sock::first_calls(cluster, &[name], Duration::ZERO).await?;
        }
        tokio::time::sleep_until(next).await;
    }
    Ok(served)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zygote_serves_the_sets_whose_closure_holds_its_pins() {
        let sets = pypi_sets();
        let (pandas, numpy) = (&sets[0], &sets[1]);
        let chain = "root/numpy==2.2.3/pandas==2.2.3";
        assert!(pandas.served_by(chain));
        assert!(!numpy.served_by(chain), "numpy functions lack pandas");
        assert!(numpy.served_by("root/numpy==2.2.3"));
        assert!(!pandas.served_by("root/numpy==2.2.3"), "no pandas imported");
        assert!(!numpy.served_by("root"));
        assert!(sets[2].served_by("root:flask==3.1.3"));
        assert!(!sets[2].served_by("root:flask==3.0.0"));
    }
}
