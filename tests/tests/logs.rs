//! `sock logs NAME -f` through the real processes: it prints what the
//! function's calls printed, and keeps printing the calls made after it
//! started following.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sock_testkit::cluster::{Cluster, bin_dir, have_root};

const WAIT: Duration = Duration::from_secs(20);

/// A `sock logs -f` the test started, stopped on drop as Ctrl-C would.
struct Following(Child);

impl Drop for Following {
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid fits i32"));
        let _ = kill(pid, Signal::SIGINT);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `lines` until one contains every part of `want`; panics with what
/// came instead after [`WAIT`].
fn wait_for(lines: &mpsc::Receiver<String>, want: &[&str], seen: &mut Vec<String>) {
    let started = Instant::now();
    loop {
        if seen.iter().any(|l| want.iter().all(|w| l.contains(w))) {
            return;
        }
        let left = WAIT.saturating_sub(started.elapsed());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                panic!("`sock logs -f` never printed a line with {want:?}; it printed {seen:#?}")
            }
        }
    }
}

async fn call(cluster: &Cluster, payload: &str) -> String {
    cluster
        .invoke("chatty", payload.as_bytes(), None)
        .await
        .expect("call")
        .call_id
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_prints_calls_made_after_it_started() {
    if !have_root() {
        return;
    }
    let cluster = Cluster::start();
    cluster
        .push(
            "chatty",
            &[(
                "f.py",
                "def f(event):\n    print('event', event)\n    return event\n",
            )],
        )
        .await
        .expect("push");
    let before = call(&cluster, "1").await;

    let mut child = Command::new(bin_dir().join("sock"))
        .args(["logs", "chatty", "-f", "--data-dir"])
        .arg(cluster.data_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start sock logs -f");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut following = Following(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // The kept lines come first: once the earlier call shows, the stream
    // is open, so the next call's line can only come from following.
    wait_for(&lines, &[&before, "stdout | event 1"], &mut seen);

    let after = call(&cluster, "2").await;
    wait_for(&lines, &[&after, "stdout | event 2"], &mut seen);
    assert!(
        following.0.try_wait().expect("poll sock logs").is_none(),
        "`sock logs -f` keeps running"
    );
}
