//! Where sandboxd answers. It is root's API, so it listens on a unix socket
//! by default: the socket file lets in only root and the one client uid
//! (or gid) the operator names, and each connection's peer credentials are
//! checked again. TCP (a node on another host) is refused unless calls
//! must carry the node token.
//!
//! The socket (`<data dir>/sandboxd.sock` under `sock up`) is 0600, owned
//! by `client_uid` (the services' user), or 0660 with `client_gid`; and
//! `SO_PEERCRED` must say uid 0, `client_uid` or `client_gid`. Over TCP (`listen = HOST:PORT`, e.g. a node on another
//! host) every caller must send `node_token`: a per-node token rather than
//! mTLS.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;
use crate::error::StartError;

/// Prefix of a `listen` address that names a unix socket path.
pub const UNIX_PREFIX: &str = "unix:";

pub enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when this is dropped.
    Unix(UnixListener, SocketFile),
}

/// Removes the socket file when the server is done with it.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// What the log says of it.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, file) => format!("{UNIX_PREFIX}{}", file.0.display()),
        }
    }
}

/// Binds `config.listen`: `unix:PATH`, or `HOST:PORT` when `node_token` is
/// set.
pub async fn bind(config: &Config) -> Result<Listener, StartError> {
    match config.listen.strip_prefix(UNIX_PREFIX) {
        Some(path) => bind_unix(Path::new(path), config.client_uid, config.client_gid),
        None => {
            if config
                .node_token
                .as_ref()
                .is_none_or(|t| t.expose().is_empty())
            {
                return Err(StartError::InvalidConfig(format!(
                    "refusing to listen on TCP {} without a node_token: sandboxd is root's API; \
                     listen on unix:PATH (the default), or set node_token and give the gateway \
                     the same one",
                    config.listen
                )));
            }
            let listener = sock_service::bind(&config.listen)
                .await
                .map_err(|e| StartError::InvalidConfig(e.to_string()))?;
            Ok(Listener::Tcp(listener))
        }
    }
}

fn bind_unix(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<Listener, StartError> {
    let failed = |what: &str, e: std::io::Error| {
        StartError::InvalidConfig(format!("cannot {what} socket {}: {e}", path.display()))
    };
    // A socket left by a run that crashed is ours to replace; anything
    // else at that path is not.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| failed("remove the stale", e))?;
        }
        Ok(_) => {
            return Err(StartError::InvalidConfig(format!(
                "cannot listen on {}: something that is not a socket is there",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("inspect", e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| failed("create the dir of the", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| failed("bind", e))?;
    let file = SocketFile(path.to_path_buf());
    // Connecting needs write permission on the file: owner (root, or the
    // client uid) and, with a client gid, that group; nobody else. Until
    // the chmod the kernel made it per the umask, which grants write to
    // the owner alone.
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::os::unix::fs::chown(path, uid, gid).map_err(|e| failed("hand over", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed("set the mode of", e))?;
    Ok(Listener::Unix(listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_without_a_node_token_is_refused() {
        let config = Config {
            listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        let Err(err) = bind(&config).await else {
            panic!("bound TCP without a token");
        };
        assert!(
            err.to_string()
                .contains("refusing to listen on TCP 127.0.0.1:0 without a node_token"),
            "{err}"
        );
        let config = Config {
            node_token: Some("t".into()),
            ..config
        };
        assert!(matches!(bind(&config).await, Ok(Listener::Tcp(_))));
    }

    #[tokio::test]
    async fn a_unix_socket_is_closed_to_others_and_replaces_only_a_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sandboxd.sock");
        let config = Config {
            listen: format!("unix:{}", path.display()),
            ..Config::default()
        };
        let listener = bind(&config).await.expect("bind");
        let meta = std::fs::symlink_metadata(&path).expect("socket file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        drop(listener);
        assert!(!path.exists(), "the socket file goes with the listener");

        // A stale socket (a crashed run's) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).expect("stale socket");
        drop(stale);
        let listener = bind(&config).await.expect("rebind over a stale socket");
        drop(listener);

        std::fs::write(&path, "not a socket").expect("plant a file");
        let Err(err) = bind(&config).await else {
            panic!("replaced a regular file");
        };
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("still there"),
            "not a socket"
        );
    }
}
