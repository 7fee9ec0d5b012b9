//! The plumbing of one fork: the child's socket, its output pipes and its
//! cgroup's `cgroup.procs` files, made by sandboxd and sent to the zygote
//! (with the child's root, see [`crate::zygote`]) in one SCM_RIGHTS
//! message ahead of the fork request.
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use sock_sandbox::cgroups::SandboxCgroup;
use sock_sandbox::protocol::{self, Header};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::error::{Error, io};

fn spawn_err(program: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Spawn {
        program: program.into(),
        source,
    }
}

/// The cgroup's `cgroup.procs` files, open for the child to write itself in.
pub(crate) fn cgroup_files(cgroup: &SandboxCgroup) -> Result<Vec<OwnedFd>, Error> {
    cgroup
        .dirs()
        .iter()
        .map(|dir| {
            let path = dir.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map(OwnedFd::from)
                .map_err(io("cannot open", &path))
        })
        .collect()
}

/// Our end (async) and the child's end of its socket.
pub(crate) fn socketpair() -> Result<(UnixStream, OwnedFd), Error> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err("socketpair"))?;
    ours.set_nonblocking(true)
        .map_err(spawn_err("socketpair"))?;
    let ours = UnixStream::from_std(ours).map_err(spawn_err("socketpair"))?;
    Ok((ours, theirs.into()))
}

/// Pipes for the child's stdout and stderr: its ends, then ours.
#[allow(clippy::type_complexity)]
pub(crate) fn output_pipes() -> Result<((OwnedFd, OwnedFd), (OwnedFd, OwnedFd)), Error> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Spawn {
            program: "pipe".into(),
            source: e.into(),
        })
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    Ok(((out_w, err_w), (out_r, err_r)))
}

/// One byte carrying `fds`, then `header`. Our copies of the fds close
/// after: a child's socket must close when the child (or, should the fork
/// fail, the zygote) closes its own.
pub(crate) async fn send(
    stream: &mut UnixStream,
    fds: Vec<OwnedFd>,
    header: &Header,
) -> Result<(), String> {
    let raw: Vec<_> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let fd = stream.as_raw_fd();
    stream
        .async_io(Interest::WRITABLE, || {
            sendmsg::<UnixAddr>(
                fd,
                &[std::io::IoSlice::new(&[0])],
                &[ControlMessage::ScmRights(&raw)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .map_err(|e| e.to_string())?;
    protocol::write_frame(stream, header, b"")
        .await
        .map_err(|e| e.to_string())?;
    drop(fds);
    Ok(())
}
