//! `sock tree` through the real processes: after a cold start it prints
//! the node's import-cache tree, the root zygote that served it among its
//! rows.
use std::process::Command;

use sock_testkit::cluster::{Cluster, bin_dir, have_root, leftover_cgroups};

#[tokio::test(flavor = "multi_thread")]
async fn sock_tree_names_the_root_zygote_after_a_cold_start() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    cluster
        .push("hello", &[("f.py", "def f(event):\n    return event\n")])
        .await
        .expect("push");
    cluster
        .invoke("hello", b"1", None)
        .await
        .expect("a cold start");

    let out = Command::new(bin_dir().join("sock"))
        .args(["tree", "--data-dir"])
        .arg(cluster.data_dir())
        .output()
        .expect("run sock tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sock tree failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("node "), "{stdout}");
    let root: Vec<&str> = lines
        .find(|line| line.split_whitespace().next() == Some("root"))
        .unwrap_or_else(|| panic!("no root row in:\n{stdout}"))
        .split_whitespace()
        .collect();
    // root, hits, misses, chosen, PSS MB, live, last use.
    assert_eq!(root[5], "yes", "the root zygote lives:\n{stdout}");
    let hits: u64 = root[1].parse().expect("hits is a number");
    assert!(hits >= 1, "the cold start forked from it:\n{stdout}");

    let instance = cluster.instance.clone();
    assert!(cluster.stop().success(), "sock up exits cleanly");
    assert_eq!(
        leftover_cgroups(&instance),
        Vec::<std::path::PathBuf>::new()
    );
}
