//! The one reader of untrusted bundles, shared by `validate` and `unpack`.
//!
//! It walks the tar headers itself (tar's raw mode) so that long-name and
//! pax headers are read with a bound instead of into unbounded memory, checks
//! every limit before reading the data it guards, and hands only checked
//! entries to a [`Sink`]. Symlinks reach the sink last, after the whole
//! archive is known to be sound, so nothing is ever written through one.
//!
//! GNU long names are read up to 4 KiB and pax headers up to 64 KiB; a pax
//! `size` record is refused (the size the reader checks is the header's);
//! the decompressed stream itself is capped.
use std::cell::{Cell, RefCell};
use std::io::{self, Read};

use flate2::read::GzDecoder;
use sock_proto::v1::FunctionConfig;
use tar::EntryType;

use crate::config;
use crate::error::{BundleError, Size, shown};
use crate::tree::{Node, PathProblem, Tree, normalize, parent_of};

/// Size bounds applied while reading an archive.
#[derive(Clone, Copy, Debug)]
pub struct BundleLimits {
    /// Compressed size of the bundle.
    pub max_bundle_bytes: u64,
    /// Sum of the unpacked file sizes (guards against gzip bombs).
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits {
            max_bundle_bytes: 32 << 20,
            max_unpacked_bytes: 256 << 20,
            max_entries: 10_000,
        }
    }
}

/// What validation learned from a bundle.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// From `ol.yaml` and `requirements.txt`, with defaults filled in
    /// (`entry_file` "f.py", `isolation` "sock", `limits` all zero).
    pub config: FunctionConfig,
}

/// Where checked entries go: nowhere (validate) or onto disk (unpack).
/// Paths are normalised and relative to the bundle root; parents are
/// always announced with `dir` first.
pub(crate) trait Sink {
    fn dir(&mut self, path: &str) -> Result<(), BundleError>;
    fn file(
        &mut self,
        path: &str,
        executable: bool,
        data: &mut dyn Read,
    ) -> Result<(), BundleError>;
    fn hard_link(&mut self, path: &str, target: &str) -> Result<(), BundleError>;
    fn symlink(&mut self, path: &str, target: &str) -> Result<(), BundleError>;
}

const OL_YAML: &str = "ol.yaml";
const REQUIREMENTS: &str = "requirements.txt";
/// Bound on the files whose content validation reads into memory.
const MAX_CAPTURED: u64 = 1 << 20;
const MAX_LONG_NAME: u64 = 4096;
const MAX_PAX: u64 = 64 << 10;
/// A tar header is one block; its data is padded to whole blocks.
const BLOCK: u64 = 512;
/// What a bundle that validates must also unpack: no name in a path over
/// the kernel's NAME_MAX, and no path (or symlink target) so long that,
/// below the directory it is unpacked into, it nears PATH_MAX (4096).
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 1024;

/// Reads `bundle`, refusing anything hostile, and feeds `sink`.
pub(crate) fn read(
    bundle: &[u8],
    limits: &BundleLimits,
    sink: &mut dyn Sink,
) -> Result<Manifest, BundleError> {
    let size = bundle.len() as u64;
    if size > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            size: Size(size),
            limit: Size(limits.max_bundle_bytes),
        });
    }
    if !bundle.starts_with(&[0x1f, 0x8b]) {
        return Err(BundleError::NotGzip);
    }
    let max_headers = limits.max_entries.saturating_mul(4).saturating_add(4);
    let state = StreamState {
        // Everything a valid archive within the limits can hold: the data,
        // its padding, and the headers. Past this the stream is refused
        // even where no header accounts for the bytes (trailing garbage).
        cap: limits
            .max_unpacked_bytes
            .saturating_add((max_headers as u64).saturating_mul(2 * BLOCK))
            .saturating_add(1 << 20),
        ..StreamState::default()
    };
    let stream = Stream {
        gz: GzDecoder::new(bundle),
        state: &state,
    };
    let mut archive = tar::Archive::new(stream);
    let mut reader = Reader {
        limits,
        max_headers,
        sink,
        state: &state,
        tree: Tree::default(),
        headers: 0,
        entries: 0,
        data_bytes: 0,
        last: None,
        pending: Pending::default(),
        ol_yaml: None,
        requirements: None,
    };
    let entries = archive
        .entries()
        .map_err(|e| reader.stream_error(e, None))?
        .raw(true);
    for entry in entries {
        let entry = entry.map_err(|e| reader.stream_error(e, None))?;
        reader.entry(entry)?;
    }
    // The tar end marker may come before the gzip trailer; reading on
    // checks the trailer's CRC and catches a stream cut short.
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|e| reader.stream_error(e, None))?;
    reader.finish()
}

#[derive(Default)]
struct StreamState {
    cap: u64,
    read: Cell<u64>,
    over_cap: Cell<bool>,
    gzip_error: RefCell<Option<String>>,
}

/// The decompressed stream. It counts what it yields and remembers whether
/// a failure came from gzip or from the cap, because those failures reach
/// us wrapped by the tar parser.
struct Stream<'a> {
    gz: GzDecoder<&'a [u8]>,
    state: &'a StreamState,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.state.over_cap.get() {
            return Err(io::Error::other("bundle over its unpacked size"));
        }
        match self.gz.read(buf) {
            Ok(n) => {
                let total = self.state.read.get().saturating_add(n as u64);
                self.state.read.set(total);
                if total > self.state.cap {
                    self.state.over_cap.set(true);
                    return Err(io::Error::other("bundle over its unpacked size"));
                }
                Ok(n)
            }
            Err(e) => {
                let reason = match e.kind() {
                    io::ErrorKind::UnexpectedEof => "the gzip stream ends early".to_string(),
                    _ => format!("gzip: {e}"),
                };
                self.state.gzip_error.replace(Some(reason));
                Err(e)
            }
        }
    }
}

/// Names and link targets from GNU long-name and pax headers, waiting for
/// the entry they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax_path: Option<Vec<u8>>,
    pax_link: Option<Vec<u8>>,
    pax_size: bool,
}

struct Reader<'a> {
    limits: &'a BundleLimits,
    max_headers: usize,
    sink: &'a mut dyn Sink,
    state: &'a StreamState,
    tree: Tree,
    headers: usize,
    entries: usize,
    data_bytes: u64,
    /// The last entry read completely, for messages.
    last: Option<String>,
    pending: Pending,
    ol_yaml: Option<Vec<u8>>,
    requirements: Option<Vec<u8>>,
}

/// What one archive entry becomes.
enum Kind {
    Dir,
    File,
    HardLink,
    Symlink,
}

impl Reader<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), BundleError> {
        self.headers += 1;
        if self.headers > self.max_headers {
            return Err(BundleError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let ty = entry.header().entry_type();
        match ty {
            EntryType::GNULongName => {
                let name =
                    self.read_extension(&mut entry, "GNU long-name header", MAX_LONG_NAME)?;
                self.pending.long_name = Some(trim_nuls(name));
                return Ok(());
            }
            EntryType::GNULongLink => {
                let link =
                    self.read_extension(&mut entry, "GNU long-link header", MAX_LONG_NAME)?;
                self.pending.long_link = Some(trim_nuls(link));
                return Ok(());
            }
            EntryType::XHeader => {
                let pax = self.read_extension(&mut entry, "pax header", MAX_PAX)?;
                return self.apply_pax(&pax);
            }
            // Global pax headers (git archive writes one) carry nothing
            // that matters here; tar skips their data.
            EntryType::XGlobalHeader => return self.account(entry.size(), None),
            _ => {}
        }

        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(BundleError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        let pending = std::mem::take(&mut self.pending);
        let raw_name = pending
            .pax_path
            .or(pending.long_name)
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let name = decode(raw_name).map_err(|(shown, problem)| BundleError::InvalidEntry {
            entry: shown,
            reason: if problem == Problem::NotUtf8 {
                "its name is not valid UTF-8"
            } else {
                "its name holds a NUL byte"
            },
        })?;
        let entry_name = shown(&name);
        if pending.pax_size {
            return Err(BundleError::Unsupported {
                entry: entry_name,
                reason: "has a pax size record",
            });
        }
        self.account(entry.size(), Some(&entry_name))?;

        let kind = match ty {
            // Old tar writers mark directories by a trailing slash only.
            EntryType::Regular | EntryType::Continuous if name.ends_with('/') => Kind::Dir,
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Link => Kind::HardLink,
            EntryType::Symlink => Kind::Symlink,
            other => {
                return Err(BundleError::SpecialFile {
                    entry: entry_name,
                    kind: special_kind(other),
                });
            }
        };
        let path = match normalize(&name) {
            Ok(Some(path)) => path,
            Ok(None) if matches!(kind, Kind::Dir) => {
                self.last = Some(entry_name);
                return Ok(());
            }
            Ok(None) => {
                return Err(BundleError::InvalidEntry {
                    entry: entry_name,
                    reason: "it names the bundle's root, which is a directory",
                });
            }
            Err(PathProblem::Absolute) => {
                return Err(BundleError::AbsolutePath { entry: entry_name });
            }
            Err(PathProblem::Escapes) => {
                return Err(BundleError::PathEscapes { entry: entry_name });
            }
        };
        if path.len() > MAX_PATH || path.split('/').any(|part| part.len() > MAX_NAME) {
            return Err(BundleError::InvalidEntry {
                entry: entry_name,
                reason: "its path is over 1024 bytes or holds a name over 255 bytes",
            });
        }
        if (path == OL_YAML || path == REQUIREMENTS) && !matches!(kind, Kind::File) {
            return Err(captured_error(
                &path,
                "it must be a regular file, not a link or directory",
            ));
        }

        match kind {
            Kind::Dir => self.insert(&path, Node::Dir)?,
            Kind::File => self.file(&mut entry, &path, &entry_name)?,
            Kind::HardLink => {
                let link = link_target(pending.pax_link.or(pending.long_link), entry.header());
                self.hard_link(&path, &entry_name, link)?;
            }
            Kind::Symlink => {
                let link = link_target(pending.pax_link.or(pending.long_link), entry.header());
                self.symlink(&path, &entry_name, link)?;
            }
        }
        self.last = Some(entry_name);
        Ok(())
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), BundleError> {
        let sink = &mut *self.sink;
        self.tree.insert(path, node, &mut |dir| sink.dir(dir))
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &str,
        name: &str,
    ) -> Result<(), BundleError> {
        let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
        let size = entry.size();
        self.insert(path, Node::File)?;
        let mut data = Tracked {
            inner: entry,
            read: 0,
            error: None,
        };
        let written = if path == OL_YAML || path == REQUIREMENTS {
            if size > MAX_CAPTURED {
                return Err(captured_error(path, "it is over 1 MiB"));
            }
            let mut content = Vec::new();
            match data.read_to_end(&mut content) {
                Ok(_) => {
                    let written = self.sink.file(path, executable, &mut content.as_slice());
                    if path == OL_YAML {
                        self.ol_yaml = Some(content);
                    } else {
                        self.requirements = Some(content);
                    }
                    written
                }
                // The error is in `data.error`, reported below.
                Err(_) => Ok(()),
            }
        } else {
            self.sink.file(path, executable, &mut data)
        };
        let at = format!("at entry '{name}'");
        if let Some(e) = data.error.take() {
            return Err(self.stream_error(e, Some(at)));
        }
        written?;
        if data.read != size {
            return Err(BundleError::Truncated {
                position: at,
                reason: format!("its data ends after {} of {size} bytes", data.read),
            });
        }
        Ok(())
    }

    fn hard_link(&mut self, path: &str, name: &str, link: Vec<u8>) -> Result<(), BundleError> {
        let link = decode(link).map_err(|_| BundleError::InvalidEntry {
            entry: name.to_string(),
            reason: "its link target is not valid UTF-8 or holds a NUL byte",
        })?;
        let target = match normalize(&link) {
            Ok(Some(target)) => target,
            Ok(None) => String::new(),
            Err(_) => {
                return Err(BundleError::HardLinkOutside {
                    entry: name.to_string(),
                    target: shown(&link),
                });
            }
        };
        if self.tree.get(&target) != Some(&Node::File) {
            return Err(BundleError::HardLinkMissing {
                entry: name.to_string(),
                target: shown(&link),
            });
        }
        self.insert(path, Node::File)?;
        self.sink.hard_link(path, &target)
    }

    fn symlink(&mut self, path: &str, name: &str, link: Vec<u8>) -> Result<(), BundleError> {
        let target = decode(link).map_err(|_| BundleError::InvalidEntry {
            entry: name.to_string(),
            reason: "its symlink target is not valid UTF-8 or holds a NUL byte",
        })?;
        if target.is_empty() || target.len() > MAX_PATH {
            return Err(BundleError::InvalidEntry {
                entry: name.to_string(),
                reason: "its symlink target is empty or over 1024 bytes",
            });
        }
        // The full check, through other symlinks, needs the whole archive
        // and runs in `finish`; this one names the obvious cases early.
        let from_root = match parent_of(path) {
            "" => target.clone(),
            parent => format!("{parent}/{target}"),
        };
        if target.starts_with('/') || normalize(&from_root).is_err() {
            return Err(BundleError::SymlinkOutside {
                entry: name.to_string(),
                target: shown(&target),
            });
        }
        self.insert(path, Node::Symlink(target))
    }

    fn apply_pax(&mut self, pax: &[u8]) -> Result<(), BundleError> {
        for record in tar::PaxExtensions::new(pax) {
            let record = record.map_err(|_| self.corrupt("a pax header is malformed"))?;
            match record.key_bytes() {
                b"path" => self.pending.pax_path = Some(record.value_bytes().to_vec()),
                b"linkpath" => self.pending.pax_link = Some(record.value_bytes().to_vec()),
                // A pax size changes where the next header starts; readers
                // that ignore it see another archive. Only files over
                // 8 GiB need one, far past any bundle limit.
                b"size" => self.pending.pax_size = true,
                _ => {}
            }
        }
        Ok(())
    }

    /// Reads the data of a long-name or pax header, which the tar format
    /// does not bound.
    fn read_extension<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        what: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>, BundleError> {
        let size = entry.size();
        if size > limit {
            return Err(BundleError::OversizedHeader { what, size, limit });
        }
        self.account(size, None)?;
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| self.stream_error(e, None))?;
        if data.len() as u64 != size {
            return Err(self.corrupt(format!("a {what} ends early")));
        }
        Ok(data)
    }

    /// Counts `size` bytes of entry data against the unpacked limit, before
    /// they are read.
    fn account(&mut self, size: u64, entry: Option<&str>) -> Result<(), BundleError> {
        self.data_bytes = self.data_bytes.saturating_add(size);
        if self.data_bytes > self.limits.max_unpacked_bytes {
            return Err(BundleError::UnpackedTooLarge {
                entry: entry.map(str::to_string),
                limit: Size(self.limits.max_unpacked_bytes),
            });
        }
        Ok(())
    }

    fn corrupt(&self, reason: impl Into<String>) -> BundleError {
        BundleError::Truncated {
            position: self.position(),
            reason: reason.into(),
        }
    }

    fn position(&self) -> String {
        match &self.last {
            Some(entry) => format!("after entry '{entry}'"),
            None => "before its first entry".to_string(),
        }
    }

    /// Turns a read failure, which may come from gzip, from our size cap or
    /// from the tar parser, into the error that says which.
    fn stream_error(&self, e: io::Error, position: Option<String>) -> BundleError {
        if self.state.over_cap.get() {
            return BundleError::UnpackedTooLarge {
                entry: None,
                limit: Size(self.limits.max_unpacked_bytes),
            };
        }
        let position = position.unwrap_or_else(|| self.position());
        if let Some(reason) = self.state.gzip_error.borrow().clone() {
            return BundleError::Truncated { position, reason };
        }
        if self.headers == 0 {
            return BundleError::NotTar;
        }
        BundleError::Truncated {
            position,
            reason: e.to_string(),
        }
    }

    /// The checks that need the whole archive, then the symlinks.
    fn finish(self) -> Result<Manifest, BundleError> {
        if self.headers == 0 && self.state.read.get() == 0 {
            return Err(BundleError::NotTar);
        }
        let p = &self.pending;
        if p.long_name.is_some()
            || p.long_link.is_some()
            || p.pax_path.is_some()
            || p.pax_link.is_some()
            || p.pax_size
        {
            return Err(self.corrupt("it ends with a header describing an entry that is missing"));
        }
        self.tree.check_symlinks()?;
        let config =
            config::function_config(self.ol_yaml.as_deref(), self.requirements.as_deref())?;
        let module_files = match config.wsgi_entry.as_str() {
            "" => None,
            entry => config::app_module_files(config::WSGI_ENTRY_VAR, entry)?,
        };
        match module_files {
            // sock's `module:app` imports that module, not the entry file.
            Some([module, package]) => {
                if !self.tree.is_file(&module) && !self.tree.is_file(&package) {
                    return Err(BundleError::NoWsgiModule {
                        entry: shown(&config.wsgi_entry),
                        file: module,
                    });
                }
            }
            None => {
                if !self.tree.is_file(&config.entry_file) {
                    return Err(BundleError::NoEntryFile {
                        file: shown(&config.entry_file),
                    });
                }
            }
        }
        for (path, target) in self.tree.symlinks() {
            self.sink.symlink(path, target)?;
        }
        Ok(Manifest { config })
    }
}

/// Entry data as read, counted, with the first read error kept so it can be
/// told apart from a failure of the sink that consumed it.
struct Tracked<'a, R> {
    inner: &'a mut R,
    read: u64,
    error: Option<io::Error>,
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}

fn captured_error(path: &str, reason: &str) -> BundleError {
    if path == OL_YAML {
        BundleError::InvalidConfig {
            reason: reason.to_string(),
        }
    } else {
        BundleError::InvalidRequirements {
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Problem {
    NotUtf8,
    Nul,
}

/// Decodes a name or link target from the archive; on failure, returns
/// what can be shown of it and why.
fn decode(bytes: Vec<u8>) -> Result<String, (String, Problem)> {
    match String::from_utf8(bytes) {
        Ok(text) if text.contains('\0') => Err((shown(&text), Problem::Nul)),
        Ok(text) => Ok(text),
        Err(e) => Err((
            shown(&String::from_utf8_lossy(e.as_bytes())),
            Problem::NotUtf8,
        )),
    }
}

/// A link's target: from a long-link or pax header if one came before it.
fn link_target(extended: Option<Vec<u8>>, header: &tar::Header) -> Vec<u8> {
    extended.unwrap_or_else(|| {
        header
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default()
    })
}

fn trim_nuls(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn special_kind(ty: EntryType) -> String {
    match ty {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!(
            "entry of unknown type '{}'",
            (other.as_byte() as char).escape_debug()
        ),
    }
}
