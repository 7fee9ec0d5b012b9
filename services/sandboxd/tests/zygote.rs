//! Zygotes and the sandboxes forked from them, driven through the library
//! API with package dirs the tests make. Needs root.
use std::path::{Path, PathBuf};
use std::time::Duration;

use sock_proto::v1::ErrorKind;
use sock_sandboxd::{Config, Limits, Outcome, SandboxSpec, Sandboxes, Zygote, ZygoteSpec};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A temp dir, a sandboxd instance of its own; dropping it kills every
/// sandbox and zygote and removes the cgroups.
struct Fixture {
    dir: tempfile::TempDir,
    instance: String,
    sandboxes: Option<Sandboxes>,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root ({test})");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let instance = format!("zyg-{test}-{}", std::process::id());
    let config = Config {
        data_dir: dir.path().join("data"),
        instance: instance.clone(),
        init_program: Some(env!("CARGO_BIN_EXE_sock-sandboxd").into()),
        ..Config::default()
    };
    let sandboxes = Sandboxes::new(config).expect("start sandboxes");
    Some(Fixture {
        dir,
        instance,
        sandboxes: Some(sandboxes),
    })
}

impl Fixture {
    fn sandboxes(&self) -> &Sandboxes {
        self.sandboxes.as_ref().expect("live until dropped")
    }

    /// A code dir `name` holding `f.py`.
    fn code(&self, name: &str, f_py: &str) -> PathBuf {
        let dir = self.dir.path().join("code").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir code");
        std::fs::write(dir.join("f.py"), f_py).expect("write f.py");
        dir
    }

    /// A package dir `name` with one module `module.py` of `source`.
    fn package(&self, name: &str, module: &str, source: &str) -> PathBuf {
        let dir = self.dir.path().join("packages").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir package");
        std::fs::write(dir.join(format!("{module}.py")), source).expect("write module");
        dir
    }

    fn spec(&self, code_dir: PathBuf) -> SandboxSpec {
        SandboxSpec {
            function: "test".into(),
            code_dir,
            ..SandboxSpec::default()
        }
    }

    async fn root(&self) -> Zygote {
        self.sandboxes()
            .create_zygote(
                &ZygoteSpec {
                    id: "root".into(),
                    ..ZygoteSpec::default()
                },
                TIMEOUT,
            )
            .await
            .expect("root zygote")
    }

    fn cgroup_root(&self, controller: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join("sock")
            .join(&self.instance)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.sandboxes.take());
        for controller in ["memory", "pids", "cpu", "freezer"] {
            let dir = self.cgroup_root(controller);
            if !std::thread::panicking() {
                assert!(!dir.exists(), "{} was left behind", dir.display());
            }
        }
    }
}

fn json(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Returned(body) => serde_json::from_slice(&body).expect("result is JSON"),
        other => panic!("function failed: {other:?}"),
    }
}

async fn call(sandbox: &mut sock_sandboxd::Sandbox, payload: &str) -> Outcome {
    sandbox
        .invoke("call", payload.as_bytes(), TIMEOUT)
        .await
        .expect("invoke")
}

const WHO_AM_I: &str = r#"
import os, sys

def f(event):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "root": sorted(os.listdir("/")),
        "ctypes_loaded": "ctypes" in sys.modules,
        "env": os.environ.get("GREETING"),
        "hostname": os.uname().nodename,
    }
"#;

#[tokio::test]
async fn a_child_of_the_root_zygote_runs_the_function_as_a_fresh_sandbox_would() {
    let Some(fx) = fixture("root-fork") else {
        return;
    };
    let zygote = fx.root().await;
    let mut spec = fx.spec(fx.code("who", WHO_AM_I));
    spec.environment = vec![("GREETING".into(), "hi".into())];
    let mut child = zygote.fork(spec).await.expect("fork");
    assert_eq!(zygote.children(), 1);
    let got = json(call(&mut child, "{}").await);
    assert_eq!(got["pid"], 1, "{got}");
    assert_eq!(got["ppid"], 0, "{got}");
    assert_eq!(got["uid"], 65534, "{got}");
    assert_eq!(got["cwd"], "/code", "{got}");
    assert_eq!(got["env"], "hi", "{got}");
    assert_eq!(got["hostname"], "sandbox", "{got}");
    // Inherited from the zygote, never imported by the function.
    assert_eq!(got["ctypes_loaded"], true, "{got}");
    let root: Vec<&str> = got["root"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(root.contains(&"code") && root.contains(&"usr"), "{root:?}");
    assert!(
        !root.contains(&"root") && !root.contains(&"home"),
        "{root:?}"
    );
    // Warm: a second call in the same child.
    json(call(&mut child, "{}").await);
    child.destroy().await;
    assert_eq!(zygote.children(), 0);
    zygote.destroy().await;
}
