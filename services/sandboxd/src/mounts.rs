//! The sandbox's root file system.
//!
//! `plan` decides *what* the root holds (pure, unit-tested against a fake
//! host); `build_root` carries a plan out inside the init's new mount
//! namespace: a tmpfs root on a fixed empty directory, read-only binds of
//! the host's `/usr`, `/lib*`, an `/etc` subset, the code and the runtime, a
//! size-limited `/tmp`, a minimal `/dev`, then `pivot_root` and a read-only
//! remount of `/`. All of it is private to the namespace: the host, and
//! other sandboxes using the same mount point, never see it.
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// Host top-level entries bound read-only (or recreated as symlinks, as
/// Debian 12 has `/bin -> usr/bin` and friends).
const SYSTEM_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// The part of `/etc` programs need. Not shadow, not ssl/private. Plus
/// every `/etc/python3*`.
const ETC_ENTRIES: [&str; 10] = [
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "ld.so.cache",
    "localtime",
    "mime.types",
    "ssl/certs",
    "ssl/openssl.cnf",
];
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
const DEV_LINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];
/// The root tmpfs only holds mount points and symlinks.
const ROOT_TMPFS: &str = "size=1m,nr_inodes=4096,mode=0755";
const DEV_TMPFS: &str = "size=64k,nr_inodes=64,mode=0755";

/// Where things appear inside the sandbox.
pub(crate) const CODE_DIR: &str = "/code";
pub(crate) const RUNTIME_DIR: &str = "/sock";
pub(crate) const PACKAGES_DIR: &str = "/packages";

/// What the root holds, from the sandbox's point of view.
#[derive(Debug)]
pub(crate) struct RootSpec<'a> {
    /// None for a zygote, which serves no function.
    pub code_dir: Option<&'a Path>,
    pub runtime_dir: &'a Path,
    pub package_dirs: &'a [PathBuf],
    pub tmp_mb: u64,
    /// More host dirs: (host dir, sandbox path, writable). The installer's.
    pub extra: &'a [(PathBuf, String, bool)],
}

/// A host entry as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Entry {
    Dir,
    File,
    Symlink(PathBuf),
}

/// What the planner may ask about the host.
pub(crate) trait HostView {
    /// The entry at `path`, not following a final symlink.
    fn entry(&self, path: &Path) -> Option<Entry>;
    /// Names in a directory.
    fn list(&self, dir: &Path) -> Vec<String>;
}

/// The real host.
pub(crate) struct RealHost;

impl HostView for RealHost {
    fn entry(&self, path: &Path) -> Option<Entry> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if meta.file_type().is_symlink() {
            std::fs::read_link(path).ok().map(Entry::Symlink)
        } else if meta.is_dir() {
            Some(Entry::Dir)
        } else if meta.is_file() || meta.file_type().is_char_device() {
            // Device nodes are bound like files, onto an empty file.
            Some(Entry::File)
        } else {
            None
        }
    }

    fn list(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// One step of building the root; `dest` paths are relative to it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    Dir {
        dest: PathBuf,
        mode: u32,
    },
    Symlink {
        dest: PathBuf,
        target: PathBuf,
    },
    /// Bind `src` (a directory or a file, per `file`), then remount the
    /// bind with `flags` (MS_RDONLY for everything but device nodes).
    Bind {
        src: PathBuf,
        dest: PathBuf,
        file: bool,
        flags: MsFlags,
    },
    Tmpfs {
        dest: PathBuf,
        options: String,
        flags: MsFlags,
    },
    /// Remount an existing mount read-only once its contents are in place.
    ReadOnly {
        dest: PathBuf,
        flags: MsFlags,
    },
}

fn ro() -> MsFlags {
    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// Binds `host` (under `/`) at the same place in the root, or recreates it
/// when it is a symlink.
fn mirror(host: &dyn HostView, rel: &str) -> Option<Step> {
    let src = Path::new("/").join(rel);
    Some(match host.entry(&src)? {
        Entry::Symlink(target) => Step::Symlink {
            dest: rel.into(),
            target,
        },
        Entry::Dir => Step::Bind {
            src,
            dest: rel.into(),
            file: false,
            flags: ro(),
        },
        Entry::File => Step::Bind {
            src,
            dest: rel.into(),
            file: true,
            flags: ro(),
        },
    })
}

pub(crate) fn plan(spec: &RootSpec<'_>, host: &dyn HostView) -> Vec<Step> {
    let mut steps = Vec::new();
    steps.extend(SYSTEM_DIRS.iter().filter_map(|d| mirror(host, d)));

    steps.push(Step::Dir {
        dest: "etc".into(),
        mode: 0o755,
    });
    let python_etc = host
        .list(Path::new("/etc"))
        .into_iter()
        .filter(|n| n.starts_with("python3"));
    let etc: Vec<String> = ETC_ENTRIES
        .iter()
        .map(|e| e.to_string())
        .chain(python_etc)
        .collect();
    steps.extend(etc.iter().filter_map(|e| mirror(host, &format!("etc/{e}"))));

    let bind_ro = |src: &Path, dest: &str| Step::Bind {
        src: src.to_path_buf(),
        dest: dest.trim_start_matches('/').into(),
        file: false,
        flags: ro(),
    };
    if let Some(code_dir) = spec.code_dir {
        steps.push(bind_ro(code_dir, CODE_DIR));
    }
    for (i, dir) in spec.package_dirs.iter().enumerate() {
        steps.push(bind_ro(dir, &package_dir(i)));
    }
    steps.push(bind_ro(spec.runtime_dir, RUNTIME_DIR));
    for (src, dest, writable) in spec.extra {
        let mut step = bind_ro(src, dest);
        if let (true, Step::Bind { flags, .. }) = (*writable, &mut step) {
            *flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        }
        steps.push(step);
    }

    steps.push(Step::Tmpfs {
        dest: "tmp".into(),
        options: format!("size={}m,mode=1777", spec.tmp_mb),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    });

    let dev_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    steps.push(Step::Tmpfs {
        dest: "dev".into(),
        options: DEV_TMPFS.into(),
        flags: dev_flags,
    });
    for dev in DEVICES {
        let src = Path::new("/dev").join(dev);
        if host.entry(&src).is_some() {
            steps.push(Step::Bind {
                src,
                dest: Path::new("dev").join(dev),
                file: true,
                flags: dev_flags,
            });
        }
    }
    for (name, target) in DEV_LINKS {
        steps.push(Step::Symlink {
            dest: Path::new("dev").join(name),
            target: target.into(),
        });
    }
    steps.push(Step::ReadOnly {
        dest: "dev".into(),
        flags: dev_flags,
    });

    // Mounted by the runtime's pid-1 parent once it is in the pid namespace.
    steps.push(Step::Dir {
        dest: "proc".into(),
        mode: 0o555,
    });
    steps
}

/// Where the i-th package dir appears inside the sandbox.
pub(crate) fn package_dir(i: usize) -> String {
    format!("{PACKAGES_DIR}/{i}")
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MountError {
    #[error("{syscall} {path}: {source}")]
    Sys {
        syscall: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn sys(syscall: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> MountError {
    let path = path.to_path_buf();
    move |source| MountError::Sys {
        syscall,
        path,
        source,
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MountError {
    let path = path.to_path_buf();
    move |source| MountError::Io { what, path, source }
}

fn mkdir(path: &Path, mode: u32) -> Result<(), MountError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(io("mkdir", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", path))
}

fn mkparent(path: &Path) -> Result<(), MountError> {
    match path.parent() {
        Some(parent) if !parent.exists() => mkdir(parent, 0o755),
        _ => Ok(()),
    }
}

fn remount(dest: &Path, flags: MsFlags) -> Result<(), MountError> {
    mount(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(sys("remount", dest))
}

fn apply(step: &Step, root: &Path) -> Result<(), MountError> {
    match step {
        Step::Dir { dest, mode } => mkdir(&root.join(dest), *mode),
        Step::Symlink { dest, target } => {
            let dest = root.join(dest);
            mkparent(&dest)?;
            std::os::unix::fs::symlink(target, &dest).map_err(io("symlink", &dest))
        }
        Step::Bind {
            src,
            dest,
            file,
            flags,
        } => {
            let dest = root.join(dest);
            mkparent(&dest)?;
            if *file {
                std::fs::File::create(&dest).map_err(io("create mount point", &dest))?;
            } else {
                mkdir(&dest, 0o755)?;
            }
            mount(
                Some(src.as_path()),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind mount", src))?;
            remount(&dest, *flags)
        }
        Step::Tmpfs {
            dest,
            options,
            flags,
        } => {
            let dest = root.join(dest);
            mkdir(&dest, 0o755)?;
            mount(
                Some("tmpfs"),
                &dest,
                Some("tmpfs"),
                *flags,
                Some(options.as_str()),
            )
            .map_err(sys("mount tmpfs", &dest))
        }
        Step::ReadOnly { dest, flags } => remount(&root.join(dest), MsFlags::MS_RDONLY | *flags),
    }
}

/// Builds the sandbox root on `mount_point` and makes it `/`. Call only in
/// a fresh mount namespace: it changes the calling process's root.
pub(crate) fn build_root(mount_point: &Path, steps: &[Step]) -> Result<(), MountError> {
    populate_root(mount_point, steps)?;
    pivot(mount_point)?;
    remount(Path::new("/"), ro())
}

/// Makes `/` rprivate in the caller's (fresh) mount namespace, mounts the
/// root tmpfs on `mount_point` and carries out `steps` in it: the part that
/// attached and detached roots share.
fn populate_root(mount_point: &Path, steps: &[Step]) -> Result<(), MountError> {
    // Nothing below may propagate back to the host's mounts.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make rprivate", Path::new("/")))?;
    mount(
        Some("tmpfs"),
        mount_point,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(ROOT_TMPFS),
    )
    .map_err(sys("mount root tmpfs", mount_point))?;
    for step in steps {
        apply(step, mount_point)?;
    }
    Ok(())
}

/// Builds a root like [`build_root`] but leaves it detached: a mount tree
/// of its own (`open_tree(OPEN_TREE_CLONE)`), attached to no mount
/// namespace, held by the returned fd. A zygote's child `fchdir`s into it
/// and `chroot`s; `..` stops at its top, so the fd leads nowhere else on
/// the host. The tree goes away with the last process using it.
///
/// The mounts are made in a private mount namespace of a short-lived
/// thread, so the host's table never sees them and a crash leaves nothing.
pub(crate) fn detached_root(mount_point: &Path, steps: Vec<Step>) -> Result<OwnedFd, MountError> {
    let mount_point = mount_point.to_path_buf();
    std::thread::Builder::new()
        .name("sock-root".into())
        .spawn(move || {
            // Unsharing the mount namespace of one thread also unshares
            // its fs context; the rest of sandboxd keeps the host's.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(sys("unshare mount namespace", &mount_point))?;
            populate_root(&mount_point, &steps)?;
            remount(&mount_point, ro())?;
            open_tree_clone(&mount_point).map_err(sys("open_tree", &mount_point))
        })
        .map_err(io("spawn thread for", Path::new("detached root")))?
        .join()
        .map_err(|_| MountError::Io {
            what: "thread panicked building",
            path: PathBuf::from("detached root"),
            source: std::io::Error::other("panic"),
        })?
}

#[allow(unsafe_code)]
fn open_tree_clone(path: &Path) -> nix::Result<OwnedFd> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: open_tree reads a NUL-terminated path that outlives the call
    // and returns a new fd, owned by nothing else.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    let fd = std::os::fd::RawFd::try_from(fd).map_err(|_| nix::errno::Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `new_root` the root and detaches the old one, so no path leads
/// back to the host's files.
fn pivot(new_root: &Path) -> Result<(), MountError> {
    nix::unistd::chdir(new_root).map_err(sys("chdir", new_root))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; the
    // detach below then removes it without needing a directory for it.
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root", new_root))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach old root", new_root))?;
    nix::unistd::chdir("/").map_err(sys("chdir", Path::new("/")))
}

/// Mounts `/proc` for the pid namespace the caller is in.
pub(crate) fn mount_proc() -> Result<(), MountError> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("mount proc", Path::new("/proc")))
}

/// Detaches every mount at or below `dir` in sandboxd's own mount
/// namespace (left by a crashed run); returns how many. Sandbox roots are
/// normally private to each sandbox's namespace, so this finds nothing.
pub(crate) fn unmount_below(dir: &Path) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut points = mount_points_below(&table, dir);
    // Deepest first, so parents are not busy.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
        .iter()
        .filter(|p| umount2(p.as_path(), MntFlags::MNT_DETACH).is_ok())
        .count()
}

fn mount_points_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape(point)))
        // The dir itself may be a mount point of its own (a volume in a
        // container): that one is the host's, not a leftover of ours.
        .filter(|point| point.starts_with(dir) && point != dir)
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A Debian 12-like host: merged /usr, symlinked /etc/localtime.
    struct FakeHost(HashMap<PathBuf, Entry>);

    impl FakeHost {
        fn debian() -> FakeHost {
            let mut m = HashMap::new();
            m.insert("/usr".into(), Entry::Dir);
            m.insert("/bin".into(), Entry::Symlink("usr/bin".into()));
            m.insert("/lib".into(), Entry::Symlink("usr/lib".into()));
            m.insert("/lib64".into(), Entry::Symlink("usr/lib64".into()));
            m.insert("/etc/passwd".into(), Entry::File);
            m.insert("/etc/shadow".into(), Entry::File);
            m.insert("/etc/hosts".into(), Entry::File);
            m.insert(
                "/etc/localtime".into(),
                Entry::Symlink("/usr/share/zoneinfo/Etc/UTC".into()),
            );
            m.insert("/etc/ssl/certs".into(), Entry::Dir);
            m.insert("/etc/ssl/private".into(), Entry::Dir);
            m.insert("/etc/python3.11".into(), Entry::Dir);
            m.insert("/dev/null".into(), Entry::File);
            m.insert("/dev/urandom".into(), Entry::File);
            FakeHost(m)
        }
    }

    impl HostView for FakeHost {
        fn entry(&self, path: &Path) -> Option<Entry> {
            self.0.get(path).cloned()
        }
        fn list(&self, dir: &Path) -> Vec<String> {
            let mut names: Vec<String> = self
                .0
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name()?.to_str().map(String::from))
                .collect();
            names.sort();
            names
        }
    }

    fn debian_plan() -> Vec<Step> {
        let packages = [PathBuf::from("/cache/pkgs/requests")];
        plan(
            &RootSpec {
                code_dir: Some(Path::new("/cache/code/echo/3")),
                runtime_dir: Path::new("/data/runtime"),
                package_dirs: &packages,
                tmp_mb: 64,
                extra: &[],
            },
            &FakeHost::debian(),
        )
    }

    fn dest_of(step: &Step) -> &Path {
        match step {
            Step::Dir { dest, .. }
            | Step::Symlink { dest, .. }
            | Step::Bind { dest, .. }
            | Step::Tmpfs { dest, .. }
            | Step::ReadOnly { dest, .. } => dest,
        }
    }

    #[test]
    fn leftover_mounts_are_found_below_the_data_dir_only() {
        // 39: the data dir is itself a volume (as in a container): not ours.
        let table = "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
39 22 8:2 / /data/sock rw - ext4 /dev/sdb1 rw
40 39 0:50 / /data/sock/root rw - tmpfs tmpfs rw
41 40 8:1 /usr /data/sock/root/usr ro - ext4 /dev/sda1 rw
42 22 0:51 / /data/sock\\040x/root rw - tmpfs tmpfs rw
43 22 0:52 / /data/other rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points_below(table, Path::new("/data/sock")),
            [
                PathBuf::from("/data/sock/root"),
                PathBuf::from("/data/sock/root/usr")
            ]
        );
        assert_eq!(
            mount_points_below(table, Path::new("/data/sock x")),
            [PathBuf::from("/data/sock x/root")]
        );
    }

    #[test]
    fn host_symlinks_are_recreated_and_dirs_bound_read_only() {
        let steps = debian_plan();
        assert!(steps.contains(&Step::Symlink {
            dest: "bin".into(),
            target: "usr/bin".into()
        }));
        assert!(steps.contains(&Step::Bind {
            src: "/usr".into(),
            dest: "usr".into(),
            file: false,
            flags: ro(),
        }));
        assert!(steps.contains(&Step::Symlink {
            dest: "etc/localtime".into(),
            target: "/usr/share/zoneinfo/Etc/UTC".into()
        }));
        // Missing on this host, so absent from the root.
        assert!(!steps.iter().any(|s| dest_of(s) == Path::new("sbin")));
    }

    #[test]
    fn secrets_of_etc_stay_out() {
        let steps = debian_plan();
        let dests: Vec<&Path> = steps.iter().map(dest_of).collect();
        assert!(dests.contains(&Path::new("etc/passwd")));
        assert!(dests.contains(&Path::new("etc/ssl/certs")));
        assert!(dests.contains(&Path::new("etc/python3.11")));
        assert!(!dests.contains(&Path::new("etc/shadow")));
        assert!(!dests.iter().any(|d| d.starts_with("etc/ssl/private")));
    }

    #[test]
    fn code_packages_and_runtime_are_read_only() {
        let steps = debian_plan();
        for (src, dest) in [
            ("/cache/code/echo/3", "code"),
            ("/cache/pkgs/requests", "packages/0"),
            ("/data/runtime", "sock"),
        ] {
            assert!(
                steps.contains(&Step::Bind {
                    src: src.into(),
                    dest: dest.into(),
                    file: false,
                    flags: ro(),
                }),
                "{dest} missing from {steps:#?}"
            );
        }
    }

    #[test]
    fn tmp_is_sized_and_dev_is_minimal_and_sealed() {
        let steps = debian_plan();
        assert!(steps.contains(&Step::Tmpfs {
            dest: "tmp".into(),
            options: "size=64m,mode=1777".into(),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        }));
        let devices: Vec<&Path> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind {
                    src, file: true, ..
                } if src.starts_with("/dev") => Some(src.as_path()),
                _ => None,
            })
            .collect();
        assert_eq!(devices, [Path::new("/dev/null"), Path::new("/dev/urandom")]);
        // /dev turns read-only only after its nodes and links are in place.
        let sealed = steps
            .iter()
            .position(|s| matches!(s, Step::ReadOnly { dest, .. } if dest == Path::new("dev")))
            .expect("dev is remounted read-only");
        assert!(
            steps[sealed + 1..]
                .iter()
                .all(|s| !dest_of(s).starts_with("dev"))
        );
    }
}
