//! The one error type of this crate. Messages are meant for the person who
//! pushed the bundle: they name the entry and say what to change.
use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("invalid function name '{name}': {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("bundle is {size:.1}, over the limit of {limit}")]
    TooLarge { size: Size, limit: Size },

    #[error("bundle is not a gzip-compressed tar archive")]
    NotGzip,

    #[error("bundle is gzip-compressed but does not hold a tar archive")]
    NotTar,

    #[error("bundle is truncated or corrupt {position}: {reason}")]
    Truncated {
        /// Where reading stopped: "at entry 'x'", "after entry 'x'", or
        /// "before its first entry".
        position: String,
        reason: String,
    },

    #[error("bundle unpacks to more than the limit of {limit}{}", at(.entry))]
    UnpackedTooLarge { entry: Option<String>, limit: Size },

    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: usize },

    #[error("bundle has a {what} of {size} bytes, over the limit of {limit} bytes")]
    OversizedHeader {
        what: &'static str,
        size: u64,
        limit: u64,
    },

    #[error("entry '{entry}' is invalid: {reason}")]
    InvalidEntry { entry: String, reason: &'static str },

    #[error("entry '{entry}' has an absolute path; bundle paths must be relative")]
    AbsolutePath { entry: String },

    #[error("entry '{entry}' escapes the bundle with '..'")]
    PathEscapes { entry: String },

    #[error("entry '{entry}' is inside '{parent}', which is not a directory")]
    NotADirectory { entry: String, parent: String },

    #[error("entry '{entry}' appears twice in the bundle")]
    Duplicate { entry: String },

    #[error("entry '{entry}' is a {kind}; bundles may hold only files, directories and symlinks")]
    SpecialFile { entry: String, kind: String },

    #[error("entry '{entry}' {reason}, which sock does not support")]
    Unsupported { entry: String, reason: &'static str },

    #[error("symlink '{entry}' points to '{target}', outside the bundle")]
    SymlinkOutside { entry: String, target: String },

    #[error("symlink '{entry}' is part of a symlink loop")]
    SymlinkLoop { entry: String },

    #[error("hard link '{entry}' points to '{target}', outside the bundle")]
    HardLinkOutside { entry: String, target: String },

    #[error("hard link '{entry}' points to '{target}', which is not a file earlier in the bundle")]
    HardLinkMissing { entry: String, target: String },

    #[error(
        "bundle has no entry file '{file}'; add it, or name another one with \
         OL_ENTRY_FILE under `environment` in ol.yaml"
    )]
    NoEntryFile { file: String },

    #[error("bundle has no module file '{file}' for OL_WSGI_ENTRY '{entry}'")]
    NoWsgiModule { entry: String, file: String },

    #[error("invalid ol.yaml: {reason}")]
    InvalidConfig { reason: String },

    #[error("invalid requirements.txt: {reason}")]
    InvalidRequirements { reason: String },

    #[error("cannot unpack into {}: it already exists", .path.display())]
    DestinationExists { path: PathBuf },

    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl BundleError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        BundleError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

fn at(entry: &Option<String>) -> String {
    entry
        .as_ref()
        .map(|e| format!(" (at entry '{e}')"))
        .unwrap_or_default()
}

/// A byte count shown the way people read sizes: "32 MiB" for a round
/// limit, "40.0 MiB" (with `{:.1}`) for a measured size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        let (unit, name) = match self.0 {
            n if n >= MIB => (MIB, "MiB"),
            n if n >= KIB => (KIB, "KiB"),
            n => return write!(f, "{n} bytes"),
        };
        match f.precision() {
            Some(p) => write!(f, "{:.*} {name}", p, self.0 as f64 / unit as f64),
            None if self.0.is_multiple_of(unit) => write!(f, "{} {name}", self.0 / unit),
            None => write!(f, "{:.1} {name}", self.0 as f64 / unit as f64),
        }
    }
}

/// Makes an untrusted name safe to show: control characters escaped, and
/// cut short so one entry cannot flood a message.
pub(crate) fn shown(raw: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = raw.chars().take(MAX).flat_map(char::escape_debug).collect();
    if raw.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(Size(32 << 20).to_string(), "32 MiB");
        assert_eq!(Size(40 << 20).to_string(), "40 MiB");
        assert_eq!(format!("{:.1}", Size(40 << 20)), "40.0 MiB");
        assert_eq!(Size((40 << 20) + (1 << 19)).to_string(), "40.5 MiB");
        assert_eq!(Size(1536).to_string(), "1.5 KiB");
        assert_eq!(Size(12).to_string(), "12 bytes");
    }

    #[test]
    fn shown_names_cannot_forge_lines_or_flood() {
        assert_eq!(shown("a\nb"), "a\\nb");
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), 201);
    }
}
