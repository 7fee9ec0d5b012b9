//! The child's side of the sandbox protocol while it is still in the
//! zygote's code (the frames are in [`crate::protocol`]):
//! blocking, since nothing else runs in the child yet. A frame is a 4-byte
//! big-endian length and a JSON header, then a 4-byte length and a body;
//! the child only ever sends and takes headers with empty bodies here.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

/// A function's request is a few fields and its environment; anything
/// longer is a broken peer (the same limit as [`crate::protocol`]'s for
/// headers).
pub(crate) const MAX_HEADER_BYTES: usize = crate::protocol::MAX_HEADER_BYTES as usize;
/// The fds one message may carry.
const MAX_FDS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the socket closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("expected an empty body, got {0} bytes")]
    Body(usize),
    #[error("receiving fds: {0}")]
    Recv(nix::Error),
}

pub(crate) fn write_header(sock: &mut UnixStream, header: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(header.len()).map_err(|_| FrameError::TooLarge(header.len()))?;
    let mut frame = Vec::with_capacity(header.len() + 8);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(header);
    frame.extend_from_slice(&0u32.to_be_bytes());
    sock.write_all(&frame)?;
    Ok(())
}

/// Reads one frame whose body is empty; returns its header's bytes. Any
/// reader, so the fuzzer (`fuzz/`) reads sandboxd's bytes as a child does.
pub fn read_header(sock: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let len = read_len(sock)?;
    if len > MAX_HEADER_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut header = vec![0; len];
    sock.read_exact(&mut header).map_err(eof)?;
    match read_len(sock)? {
        0 => Ok(header),
        n => Err(FrameError::Body(n)),
    }
}

fn read_len(sock: &mut impl Read) -> Result<usize, FrameError> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).map_err(eof)?;
    Ok(u32::from_be_bytes(len) as usize)
}

fn eof(e: std::io::Error) -> FrameError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    }
}

/// Takes the one byte that carries fds (SCM_RIGHTS), and those fds.
pub(crate) fn recv_fds(sock: &UnixStream) -> Result<Vec<OwnedFd>, FrameError> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(FrameError::Recv)?;
    if msg.bytes == 0 {
        return Err(FrameError::Closed);
    }
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(FrameError::Recv)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            fds.extend(raw.into_iter().map(|fd| {
                // SAFETY: the kernel just installed these fds in this
                // process for this message; nothing else owns them.
                #[allow(unsafe_code)]
                unsafe {
                    OwnedFd::from_raw_fd(fd)
                }
            }));
        }
    }
    Ok(fds)
}
