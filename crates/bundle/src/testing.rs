//! Bundles for tests (feature `testing`): a tar builder that writes raw
//! names a well-behaved tar writer refuses, and a catalogue of hostile
//! bundles with the message each must be refused with, so every crate that
//! takes bundles tests against the same attacks.
//!
//! [`TarBuilder`] writes the raw archives; [`hostile_bundles`] is the
//! catalogue.
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

/// The entry file every catalogue bundle carries, so that its one hostile
/// entry is the only thing wrong with it.
pub const F_PY: &[u8] = b"def f(event):\n    return event\n";

/// Builds a tar archive entry by entry, writing names and link targets
/// into the header verbatim.
#[derive(Debug, Default)]
pub struct TarBuilder {
    tar: Vec<u8>,
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder::default()
    }

    /// A builder already holding `f.py`.
    pub fn with_entry_file() -> Self {
        TarBuilder::new().file("f.py", F_PY)
    }

    pub fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", 0o644, data.len() as u64, data)
    }

    pub fn file_mode(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", mode, data.len() as u64, data)
    }

    pub fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, "", 0o755, 0, b"")
    }

    pub fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, target, 0o777, 0, b"")
    }

    pub fn hard_link(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, target, 0o644, 0, b"")
    }

    /// A device, fifo or any other entry type without data.
    pub fn special(self, name: &str, ty: EntryType) -> Self {
        self.entry(name, ty, "", 0o644, 0, b"")
    }

    /// A file whose header claims `size` bytes while only `data` follows.
    pub fn claimed(self, name: &str, size: u64, data: &[u8]) -> Self {
        self.entry(name, EntryType::Regular, "", 0o644, size, data)
    }

    /// Appends one header and `data`, padded to whole blocks. Names and
    /// link targets must fit the old 100-byte fields.
    pub fn entry(
        mut self,
        name: &str,
        ty: EntryType,
        link: &str,
        mode: u32,
        size: u64,
        data: &[u8],
    ) -> Self {
        let mut header = Header::new_gnu();
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(ty);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(tar::DETERMINISTIC_TIMESTAMP);
        header.set_cksum();
        self.tar.extend_from_slice(header.as_bytes());
        self.tar.extend_from_slice(data);
        self.tar.resize(self.tar.len().next_multiple_of(512), 0);
        self
    }

    /// The tar archive, with its end marker.
    pub fn tar(mut self) -> Vec<u8> {
        self.tar.extend_from_slice(&[0; 1024]);
        self.tar
    }

    /// The archive, gzip-compressed: a bundle.
    pub fn bundle(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(bytes).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}

/// `len` bytes that gzip cannot shrink, starting with the gzip magic: a
/// bundle over a size limit however it is compressed.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64: cheap, and random enough to defeat deflate.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    out[..2].copy_from_slice(&[0x1f, 0x8b]);
    out
}

/// One hostile bundle and what refusing it must say.
#[derive(Debug)]
pub struct Hostile {
    pub kind: &'static str,
    pub bundle: Vec<u8>,
    /// A part of the error message, naming the offending entry.
    pub message: &'static str,
}

/// Every hostile bundle, each refused under the default limits.
pub fn hostile_bundles() -> Vec<Hostile> {
    let h = |kind, bundle, message| Hostile {
        kind,
        bundle,
        message,
    };
    let with_ol_yaml = |yaml: &str| {
        TarBuilder::with_entry_file()
            .file("ol.yaml", yaml.as_bytes())
            .bundle()
    };
    let truncated = {
        let data: Vec<u8> = incompressible(64 << 10);
        let bundle = TarBuilder::with_entry_file()
            .file("data.bin", &data)
            .bundle();
        bundle[..bundle.len() / 2].to_vec()
    };
    let many = (0..=10_000).fold(TarBuilder::with_entry_file(), |b, i| {
        b.dir(&format!("d{i}/"))
    });
    // A name the kernel refuses (over NAME_MAX): found by the fuzzer, which
    // saw it validate and then fail to unpack.
    let long_name = {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(0);
        tar.append_data(
            &mut header,
            format!("{}.py", "n".repeat(253)),
            std::io::empty(),
        )
        .expect("writing to a Vec cannot fail");
        let mut bundle = TarBuilder::with_entry_file().tar();
        bundle.truncate(bundle.len() - 1024);
        bundle.extend(tar.into_inner().expect("writing to a Vec cannot fail"));
        gzip(&bundle)
    };
    vec![
        h(
            "not gzip",
            b"PK\x03\x04 a zip file, not a bundle".to_vec(),
            "bundle is not a gzip-compressed tar archive",
        ),
        h(
            "not tar",
            gzip(b"def f(event):\n    return 1\n"),
            "bundle is gzip-compressed but does not hold a tar archive",
        ),
        h(
            "truncated",
            truncated,
            "bundle is truncated or corrupt at entry 'data.bin'",
        ),
        h(
            "gzip bomb",
            TarBuilder::with_entry_file()
                .claimed("bomb.bin", 300 << 20, b"")
                .bundle(),
            "bundle unpacks to more than the limit of 256 MiB (at entry 'bomb.bin')",
        ),
        h(
            "too many entries",
            many.bundle(),
            "bundle has more than 10000 entries",
        ),
        h(
            "absolute path",
            TarBuilder::with_entry_file()
                .file("/etc/cron.d/evil", b"* * * * * root sh\n")
                .bundle(),
            "entry '/etc/cron.d/evil' has an absolute path",
        ),
        h(
            "dotdot escape",
            TarBuilder::with_entry_file()
                .file("lib/../../evil.py", b"")
                .bundle(),
            "entry 'lib/../../evil.py' escapes the bundle with '..'",
        ),
        h(
            "symlink outside",
            TarBuilder::with_entry_file()
                .symlink("lib/passwd", "../../etc/passwd")
                .bundle(),
            "symlink 'lib/passwd' points to '../../etc/passwd', outside the bundle",
        ),
        h(
            "absolute symlink",
            TarBuilder::with_entry_file()
                .symlink("passwd", "/etc/passwd")
                .bundle(),
            "symlink 'passwd' points to '/etc/passwd', outside the bundle",
        ),
        h(
            "symlink chain outside",
            TarBuilder::with_entry_file()
                .symlink("d/up", "..")
                .symlink("escape", "d/up/..")
                .bundle(),
            "symlink 'escape' points to 'd/up/..', outside the bundle",
        ),
        h(
            "write through symlink",
            TarBuilder::with_entry_file()
                .dir("d/")
                .symlink("l", "d")
                .file("l/x.py", b"")
                .bundle(),
            "entry 'l/x.py' is inside 'l', which is not a directory",
        ),
        h(
            "hard link outside",
            TarBuilder::with_entry_file()
                .hard_link("h", "../../etc/shadow")
                .bundle(),
            "hard link 'h' points to '../../etc/shadow', outside the bundle",
        ),
        h(
            "hard link missing",
            TarBuilder::with_entry_file()
                .hard_link("h", "nothere.py")
                .bundle(),
            "hard link 'h' points to 'nothere.py', which is not a file earlier in the bundle",
        ),
        h(
            "fifo",
            TarBuilder::with_entry_file()
                .special("pipe", EntryType::Fifo)
                .bundle(),
            "entry 'pipe' is a fifo",
        ),
        h(
            "character device",
            TarBuilder::with_entry_file()
                .special("null", EntryType::Char)
                .bundle(),
            "entry 'null' is a character device",
        ),
        h(
            "block device",
            TarBuilder::with_entry_file()
                .special("sda", EntryType::Block)
                .bundle(),
            "entry 'sda' is a block device",
        ),
        h(
            "duplicate entry",
            TarBuilder::with_entry_file()
                .file("f.py", b"import os\n")
                .bundle(),
            "entry 'f.py' appears twice",
        ),
        h(
            "no entry file",
            TarBuilder::new().file("main.py", F_PY).bundle(),
            "bundle has no entry file 'f.py'",
        ),
        h(
            "missing OL_ENTRY_FILE",
            with_ol_yaml("environment:\n  OL_ENTRY_FILE: app.py\n"),
            "bundle has no entry file 'app.py'",
        ),
        h(
            "missing WSGI module",
            with_ol_yaml("environment:\n  OL_WSGI_ENTRY: web:app\n"),
            "bundle has no module file 'web.py' for OL_WSGI_ENTRY 'web:app'",
        ),
        h(
            "invalid ol.yaml",
            with_ol_yaml("triggers: [http\n"),
            "invalid ol.yaml: ",
        ),
        h(
            "unknown limit",
            with_ol_yaml("limits:\n  memroy_mb: 64\n"),
            "invalid ol.yaml: limits: unknown field `memroy_mb`",
        ),
        h(
            "name too long",
            long_name,
            "is invalid: its path is over 1024 bytes or holds a name over 255 bytes",
        ),
    ]
}
