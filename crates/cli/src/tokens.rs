//! The tokens of a local `sock up`: made on its first start, kept in
//! `<data dir>/tokens/`, read by the CLI so no command needs a flag.
//!
//! `admin` (push, ls, rm, logs, /metrics) and `invoke` (calls) belong to
//! the operator: with `sudo sock up` they are handed to the user who ran
//! sudo, so `sock push` works without sudo. `node` is what the services
//! show each other and stays root's. The dir is 0711 (no listing), every
//! file 0600.
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Below the data dir.
pub const DIR: &str = "tokens";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Admin,
    Invoke,
    Node,
}

impl Kind {
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Admin => "admin",
            Kind::Invoke => "invoke",
            Kind::Node => "node",
        }
    }
}

/// Where `kind`'s token lives.
pub fn path(data_dir: &Path, kind: Kind) -> PathBuf {
    data_dir.join(DIR).join(kind.file_name())
}

/// `kind`'s token, if this data dir has one the caller may read.
pub fn read(data_dir: &Path, kind: Kind) -> Option<String> {
    let text = std::fs::read_to_string(path(data_dir, kind)).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// The three tokens of `sock up`.
pub struct Tokens {
    pub admin: String,
    pub invoke: String,
    pub node: String,
}

/// Reads the tokens of `data_dir`, making any that is missing; `operator`
/// (uid, gid) gets the admin and invoke files.
pub fn ensure(data_dir: &Path, operator: Option<(u32, u32)>) -> std::io::Result<Tokens> {
    let dir = data_dir.join(DIR);
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let one = |kind: Kind| -> std::io::Result<String> {
        let path = path(data_dir, kind);
        let token = match read(data_dir, kind) {
            Some(token) => token,
            None => {
                let token = generate()?;
                let _ = std::fs::remove_file(&path);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                writeln!(file, "{token}")?;
                token
            }
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if kind != Kind::Node
            && let Some((uid, gid)) = operator
        {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        Ok(token)
    };
    Ok(Tokens {
        admin: one(Kind::Admin)?,
        invoke: one(Kind::Invoke)?,
        node: one(Kind::Node)?,
    })
}

/// 32 random bytes as hex.
fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure(dir.path(), None).expect("make");
        assert_eq!(first.admin.len(), 64);
        assert_ne!(first.admin, first.invoke);
        assert_ne!(first.invoke, first.node);
        for kind in [Kind::Admin, Kind::Invoke, Kind::Node] {
            let meta = std::fs::metadata(path(dir.path(), kind)).expect("file");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{kind:?}");
        }
        let meta = std::fs::metadata(dir.path().join(DIR)).expect("dir");
        assert_eq!(meta.permissions().mode() & 0o777, 0o711);

        let again = ensure(dir.path(), None).expect("read");
        assert_eq!(again.admin, first.admin);
        assert_eq!(again.node, first.node);
        assert_eq!(read(dir.path(), Kind::Invoke), Some(first.invoke));
        assert_eq!(
            read(tempfile::tempdir().expect("t").path(), Kind::Admin),
            None
        );
    }
}
