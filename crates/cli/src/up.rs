//! `sock up`: the whole platform on one machine, as four processes.
//!
//! Each service is its own binary next to `sock` (or in `--bin-dir`); `up`
//! gives each its addresses, data dir and tokens through
//! `SOCK_<SERVICE>_*` variables, waits until all four answer
//! `grpc.health.v1` with SERVING, records the endpoints and pids in
//! `<data dir>/endpoints.json`, and on Ctrl-C or SIGTERM stops them in
//! call order (gateway first, registry last).
//!
//! A service that dies once up is started again, as compose's `restart:`
//! would: one line says which, how it ended and after what delay (0.5 s,
//! doubling to 30 s; [`crate::restart`] has the rules), and the new run
//! counts as up, its pid in endpoints.json, once it answers health (a
//! new sandboxd first removes what its predecessor left: that one's
//! sandboxes died with it, their cgroups and mounts did not). Five
//! exits in a row, each before the run had served 10 s, stop the whole
//! suite with an error naming the service; so does any exit during start-up, which
//! a restart would only repeat. With `--no-restart` (`SOCK_UP_NO_RESTART`)
//! an exit is reported and the service left down while the others keep
//! running (outage rehearsals, the registry-down e2e test). The processes
//! themselves are [`crate::supervise`]'s.
//!
//! Run as root, only sandboxd stays root: registry, cache and gateway run
//! as `--user` (a `sock` system user, made if missing), own their data
//! dirs, and reach sandboxd over its unix socket, which admits root and
//! that user alone. Every TCP port wants a token (see [`sock_cli::tokens`]).
//!
//! Ports: gateway gRPC `--port` (7070), registry gRPC base+1, registry HTTP
//! base+2, cache base+3, the gateway's HTTP API base+5, the `/metrics` of
//! registry, cache and sandboxd base+6 to base+8; sandboxd answers on
//! `<data dir>/sandboxd.sock`. The data dir (default `./.sock`) holds
//! `registry/` (sled) and `cache/` (unpacked code and packages, readable by
//! sandboxes, writable by none), owned by the services' user; `sandboxd/`
//! (sandbox state, root's); `tokens/`; the socket and `endpoints.json`. Run
//! as root, `up` refuses a data dir whose parents that user cannot pass
//! through.
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use sock_cli::endpoints::Endpoints;
use sock_cli::tokens::{self, Tokens};

use crate::supervise::{Launch, OnExit, Record, RunAs, Service, keep_up, start_all, stop_all};

/// TCP ports `sock up` hands out: see [`addresses`].
const PORTS: u16 = 8;
/// Port offsets from `--port` of gateway, registry, registry HTTP, cache,
/// gateway HTTP and the three metrics endpoints; base+4 was sandboxd's
/// before it moved to a unix socket, and stays free so the others keep
/// their numbers.
const OFFSETS: [u16; PORTS as usize] = [0, 1, 2, 3, 5, 6, 7, 8];
/// sandboxd's socket, below the data dir.
const SANDBOXD_SOCKET: &str = "sandboxd.sock";

#[derive(clap::Args)]
pub struct UpArgs {
    /// TOML file with [gateway], [registry], [cache] and [sandboxd] sections.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Gateway port; registry gRPC, registry HTTP and cache take the next
    /// three, the gateway's HTTP API and the /metrics of registry, cache
    /// and sandboxd base+5 to base+8. 0 picks free ports. sandboxd listens
    /// on `<data dir>/sandboxd.sock`.
    #[arg(long, default_value_t = 7070)]
    port: u16,
    /// Address every service listens on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Where the sock-* service binaries are [default: next to `sock`]
    #[arg(long, env = "SOCK_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// When a service exits, report it and leave it down instead of
    /// restarting it; the others keep running. For rehearsing an outage of
    /// one service (its pid is in endpoints.json until it exits).
    #[arg(long, env = "SOCK_UP_NO_RESTART")]
    no_restart: bool,
    /// When run as root: the user registry, cache and gateway run as
    /// (made as a system user if it is `sock` and missing). Only sandboxd
    /// keeps root.
    #[arg(long, env = "SOCK_UP_USER", default_value = "sock")]
    user: String,
}

fn plan(
    endpoints: &Endpoints,
    data_dir: &Path,
    tokens: &Tokens,
    run_as: Option<RunAs>,
) -> Vec<Service> {
    let dir = |s: &str| data_dir.join(s).display().to_string();
    let listen = |url: &str| url.trim_start_matches("http://").to_string();
    let env = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect::<Vec<_>>()
    };
    let admin = || tokens.admin.clone();
    let node = || tokens.node.clone();
    let mut sandboxd_env = env(&[
        ("SOCK_SANDBOXD_LISTEN", endpoints.sandboxd.clone()),
        ("SOCK_SANDBOXD_CACHE_ADDR", endpoints.cache.clone()),
        ("SOCK_SANDBOXD_DATA_DIR", dir("sandboxd")),
        (
            "SOCK_SANDBOXD_METRICS_LISTEN",
            listen(&endpoints.sandboxd_metrics),
        ),
        ("SOCK_SANDBOXD_ADMIN_TOKEN", admin()),
        ("SOCK_SANDBOXD_NODE_TOKEN", node()),
        // The cache's dirs are opened beneath it, never through a symlink.
        ("SOCK_SANDBOXD_CACHE_DATA_DIR", dir("cache")),
    ]);
    if let Some(run_as) = run_as {
        // The gateway calls sandboxd over its socket as this user.
        sandboxd_env.push(("SOCK_SANDBOXD_CLIENT_UID".into(), run_as.uid.to_string()));
    }
    vec![
        Service {
            name: "registry",
            health_addr: endpoints.registry.clone(),
            unprivileged: true,
            env: env(&[
                ("SOCK_REGISTRY_GRPC_LISTEN", listen(&endpoints.registry)),
                (
                    "SOCK_REGISTRY_HTTP_LISTEN",
                    listen(&endpoints.registry_http),
                ),
                ("SOCK_REGISTRY_DATA_DIR", dir("registry")),
                (
                    "SOCK_REGISTRY_METRICS_LISTEN",
                    listen(&endpoints.registry_metrics),
                ),
                ("SOCK_REGISTRY_ADMIN_TOKEN", admin()),
                ("SOCK_REGISTRY_NODE_TOKEN", node()),
            ]),
        },
        Service {
            name: "cache",
            health_addr: endpoints.cache.clone(),
            unprivileged: true,
            env: env(&[
                ("SOCK_CACHE_LISTEN", listen(&endpoints.cache)),
                ("SOCK_CACHE_REGISTRY_URL", endpoints.registry_http.clone()),
                ("SOCK_CACHE_DATA_DIR", dir("cache")),
                (
                    "SOCK_CACHE_METRICS_LISTEN",
                    listen(&endpoints.cache_metrics),
                ),
                ("SOCK_CACHE_ADMIN_TOKEN", admin()),
                ("SOCK_CACHE_NODE_TOKEN", node()),
            ]),
        },
        Service {
            name: "sandboxd",
            health_addr: endpoints.sandboxd.clone(),
            unprivileged: false,
            env: sandboxd_env,
        },
        Service {
            name: "gateway",
            health_addr: endpoints.gateway.clone(),
            unprivileged: true,
            env: env(&[
                ("SOCK_GATEWAY_LISTEN", listen(&endpoints.gateway)),
                ("SOCK_GATEWAY_HTTP_LISTEN", listen(&endpoints.gateway_http)),
                ("SOCK_GATEWAY_REGISTRY_ADDR", endpoints.registry.clone()),
                ("SOCK_GATEWAY_SANDBOXD_ADDR", endpoints.sandboxd.clone()),
                ("SOCK_GATEWAY_INVOKE_TOKEN", tokens.invoke.clone()),
                ("SOCK_GATEWAY_ADMIN_TOKEN", admin()),
                ("SOCK_GATEWAY_NODE_TOKEN", node()),
            ]),
        },
    ]
}

/// The TCP addresses (ports at [`OFFSETS`] from `base`, or free ones for
/// 0) and sandboxd's socket in `data_dir`.
fn addresses(host: &str, base: u16, data_dir: &Path) -> anyhow::Result<Endpoints> {
    let mut ports = Vec::with_capacity(usize::from(PORTS));
    if base == 0 {
        // Hold every listener until all are picked so they differ; the
        // services bind them right after, a window no other sock process
        // races for in practice.
        let held = (0..PORTS)
            .map(|_| TcpListener::bind((host, 0)))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("cannot find free ports on {host}"))?;
        for l in &held {
            ports.push(l.local_addr()?.port());
        }
    } else {
        for offset in OFFSETS {
            ports.push(base.checked_add(offset).context("--port is too high")?);
        }
    }
    let url = |p: u16| format!("http://{host}:{p}");
    Ok(Endpoints {
        gateway: url(ports[0]),
        registry: url(ports[1]),
        registry_http: url(ports[2]),
        cache: url(ports[3]),
        sandboxd: format!("unix:{}", data_dir.join(SANDBOXD_SOCKET).display()),
        gateway_http: url(ports[4]),
        registry_metrics: url(ports[5]),
        cache_metrics: url(ports[6]),
        sandboxd_metrics: url(ports[7]),
        pids: Default::default(),
    })
}

pub async fn up(args: UpArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let run_as = if nix::unistd::geteuid().is_root() {
        let run_as = service_user(&args.user)?;
        give_data_dirs(&data_dir, run_as)?;
        Some(run_as)
    } else {
        None
    };
    let tokens = tokens::ensure(&data_dir, sudo_user())
        .with_context(|| format!("cannot make the tokens in {}", data_dir.display()))?;
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("cannot tell where the sock binary is")?
            .to_path_buf(),
    };
    let mut endpoints = addresses(&args.host, args.port, &data_dir)?;
    let services = plan(&endpoints, &data_dir, &tokens, run_as);
    let names: Vec<&'static str> = services.iter().map(|s| s.name).collect();
    let launch = Arc::new(Launch {
        bin_dir,
        config: args.config,
        run_as,
    });

    let shutdown = sock_service::shutdown_on_signals()?;
    let mut children = Vec::new();
    let started = tokio::select! {
        started = start_all(&services, &launch, &mut children) => started.map(|()| true),
        () = shutdown.cancelled() => Ok(false),
    };
    endpoints.pids = names
        .iter()
        .zip(&children)
        .filter_map(|(name, child)| Some(((*name).to_string(), child.id()?)))
        .collect();
    // Up: record where each service is. Else (an error, or Ctrl-C) stop
    // what started.
    let recorded = started.and_then(|up| {
        up.then(|| Record::new(&data_dir, endpoints.clone()))
            .transpose()
    });
    let record = match recorded {
        Ok(Some(record)) => Arc::new(record),
        stopped => {
            stop_all(&names, children.into_iter().map(Some).collect()).await;
            println!("sock is down");
            return stopped.map(|_| ExitCode::SUCCESS);
        }
    };
    println!(
        "sock is up: gateway {} (HTTP {}) · registry {} (bundles {}) · cache {} · sandboxd {}",
        endpoints.gateway,
        endpoints.gateway_http,
        endpoints.registry,
        endpoints.registry_http,
        endpoints.cache,
        endpoints.sandboxd
    );
    println!(
        "metrics: {}/metrics (admin token) · {}/metrics · {}/metrics · {}/metrics",
        endpoints.gateway_http,
        endpoints.registry_metrics,
        endpoints.cache_metrics,
        endpoints.sandboxd_metrics
    );
    println!(
        "tokens in {} (the CLI reads them from there); data in {}; Ctrl-C stops everything",
        data_dir.join(tokens::DIR).display(),
        data_dir.display()
    );

    let on_exit = if args.no_restart {
        OnExit::LeaveDown
    } else {
        OnExit::Restart
    };
    let kept = keep_up(services, children, launch, on_exit, record, shutdown).await;
    println!("sock is down");
    kept.map(|()| ExitCode::SUCCESS)
}

/// Makes the `sock` system user. Several `sock up` may start at once (the
/// tests do) and useradd refuses while another holds /etc/passwd's lock,
/// so a failure is retried a few times, and whoever made the user wins.
fn make_sock_user(
    name: &str,
    find: impl Fn() -> anyhow::Result<Option<nix::unistd::User>>,
) -> anyhow::Result<nix::unistd::User> {
    let mut last = None;
    for _ in 0..20 {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .stderr(Stdio::null())
            .status()
            .context("cannot run useradd to make the sock user")?;
        if let Some(user) = find()? {
            return Ok(user);
        }
        last = Some(status);
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "useradd could not make the sock user ({}); make it, or pass --user",
        last.map_or_else(|| "not run".to_string(), |s| s.to_string())
    )
}

/// `sock tokens`: the tokens of `data_dir`, made if missing; `owner` gets
/// them all.
pub fn tokens(data_dir: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    tokens::ensure(data_dir, sudo_user())
        .with_context(|| format!("cannot make the tokens in {}", data_dir.display()))?;
    let dir = data_dir.join(tokens::DIR);
    if let Some((uid, gid)) = owner {
        chown_tree(&dir, RunAs { uid, gid })
            .with_context(|| format!("cannot hand {} over", dir.display()))?;
    }
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The user the unprivileged services run as; `sock` is made (a system
/// user with no home and no shell) when missing.
fn service_user(name: &str) -> anyhow::Result<RunAs> {
    let find = || {
        nix::unistd::User::from_name(name).with_context(|| format!("cannot look user {name} up"))
    };
    let user = match find()? {
        Some(user) => user,
        None if name == "sock" => make_sock_user(name, find)?,
        None => bail!("there is no user {name}: make it, or pass another --user"),
    };
    if user.uid.is_root() {
        bail!("--user {name} is root: the services other than sandboxd must not run as root");
    }
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// The user who ran `sudo sock up`, who gets the admin and invoke tokens.
fn sudo_user() -> Option<(u32, u32)> {
    let id = |var: &str| std::env::var(var).ok()?.parse::<u32>().ok();
    Some((id("SUDO_UID")?, id("SUDO_GID")?)).filter(|(uid, _)| *uid != 0)
}

/// Hands the registry's and the cache's data dirs (made if missing, and
/// what an earlier run as root left in them) to `run_as`, after checking
/// that it can reach them at all.
fn give_data_dirs(data_dir: &Path, run_as: RunAs) -> anyhow::Result<()> {
    // Others must be able to pass through every dir above: a 0700 home or
    // temp dir would lock the services out of their own data.
    for dir in data_dir.ancestors() {
        let meta =
            std::fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
        let passable = meta.mode() & 0o001 != 0 || dir == data_dir;
        if !passable {
            bail!(
                "the services run as uid {} and cannot pass through {} (mode {:o}): choose a \
                 --data-dir outside it",
                run_as.uid,
                dir.display(),
                meta.mode() & 0o7777
            );
        }
    }
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot open {} to the services", data_dir.display()))?;
    for name in ["registry", "cache"] {
        let dir = data_dir.join(name);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("cannot create {}", dir.display()));
            }
            _ => {}
        }
        chown_tree(&dir, run_as).with_context(|| format!("cannot hand {} over", dir.display()))?;
    }
    Ok(())
}

/// Hands `dir` and everything below it to `run_as`, by file descriptor:
/// each dir is opened `O_NOFOLLOW` relative to the one above it, and every
/// other entry is chowned without following it, so root touches nothing
/// outside the tree, whatever links the cache's dirs (what bundles
/// unpacked to) hold or are swapped for.
fn chown_tree(dir: &Path, run_as: RunAs) -> std::io::Result<()> {
    chown_below(nix::fcntl::open(dir, DIR_FLAGS, Mode::empty())?, run_as)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn chown_below(dir: std::os::fd::OwnedFd, run_as: RunAs) -> std::io::Result<()> {
    let uid = Some(nix::unistd::Uid::from_raw(run_as.uid));
    let gid = Some(nix::unistd::Gid::from_raw(run_as.gid));
    nix::unistd::fchown(&dir, uid, gid)?;
    let mut dir = nix::dir::Dir::from_fd(dir)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let name = entry?.file_name().to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    for name in names {
        match nix::fcntl::openat(&dir, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(child) => chown_below(child, run_as)?,
            // Not a dir, or a link (to one or not): the entry itself.
            Err(Errno::ENOTDIR | Errno::ELOOP) => nix::unistd::fchownat(
                &dir,
                name.as_c_str(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_and_metrics_endpoint_gets_its_own_port() {
        let data = Path::new("/data");
        let free = addresses("127.0.0.1", 0, data).expect("free ports");
        assert_eq!(free.sandboxd, "unix:/data/sandboxd.sock");
        let mut urls = vec![
            free.gateway,
            free.registry,
            free.registry_http,
            free.cache,
            free.gateway_http,
            free.registry_metrics,
            free.cache_metrics,
            free.sandboxd_metrics,
        ];
        urls.sort();
        urls.dedup();
        assert_eq!(urls.len(), usize::from(PORTS));

        let fixed = addresses("127.0.0.1", 7070, data).expect("fixed ports");
        assert_eq!(fixed.gateway_http, "http://127.0.0.1:7075");
        assert_eq!(fixed.registry_metrics, "http://127.0.0.1:7076");
        assert_eq!(fixed.sandboxd_metrics, "http://127.0.0.1:7078");
        let err = addresses("127.0.0.1", u16::MAX - 3, data).expect_err("past the last port");
        assert!(err.to_string().contains("--port is too high"), "{err}");
    }

    #[test]
    fn each_service_is_told_its_metrics_address() {
        let endpoints = addresses("127.0.0.1", 7070, Path::new("/data")).expect("fixed ports");
        let tokens = Tokens {
            admin: "a".into(),
            invoke: "i".into(),
            node: "n".into(),
        };
        let run_as = RunAs { uid: 999, gid: 999 };
        let services = plan(&endpoints, Path::new("/data"), &tokens, Some(run_as));
        for (service, key, want) in [
            ("registry", "SOCK_REGISTRY_METRICS_LISTEN", "127.0.0.1:7076"),
            ("cache", "SOCK_CACHE_METRICS_LISTEN", "127.0.0.1:7077"),
            ("sandboxd", "SOCK_SANDBOXD_METRICS_LISTEN", "127.0.0.1:7078"),
        ] {
            let env = &services
                .iter()
                .find(|s| s.name == service)
                .expect("planned")
                .env;
            assert!(
                env.contains(&(key.to_string(), want.to_string())),
                "{service}: {env:?}"
            );
        }
    }

    #[test]
    fn only_sandboxd_keeps_root_and_every_service_gets_its_tokens() {
        let endpoints = addresses("127.0.0.1", 7070, Path::new("/data")).expect("fixed ports");
        let tokens = Tokens {
            admin: "a".into(),
            invoke: "i".into(),
            node: "n".into(),
        };
        let services = plan(
            &endpoints,
            Path::new("/data"),
            &tokens,
            Some(RunAs { uid: 999, gid: 998 }),
        );
        let has = |service: &Service, key: &str, value: &str| {
            service.env.contains(&(key.to_string(), value.to_string()))
        };
        for service in &services {
            assert_eq!(
                service.unprivileged,
                service.name != "sandboxd",
                "{}",
                service.name
            );
            let prefix = format!("SOCK_{}_", service.name.to_uppercase());
            assert!(
                has(service, &format!("{prefix}NODE_TOKEN"), "n"),
                "{}",
                service.name
            );
            assert!(
                has(service, &format!("{prefix}ADMIN_TOKEN"), "a"),
                "{}",
                service.name
            );
        }
        let by_name = |name: &str| services.iter().find(|s| s.name == name).expect("planned");
        let sandboxd = by_name("sandboxd");
        assert!(has(
            sandboxd,
            "SOCK_SANDBOXD_LISTEN",
            "unix:/data/sandboxd.sock"
        ));
        assert!(has(sandboxd, "SOCK_SANDBOXD_CLIENT_UID", "999"));
        let gateway = by_name("gateway");
        assert!(has(gateway, "SOCK_GATEWAY_INVOKE_TOKEN", "i"));
        assert!(has(
            gateway,
            "SOCK_GATEWAY_SANDBOXD_ADDR",
            "unix:/data/sandboxd.sock"
        ));
    }

    /// Root hands the cache's dirs over; a link planted in them (to a file
    /// or a dir outside) must never make root chown what it points at.
    #[test]
    fn handing_a_tree_over_never_follows_a_link_out_of_it() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("SOCK_TEST_ALLOW_SKIP").is_ok_and(|v| v == "1"),
                "chowning needs root; set SOCK_TEST_ALLOW_SKIP=1 to skip"
            );
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("secret"), "s").expect("write");
        let tree = root.path().join("cache");
        std::fs::create_dir_all(tree.join("code/f/1")).expect("mkdir");
        std::fs::write(tree.join("code/f/1/f.py"), "x").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), tree.join("code/f/1/to-file"))
            .expect("link");
        std::os::unix::fs::symlink(&outside, tree.join("code/to-dir")).expect("link");
        let run_as = RunAs {
            uid: 4242,
            gid: 4243,
        };
        chown_tree(&tree, run_as).expect("handed over");
        let owner = |p: &Path| {
            let meta = std::fs::symlink_metadata(p).expect("stat");
            (meta.uid(), meta.gid())
        };
        for inside in [
            "",
            "code",
            "code/f/1",
            "code/f/1/f.py",
            "code/f/1/to-file",
            "code/to-dir",
        ] {
            assert_eq!(owner(&tree.join(inside)), (4242, 4243), "{inside}");
        }
        assert_eq!(owner(&outside), (0, 0));
        assert_eq!(owner(&outside.join("secret")), (0, 0));
    }

    #[test]
    fn a_data_dir_the_services_cannot_reach_is_refused() {
        let locked = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(locked.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let data = locked.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let err = give_data_dirs(&data, RunAs { uid: 999, gid: 999 }).expect_err("locked out");
        assert!(err.to_string().contains("cannot pass through"), "{err}");
    }
}
