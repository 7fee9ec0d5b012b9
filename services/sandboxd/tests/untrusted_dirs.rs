//! Root never follows a path that untrusted code could have written: code
//! and package dirs come from the cache (an unprivileged service unpacking
//! untrusted bundles), so a symlink planted on such a path must never make
//! sandboxd mount a host dir into a sandbox, fresh or forked from a zygote.
//! Needs root: without it each test fails, unless SOCK_TEST_ALLOW_SKIP=1.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sock_sandboxd::{Config, Outcome, SandboxSpec, Sandboxes, Zygote, ZygoteSpec};

const TIMEOUT: Duration = Duration::from_secs(20);
const SECRET: &str = "host-secret-4f1d";
/// Tells what the sandbox can see of its code dir, its one package dir and
/// the secret's usual name in either.
const PROBE: &str = r#"
import os

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return type(e).__name__

def f(event):
    return {
        "code": sorted(os.listdir("/code")),
        "package": read("/packages/0/mod.py"),
        "secrets": [read("/code/secret.txt"), read("/packages/0/secret.txt")],
    }
"#;

/// `<tmp>/cache` (sandboxd's `cache_data_dir`) with a good code dir and a
/// good package dir, and `<tmp>/host/secret` holding `secret.txt`: the
/// host dir a planted symlink points at. Dropping it kills every sandbox.
struct Fixture {
    dir: tempfile::TempDir,
    sandboxes: Option<Sandboxes>,
    instance: common::Instance,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !common::have_root() {
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("host/secret");
    std::fs::create_dir_all(&secret).expect("mkdir host dir");
    std::fs::write(secret.join("secret.txt"), SECRET).expect("write secret");
    // A function there too, so only the symlink check can stop it.
    std::fs::write(secret.join("f.py"), PROBE).expect("write f.py beside the secret");
    let instance = common::Instance::new(test);
    let fixture = Fixture {
        sandboxes: Some(
            Sandboxes::new(Config {
                data_dir: dir.path().join("data"),
                instance: instance.name().to_string(),
                init_program: Some(env!("CARGO_BIN_EXE_sock-sandboxd").into()),
                cache_data_dir: dir.path().join("cache"),
                ..Config::default()
            })
            .expect("start sandboxes"),
        ),
        dir,
        instance,
    };
    let code = fixture.code_dir("good");
    std::fs::create_dir_all(&code).expect("mkdir code");
    std::fs::write(code.join("f.py"), PROBE).expect("write f.py");
    let package = fixture.package_dir("good");
    std::fs::create_dir_all(&package).expect("mkdir package");
    std::fs::write(package.join("mod.py"), "GOOD = 1\n").expect("write mod.py");
    Some(fixture)
}

impl Fixture {
    fn sandboxes(&self) -> &Sandboxes {
        self.sandboxes.as_ref().expect("live until dropped")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn secret_dir(&self) -> PathBuf {
        self.dir.path().join("host/secret")
    }

    /// `<cache>/code/<name>/1`, as the cache lays out a function version.
    fn code_dir(&self, name: &str) -> PathBuf {
        self.cache().join("code").join(name).join("1")
    }

    /// `<cache>/packages/<pin>/files`, as the cache lays out a package.
    fn package_dir(&self, pin: &str) -> PathBuf {
        self.cache().join("packages").join(pin).join("files")
    }

    fn spec(&self, code_dir: PathBuf, package_dir: PathBuf) -> SandboxSpec {
        SandboxSpec {
            function: "probe".into(),
            code_dir,
            package_dirs: vec![package_dir],
            ..SandboxSpec::default()
        }
    }

    /// The three planted symlinks, each as a spec that names it: (a) the
    /// code dir is a symlink to the host dir, (b) a component above the
    /// code dir is, (c) the package dir is.
    fn planted(&self) -> Vec<(&'static str, SandboxSpec)> {
        let secret = self.secret_dir();
        let final_link = self.code_dir("final-link");
        mkparent(&final_link);
        symlink(&secret, &final_link);
        // <cache>/code/middle-link -> <tmp>/host, so .../middle-link/secret
        // is the host dir.
        let middle = self.cache().join("code/middle-link");
        symlink(secret.parent().expect("host dir"), &middle);
        let package_link = self.package_dir("package-link");
        mkparent(&package_link);
        symlink(&secret, &package_link);
        vec![
            (
                "code dir is a symlink",
                self.spec(final_link, self.package_dir("good")),
            ),
            (
                "code dir passes through a symlink",
                self.spec(middle.join("secret"), self.package_dir("good")),
            ),
            (
                "package dir is a symlink",
                self.spec(self.code_dir("good"), package_link),
            ),
        ]
    }

    /// Fails the test if the host dir is mounted anywhere in sandboxd's
    /// mount namespace.
    fn assert_secret_not_mounted(&self) {
        let table = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let secret = self.secret_dir().display().to_string();
        assert!(
            !table.lines().any(|line| line.contains(&secret)),
            "{secret} was mounted:\n{table}"
        );
    }

    async fn root_zygote(&self) -> Zygote {
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
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(sandboxes) = self.sandboxes.take() {
            sandboxes.close();
        }
        if !std::thread::panicking() {
            common::assert_no_cgroups(self.instance.name());
        }
    }
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
}

fn mkparent(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir parent");
}

fn assert_refused(case: &str, result: Result<sock_sandboxd::Sandbox, sock_sandboxd::Error>) {
    let err = match result {
        Ok(_) => panic!("{case}: the sandbox started"),
        Err(err) => err.to_string(),
    };
    assert!(
        err.contains("is or passes through a symlink"),
        "{case}: unexpected error: {err}"
    );
}

/// What the probe saw; a sandbox that could read the secret fails here.
async fn probe(mut sandbox: sock_sandboxd::Sandbox) -> serde_json::Value {
    let outcome = sandbox
        .invoke("probe", b"{}", TIMEOUT)
        .await
        .expect("invoke");
    sandbox.destroy().await;
    let seen: serde_json::Value = match outcome {
        Outcome::Result(body) => serde_json::from_slice(&body).expect("JSON result"),
        other => panic!("probe failed: {other:?}"),
    };
    assert!(!seen.to_string().contains(SECRET), "secret read: {seen}");
    seen
}

fn assert_good(seen: &serde_json::Value) {
    assert_eq!(seen["code"], serde_json::json!(["f.py"]), "{seen}");
    assert_eq!(seen["package"], "GOOD = 1\n", "{seen}");
    assert_eq!(
        seen["secrets"],
        serde_json::json!(["FileNotFoundError", "FileNotFoundError"]),
        "{seen}"
    );
}

#[tokio::test]
async fn fresh_sandboxes_refuse_a_symlinked_code_or_package_dir() {
    let Some(fx) = fixture("fresh") else { return };
    for (case, spec) in fx.planted() {
        assert_refused(case, fx.sandboxes().create(spec).await);
        fx.assert_secret_not_mounted();
    }
    assert_eq!(fx.sandboxes().alive(), 0, "a refused sandbox stays dead");
    let good = fx.spec(fx.code_dir("good"), fx.package_dir("good"));
    let sandbox = fx.sandboxes().create(good).await.expect("good sandbox");
    assert_good(&probe(sandbox).await);
}

#[tokio::test]
async fn zygote_forks_refuse_a_symlinked_code_or_package_dir() {
    let Some(fx) = fixture("fork") else { return };
    let zygote = fx.root_zygote().await;
    // Twice each: the first may take over the parked child.
    zygote.park_spare().await.expect("park a spare");
    for (case, spec) in fx.planted() {
        for _ in 0..2 {
            assert_refused(case, zygote.fork(spec.clone()).await);
            fx.assert_secret_not_mounted();
        }
    }
    assert_eq!(zygote.children(), 0, "a refused child is no child");
    let good = fx.spec(fx.code_dir("good"), fx.package_dir("good"));
    let sandbox = zygote.fork(good).await.expect("good fork");
    assert_good(&probe(sandbox).await);
    zygote.destroy().await;
}

#[tokio::test]
async fn a_zygote_refuses_a_symlinked_package_dir() {
    let Some(fx) = fixture("zygote") else { return };
    let link = fx.package_dir("zygote-link");
    mkparent(&link);
    symlink(&fx.secret_dir(), &link);
    let node = ZygoteSpec {
        id: "root/evil".into(),
        package_dirs: vec![link],
        imports: Vec::new(),
    };
    let err = match fx.sandboxes().create_zygote(&node, TIMEOUT).await {
        Ok(_) => panic!("a root zygote started on a symlinked package dir"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("is or passes through a symlink"), "{err}");
    let root = fx.root_zygote().await;
    let err = match root.fork_zygote(&node, TIMEOUT).await {
        Ok(_) => panic!("a child zygote started on a symlinked package dir"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("is or passes through a symlink"), "{err}");
    fx.assert_secret_not_mounted();
    root.destroy().await;
}

/// The check before a fork is not the only one: a package dir of the
/// zygote's own chain, swapped for a symlink after the zygote started (as
/// a compromised cache could), is refused when the child's root is built
/// from it, by fd.
#[tokio::test]
async fn a_dir_swapped_for_a_symlink_after_the_check_is_refused_at_mount() {
    let Some(fx) = fixture("swap") else { return };
    let package = fx.package_dir("swapped");
    std::fs::create_dir_all(&package).expect("mkdir package");
    std::fs::write(package.join("mod.py"), "GOOD = 1\n").expect("write mod.py");
    let zygote = fx
        .sandboxes()
        .create_zygote(
            &ZygoteSpec {
                id: "root".into(),
                package_dirs: vec![package.clone()],
                imports: Vec::new(),
            },
            TIMEOUT,
        )
        .await
        .expect("zygote with a good package dir");
    std::fs::remove_dir_all(&package).expect("remove the package dir");
    symlink(&fx.secret_dir(), &package);
    // The spec itself names only good dirs; the zygote's own dir is the
    // swapped one.
    let spec = SandboxSpec {
        function: "probe".into(),
        code_dir: fx.code_dir("good"),
        ..SandboxSpec::default()
    };
    for _ in 0..2 {
        assert_refused("swapped package dir", zygote.fork(spec.clone()).await);
        fx.assert_secret_not_mounted();
    }
    zygote.destroy().await;
}
