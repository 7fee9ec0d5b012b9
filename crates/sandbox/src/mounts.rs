//! The sandbox's root file system.
//!
//! `plan` decides *what* the root holds (pure, unit-tested against a fake
//! host); `build_root` carries a plan out inside the init's new mount
//! namespace: a tmpfs root on a fixed empty directory, read-only binds of
//! the host's `/usr`, `/lib*`, an `/etc` subset, the code and the runtime, a
//! size-limited `/tmp`, a minimal `/dev`, then `pivot_root` and a read-only
//! remount of `/`. All of it is private to the namespace: the host, and
//! other sandboxes using the same mount point, never see it.
//!
//! Directories that untrusted code could have written (the cache's code and
//! package dirs, the installer's) are bound by file descriptor: opened once
//! with no symlink allowed anywhere on their path ([`open_untrusted_dir`]),
//! then mounted from that fd, so a symlink planted on the way can never make
//! root mount a host dir of its choosing.
//!
//! In detail: the root is a tmpfs on `<data_dir>/root`, private to the
//! namespace, then `pivot_root` and read-only; `/tmp` a tmpfs of `tmp_mb`;
//! `/dev` holds null, zero, full, random and urandom. Code, package and
//! installer dirs (written by the cache or pip, never by sandboxd) are
//! opened with `openat2(O_PATH, RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)`,
//! beneath an fd of `cache_data_dir` (`RESOLVE_BENEATH`) when below it,
//! then bound by `open_tree(OPEN_TREE_CLONE)` + `move_mount` from that fd,
//! in fresh and forked roots alike. A symlink anywhere on the path (or `..`
//! out of the cache dir) is refused, "… is or passes through a symlink":
//! sandboxd checks before a start, for the caller's error (`platform`),
//! and the mount checks again. At start, mounts a crashed run left below
//! the data dir are detached.
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
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
pub struct RootSpec<'a> {
    /// None for a zygote, which serves no function.
    pub code_dir: Option<&'a Path>,
    pub runtime_dir: &'a Path,
    pub package_dirs: &'a [PathBuf],
    pub tmp_mb: u64,
    /// More host dirs: (host dir, sandbox path, writable). The installer's.
    pub extra: &'a [(PathBuf, String, bool)],
    /// The cache's data dir (absolute, from the operator's config): code,
    /// package and extra dirs below it are opened beneath it.
    pub cache_data_dir: Option<&'a Path>,
}

/// A host entry as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Dir,
    File,
    Symlink(PathBuf),
}

/// What the planner may ask about the host.
pub trait HostView {
    /// The entry at `path`, not following a final symlink.
    fn entry(&self, path: &Path) -> Option<Entry>;
    /// Names in a directory.
    fn list(&self, dir: &Path) -> Vec<String>;
}

/// The real host.
pub struct RealHost;

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
pub enum Step {
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
    /// Bind a directory that untrusted code could have written, by fd
    /// ([`open_untrusted_dir`], beneath `base` when set), then remount it
    /// with `flags`.
    UntrustedBind {
        src: PathBuf,
        base: Option<PathBuf>,
        dest: PathBuf,
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

pub fn plan(spec: &RootSpec<'_>, host: &dyn HostView) -> Vec<Step> {
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

    // Every dir the cache or the installer wrote; sandboxd made none of them.
    let untrusted = |src: &Path, dest: &str, flags: MsFlags| Step::UntrustedBind {
        src: src.to_path_buf(),
        base: spec
            .cache_data_dir
            .filter(|base| src.starts_with(base))
            .map(Path::to_path_buf),
        dest: dest.trim_start_matches('/').into(),
        flags,
    };
    if let Some(code_dir) = spec.code_dir {
        steps.push(untrusted(code_dir, CODE_DIR, ro()));
    }
    for (i, dir) in spec.package_dirs.iter().enumerate() {
        steps.push(untrusted(dir, &package_dir(i), ro()));
    }
    // sandboxd's own data dir, which nothing untrusted writes.
    steps.push(Step::Bind {
        src: spec.runtime_dir.to_path_buf(),
        dest: RUNTIME_DIR.trim_start_matches('/').into(),
        file: false,
        flags: ro(),
    });
    for (src, dest, writable) in spec.extra {
        let flags = match writable {
            true => MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            false => ro(),
        };
        steps.push(untrusted(src, dest, flags));
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
pub fn package_dir(i: usize) -> String {
    format!("{PACKAGES_DIR}/{i}")
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
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
    #[error("{path} is or passes through a symlink")]
    Symlink { path: PathBuf },
    #[error("{path} leads outside {base}")]
    Escapes { path: PathBuf, base: PathBuf },
}

impl MountError {
    /// Whether the path was refused as unsafe to mount, rather than
    /// missing or failing.
    pub fn is_unsafe_path(&self) -> bool {
        matches!(
            self,
            MountError::Symlink { .. } | MountError::Escapes { .. }
        )
    }
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

/// Opens `path`, a directory that untrusted code could have written, as an
/// `O_PATH` fd, refusing any symlink (or /proc magic link) on the way:
/// root resolves such a path once, here, and mounts from the fd. If it is
/// below `base` (trusted, opened as configured), the rest resolves beneath
/// it, so no `..` leaves it either.
pub fn open_untrusted_dir(path: &Path, base: Option<&Path>) -> Result<OwnedFd, MountError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let below = base.and_then(|base| Some((base, path.strip_prefix(base).ok()?)));
    let opened = match below {
        Some((base, rel)) => {
            let dir = nix::fcntl::open(
                base,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(sys("open", base))?;
            let rel = match rel.as_os_str().is_empty() {
                true => Path::new("."),
                false => rel,
            };
            openat2(
                dir,
                rel,
                how.resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS,
                ),
            )
        }
        None => openat2(AT_FDCWD, path, how),
    };
    opened.map_err(|errno| match errno {
        nix::errno::Errno::ELOOP => MountError::Symlink { path: path.into() },
        nix::errno::Errno::EXDEV => MountError::Escapes {
            path: path.into(),
            base: base.unwrap_or(Path::new("/")).into(),
        },
        errno => sys("openat2", path)(errno),
    })
}

/// Binds the directory `src` is open on at `dest`: a clone of just that
/// mount (`open_tree`) moved into place, never a path looked up again.
#[allow(unsafe_code)]
fn bind_fd(src: BorrowedFd<'_>, src_path: &Path, dest: &Path) -> Result<(), MountError> {
    let tree = open_tree(
        src,
        c"",
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint,
    )
    .map_err(sys("open_tree", src_path))?;
    let dest_c = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
        .map_err(|_| sys("move_mount", dest)(nix::errno::Errno::EINVAL))?;
    // SAFETY: both paths are NUL-terminated and outlive the call; the fds
    // are open for its whole duration.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dest_c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(sys("move_mount", dest)(nix::errno::Errno::last()));
    }
    Ok(())
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
        Step::UntrustedBind {
            src,
            base,
            dest,
            flags,
        } => {
            // Opened before anything is made for it: a refused dir leaves
            // no trace in the root.
            let fd = open_untrusted_dir(src, base.as_deref())?;
            let dest = root.join(dest);
            mkparent(&dest)?;
            mkdir(&dest, 0o755)?;
            bind_fd(fd.as_fd(), src, &dest)?;
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

/// Makes every mount of the caller's (new) mount namespace private, so
/// nothing mounted in it propagates back to the namespace it was copied
/// from.
pub(crate) fn make_private() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Makes `/` rprivate in the caller's (fresh) mount namespace, mounts the
/// root tmpfs on `mount_point` and carries out `steps` in it: the part that
/// attached and detached roots share.
fn populate_root(mount_point: &Path, steps: &[Step]) -> Result<(), MountError> {
    // Nothing below may propagate back to the host's mounts.
    make_private().map_err(sys("make rprivate", Path::new("/")))?;
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

/// Builds a root like `build_root` but leaves it detached: a mount tree
/// of its own (`open_tree(OPEN_TREE_CLONE)`), attached to no mount
/// namespace, held by the returned fd. A zygote's child `fchdir`s into it
/// and `chroot`s; `..` stops at its top, so the fd leads nowhere else on
/// the host. The tree goes away with the last process using it.
///
/// The mounts are made in a private mount namespace of a short-lived
/// thread, so the host's table never sees them and a crash leaves nothing.
pub fn detached_root(mount_point: &Path, steps: Vec<Step>) -> Result<OwnedFd, MountError> {
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
            let path = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes())
                .map_err(|_| sys("open_tree", &mount_point)(nix::errno::Errno::EINVAL))?;
            open_tree(
                AT_FDCWD,
                &path,
                libc::OPEN_TREE_CLONE
                    | libc::OPEN_TREE_CLOEXEC
                    | libc::AT_RECURSIVE as libc::c_uint,
            )
            .map_err(sys("open_tree", &mount_point))
        })
        .map_err(io("spawn thread for", Path::new("detached root")))?
        .join()
        .map_err(|_| MountError::Io {
            what: "thread panicked building",
            path: PathBuf::from("detached root"),
            source: std::io::Error::other("panic"),
        })?
}

/// `open_tree(2)`: a new fd on the mount at `dirfd`/`path` (with
/// `OPEN_TREE_CLONE`, a detached copy of it).
#[allow(unsafe_code)]
fn open_tree(dirfd: BorrowedFd<'_>, path: &CStr, flags: libc::c_uint) -> nix::Result<OwnedFd> {
    // SAFETY: open_tree reads a NUL-terminated path that outlives the call,
    // from a directory fd open for its duration, and returns a new fd,
    // owned by nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dirfd.as_raw_fd(), path.as_ptr(), flags) };
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

/// Detaches every mount at or below `dir` in sandboxd's own mount
/// namespace (left by a crashed run); returns how many. Sandbox roots are
/// normally private to each sandbox's namespace, so this finds nothing.
pub fn unmount_below(dir: &Path) -> usize {
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
        let packages = [
            PathBuf::from("/cache/pkgs/requests"),
            PathBuf::from("/elsewhere/pkgs/six"),
        ];
        plan(
            &RootSpec {
                code_dir: Some(Path::new("/cache/code/echo/3")),
                runtime_dir: Path::new("/data/runtime"),
                package_dirs: &packages,
                tmp_mb: 64,
                extra: &[("/cache/out".into(), "/out".into(), true)],
                cache_data_dir: Some(Path::new("/cache")),
            },
            &FakeHost::debian(),
        )
    }

    fn dest_of(step: &Step) -> &Path {
        match step {
            Step::Dir { dest, .. }
            | Step::Symlink { dest, .. }
            | Step::Bind { dest, .. }
            | Step::UntrustedBind { dest, .. }
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
        assert!(steps.contains(&Step::Bind {
            src: "/data/runtime".into(),
            dest: "sock".into(),
            file: false,
            flags: ro(),
        }));
        for (src, base, dest) in [
            ("/cache/code/echo/3", Some("/cache"), "code"),
            ("/cache/pkgs/requests", Some("/cache"), "packages/0"),
            ("/elsewhere/pkgs/six", None, "packages/1"),
        ] {
            assert!(
                steps.contains(&Step::UntrustedBind {
                    src: src.into(),
                    base: base.map(PathBuf::from),
                    dest: dest.into(),
                    flags: ro(),
                }),
                "{dest} missing from {steps:#?}"
            );
        }
    }

    #[test]
    fn the_installers_dirs_are_bound_by_fd_too() {
        assert!(debian_plan().contains(&Step::UntrustedBind {
            src: "/cache/out".into(),
            base: Some("/cache".into()),
            dest: "out".into(),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        }));
    }

    /// `<tmp>/base/code/f` with a host dir `<tmp>/secret` beside it.
    fn cache_tree() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base");
        std::fs::create_dir_all(base.join("code/f")).expect("mkdir code");
        std::fs::create_dir(tmp.path().join("secret")).expect("mkdir secret");
        (tmp, base)
    }

    fn refused(path: &Path, base: Option<&Path>) -> MountError {
        let err = open_untrusted_dir(path, base).expect_err("refused");
        assert!(err.is_unsafe_path(), "{err}");
        err
    }

    #[test]
    fn untrusted_dirs_open_with_or_without_a_base() {
        let (_tmp, base) = cache_tree();
        let code = base.join("code/f");
        for base in [None, Some(base.as_path())] {
            open_untrusted_dir(&code, base).expect("a plain dir opens");
        }
        open_untrusted_dir(&base, Some(&base)).expect("the base itself opens");
    }

    #[test]
    fn a_symlink_anywhere_on_an_untrusted_path_is_refused() {
        let (tmp, base) = cache_tree();
        let secret = tmp.path().join("secret");
        std::os::unix::fs::symlink(&secret, base.join("code/g")).expect("final link");
        std::os::unix::fs::symlink(&secret, base.join("link")).expect("middle link");
        std::fs::create_dir(secret.join("1")).expect("mkdir secret/1");
        for path in [base.join("code/g"), base.join("link/1")] {
            for base in [None, Some(base.as_path())] {
                let err = refused(&path, base);
                assert_eq!(
                    err.to_string(),
                    format!("{} is or passes through a symlink", path.display())
                );
            }
        }
        // Not even a link that stays inside the base.
        std::os::unix::fs::symlink("f", base.join("code/h")).expect("relative link");
        refused(&base.join("code/h"), Some(&base));
    }

    #[test]
    fn dot_dot_cannot_leave_the_base() {
        let (_tmp, base) = cache_tree();
        let err = refused(&base.join("code/../../secret"), Some(&base));
        assert!(err.to_string().contains("leads outside"), "{err}");
    }

    #[test]
    fn a_symlink_in_the_trusted_base_itself_is_followed() {
        let (tmp, base) = cache_tree();
        let alias = tmp.path().join("alias");
        std::os::unix::fs::symlink(&base, &alias).expect("alias of the base");
        open_untrusted_dir(&alias.join("code/f"), Some(&alias)).expect("opens beneath the alias");
        refused(&alias.join("code/f"), None);
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
