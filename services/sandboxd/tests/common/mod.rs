//! What every sandboxd integration test shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sock_testkit::cluster::have_root;

/// Every hierarchy a sandbox may join: v1 controllers, and the cgroup2
/// leaf that freezes and kills where the machine mounts cgroup2 (then the
/// v1 freezer is not used).
const CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "freezer", "unified"];

/// A sandboxd instance of one test: its name (unique per test binary,
/// test and process, so parallel tests never share cgroups) and, on drop,
/// the removal of whatever its cgroups still hold, so that a test that
/// failed before its sandboxd cleaned up leaks nothing. Declare it after
/// the sandboxd it names: it must drop last.
pub struct Instance(String);

impl Instance {
    pub fn new(test: &str) -> Instance {
        Instance(format!(
            "{}-{test}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Checks that sandboxd instance `instance` removed every cgroup of its own.
pub fn assert_no_cgroups(instance: &str) {
    for controller in CONTROLLERS {
        let dir = cgroup_dir(controller, instance);
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for controller in CONTROLLERS {
            let dir = cgroup_dir(controller, &self.0);
            for pid in pids_below(&dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            remove_tree(&dir);
            let _ = std::fs::remove_dir(dir.parent().expect("sock dir"));
        }
    }
}

/// Removes a cgroup dir and those below it, children first, each retried
/// while its killed processes finish exiting.
fn remove_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_tree(&entry.path());
        }
    }
    if !dir.exists() {
        return;
    }
    // A frozen task dies of its SIGKILL only once thawed.
    let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
    let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The cgroup dir of sandboxd instance `instance` in hierarchy `controller`.
pub fn cgroup_dir(controller: &str, instance: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("sock")
        .join(instance)
}

/// The pids in the cgroups below `dir`, at any depth.
pub fn pids_below(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            let procs =
                std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.parse::<i32>().ok()));
            pids.extend(pids_below(&entry.path()));
        }
    }
    pids
}
