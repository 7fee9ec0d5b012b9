//! `/proc` for a sandbox's pid namespace, with what a function must not
//! read or write masked as Docker masks it (moby's `oci/defaults.go`):
//! files the kernel exposes about the host (kcore, keys, timer_list,
//! sched_debug, …) become `/dev/null` or an empty read-only dir, and the
//! knobs (`/proc/sys`, `sysrq-trigger`, …) are read-only.
//!
//! A zygote's own `/proc` stays unmasked: the kernel lets a process in a
//! user namespace mount a new proc only while a fully visible one is
//! mounted in its mount namespace, and the zygote's children each mount
//! their own. The zygote runs as root of a user namespace mapped to an
//! unprivileged host uid, so what the masks hide needs host privileges to
//! use anyway; they are there for the function, which runs code nobody
//! vetted.
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

use crate::lockdown::{LockdownError, sys};

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];

const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What every proc mount of ours is, and what its binds must keep: a
/// mount in a user namespace cannot drop flags of the mount it copies.
fn proc_flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Whether the function may see everything in `/proc` (a zygote, whose
/// children mount their own) or only what is safe (a function).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proc {
    Unmasked,
    Masked,
}

/// Mounts `/proc` for the pid namespace the caller is pid 1 of.
pub(crate) fn mount_proc(view: Proc) -> Result<(), LockdownError> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        proc_flags(),
        None::<&str>,
    )
    .map_err(sys("mount /proc"))?;
    if view == Proc::Masked {
        MASKED.iter().try_for_each(|path| mask(Path::new(path)))?;
        READ_ONLY
            .iter()
            .try_for_each(|path| read_only(Path::new(path)))?;
    }
    Ok(())
}

/// A file becomes `/dev/null`; a dir an empty read-only tmpfs.
fn mask(path: &Path) -> Result<(), LockdownError> {
    let Ok(meta) = std::fs::metadata(path) else {
        // This kernel has no such file: nothing to hide.
        return Ok(());
    };
    let done = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            proc_flags() | MsFlags::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    done.map_err(sys("mask a /proc path"))
}

fn read_only(path: &Path) -> Result<(), LockdownError> {
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Err(Errno::ENOENT) => return Ok(()),
        done => done.map_err(sys("bind a /proc path"))?,
    }
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | proc_flags(),
        None::<&str>,
    )
    .map_err(sys("make a /proc path read-only"))
}
