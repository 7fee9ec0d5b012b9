//! Tests of the public API: every hostile kind refused by `validate` and by
//! `unpack` alike, and the happy paths users rely on.
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::LazyLock;

use tar::EntryType;

use crate::testing::{F_PY, Hostile, TarBuilder, gzip, hostile_bundles, incompressible};

/// Built once: the catalogue takes a while to build in a debug build.
static HOSTILE: LazyLock<Vec<Hostile>> = LazyLock::new(hostile_bundles);
use crate::{BundleError, BundleLimits, pack, unpack, validate};

/// Refuses the catalogue bundle of `kind` through both `validate` and
/// `unpack`, with the catalogue's message, leaving nothing on disk.
fn refused(kind: &str) -> BundleError {
    let hostile = HOSTILE
        .iter()
        .find(|h| h.kind == kind)
        .expect("kind is in the catalogue");
    let limits = BundleLimits::default();
    let err = validate(&hostile.bundle, &limits).expect_err(kind);
    assert!(
        err.to_string().contains(hostile.message),
        "{kind}: got '{err}'"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("code");
    let unpack_err = unpack(&hostile.bundle, &dest, &limits).expect_err(kind);
    assert_eq!(unpack_err.to_string(), err.to_string(), "{kind}");
    assert!(
        !dest.exists(),
        "{kind}: a refused unpack left {dest:?} behind"
    );
    err
}

fn small_limits() -> BundleLimits {
    BundleLimits {
        max_bundle_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
        max_entries: 10,
    }
}

#[test]
fn refuses_what_is_not_gzip() {
    assert!(matches!(refused("not gzip"), BundleError::NotGzip));
}

#[test]
fn refuses_gzip_that_is_not_tar() {
    assert!(matches!(refused("not tar"), BundleError::NotTar));
}

#[test]
fn refuses_a_truncated_bundle() {
    assert!(matches!(
        refused("truncated"),
        BundleError::Truncated { .. }
    ));
}

#[test]
fn refuses_a_tar_cut_short_inside_complete_gzip() {
    let tar = TarBuilder::with_entry_file()
        .file("data.bin", &[7; 4096])
        .tar();
    // Keep f.py, the data header and half the data.
    let cut = gzip(&tar[..1024 + 512 + 2048]);
    let err = validate(&cut, &BundleLimits::default()).expect_err("cut short");
    assert_eq!(
        err.to_string(),
        "bundle is truncated or corrupt at entry 'data.bin': its data ends after 2048 of 4096 bytes"
    );
}

#[test]
fn refuses_a_corrupt_gzip_trailer() {
    let mut bundle = TarBuilder::with_entry_file().bundle();
    let n = bundle.len();
    // The last eight bytes are the CRC and length of the data.
    bundle[n - 8] ^= 0xff;
    let err = validate(&bundle, &BundleLimits::default()).expect_err("bad crc");
    assert!(matches!(err, BundleError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("gzip"), "{err}");
}

#[test]
fn refuses_a_bundle_over_the_compressed_limit() {
    let err = validate(&incompressible(40 << 20), &BundleLimits::default()).expect_err("too big");
    assert!(matches!(err, BundleError::TooLarge { .. }));
    assert_eq!(
        err.to_string(),
        "bundle is 40.0 MiB, over the limit of 32 MiB"
    );
}

#[test]
fn refuses_a_header_claiming_more_than_the_unpacked_limit() {
    assert!(matches!(
        refused("gzip bomb"),
        BundleError::UnpackedTooLarge { .. }
    ));
}

#[test]
fn refuses_a_real_gzip_bomb() {
    let bomb = TarBuilder::with_entry_file()
        .file("zeros", &vec![0; 2 << 20])
        .bundle();
    assert!(bomb.len() < 16 << 10, "the point is a small bundle");
    let err = validate(&bomb, &small_limits()).expect_err("bomb");
    assert_eq!(
        err.to_string(),
        "bundle unpacks to more than the limit of 1 MiB (at entry 'zeros')"
    );
}

#[test]
fn refuses_a_bomb_hidden_after_the_end_marker() {
    let mut tar = TarBuilder::with_entry_file().tar();
    tar.extend(std::iter::repeat_n(0, 8 << 20));
    let err = validate(&gzip(&tar), &small_limits()).expect_err("trailing bomb");
    assert!(matches!(err, BundleError::UnpackedTooLarge { .. }), "{err}");
}

#[test]
fn refuses_a_bomb_in_a_long_name_header() {
    let bundle = TarBuilder::new()
        .entry(
            "././@LongLink",
            EntryType::GNULongName,
            "",
            0o644,
            1 << 20,
            &vec![b'a'; 1 << 20],
        )
        .file("f.py", F_PY)
        .bundle();
    let err = validate(&bundle, &BundleLimits::default()).expect_err("long name bomb");
    assert!(matches!(err, BundleError::OversizedHeader { .. }), "{err}");
}

#[test]
fn refuses_too_many_entries() {
    assert!(matches!(
        refused("too many entries"),
        BundleError::TooManyEntries { limit: 10_000 }
    ));
}

#[test]
fn refuses_absolute_paths() {
    assert!(matches!(
        refused("absolute path"),
        BundleError::AbsolutePath { .. }
    ));
}

#[test]
fn refuses_dotdot_that_escapes_but_not_dotdot_that_stays() {
    assert!(matches!(
        refused("dotdot escape"),
        BundleError::PathEscapes { .. }
    ));
    let inside = TarBuilder::with_entry_file()
        .file("lib/../ok.py", b"")
        .bundle();
    validate(&inside, &BundleLimits::default()).expect("a/../b stays inside");
}

#[test]
fn checks_the_pax_path_not_the_header_name() {
    let record = b"19 path=../evil.py\n";
    let bundle = TarBuilder::with_entry_file()
        .entry(
            "PaxHeader",
            EntryType::XHeader,
            "",
            0o644,
            record.len() as u64,
            record,
        )
        .file("innocent.py", b"")
        .bundle();
    let err = validate(&bundle, &BundleLimits::default()).expect_err("pax path escapes");
    assert_eq!(
        err.to_string(),
        "entry '../evil.py' escapes the bundle with '..'"
    );
}

#[test]
fn refuses_a_pax_size_record() {
    let record = b"12 size=100\n";
    let bundle = TarBuilder::with_entry_file()
        .entry(
            "PaxHeader",
            EntryType::XHeader,
            "",
            0o644,
            record.len() as u64,
            record,
        )
        .file("x.py", b"")
        .bundle();
    let err = validate(&bundle, &BundleLimits::default()).expect_err("pax size");
    assert!(
        matches!(err, BundleError::Unsupported { ref entry, .. } if entry == "x.py"),
        "{err}"
    );
}

#[test]
fn refuses_symlinks_leaving_the_bundle() {
    assert!(matches!(
        refused("symlink outside"),
        BundleError::SymlinkOutside { .. }
    ));
}

#[test]
fn refuses_absolute_symlinks() {
    assert!(matches!(
        refused("absolute symlink"),
        BundleError::SymlinkOutside { .. }
    ));
}

#[test]
fn refuses_symlink_chains_leaving_the_bundle() {
    assert!(matches!(
        refused("symlink chain outside"),
        BundleError::SymlinkOutside { .. }
    ));
}

#[test]
fn refuses_entries_written_through_a_symlink() {
    assert!(matches!(
        refused("write through symlink"),
        BundleError::NotADirectory { .. }
    ));
}

#[test]
fn refuses_hard_links_to_outside() {
    assert!(matches!(
        refused("hard link outside"),
        BundleError::HardLinkOutside { .. }
    ));
}

#[test]
fn refuses_hard_links_to_missing_entries() {
    assert!(matches!(
        refused("hard link missing"),
        BundleError::HardLinkMissing { .. }
    ));
    // A link to an entry that comes later is missing too: tar links back.
    let later = TarBuilder::with_entry_file()
        .hard_link("h", "a.py")
        .file("a.py", b"")
        .bundle();
    let err = validate(&later, &BundleLimits::default()).expect_err("forward link");
    assert!(matches!(err, BundleError::HardLinkMissing { .. }), "{err}");
}

#[test]
fn refuses_fifos() {
    assert!(matches!(refused("fifo"), BundleError::SpecialFile { .. }));
}

#[test]
fn refuses_character_devices() {
    assert!(matches!(
        refused("character device"),
        BundleError::SpecialFile { .. }
    ));
}

#[test]
fn refuses_block_devices() {
    assert!(matches!(
        refused("block device"),
        BundleError::SpecialFile { .. }
    ));
}

#[test]
fn refuses_duplicate_entries() {
    assert!(matches!(
        refused("duplicate entry"),
        BundleError::Duplicate { .. }
    ));
}

#[test]
fn refuses_a_bundle_without_its_entry_file() {
    assert!(matches!(
        refused("no entry file"),
        BundleError::NoEntryFile { .. }
    ));
    assert!(matches!(
        refused("missing OL_ENTRY_FILE"),
        BundleError::NoEntryFile { .. }
    ));
    let empty = gzip(&TarBuilder::new().tar());
    let err = validate(&empty, &BundleLimits::default()).expect_err("empty tar");
    assert!(matches!(err, BundleError::NoEntryFile { .. }), "{err}");
}

#[test]
fn refuses_a_wsgi_entry_without_its_module() {
    assert!(matches!(
        refused("missing WSGI module"),
        BundleError::NoWsgiModule { .. }
    ));
}

#[test]
fn refuses_invalid_ol_yaml() {
    assert!(matches!(
        refused("invalid ol.yaml"),
        BundleError::InvalidConfig { .. }
    ));
    assert!(matches!(
        refused("unknown limit"),
        BundleError::InvalidConfig { .. }
    ));
    let linked = TarBuilder::with_entry_file()
        .symlink("ol.yaml", "f.py")
        .bundle();
    let err = validate(&linked, &BundleLimits::default()).expect_err("ol.yaml symlink");
    assert!(matches!(err, BundleError::InvalidConfig { .. }), "{err}");
}

/// A tar of `f.py`, a directory `d` and `entries` (path, symlink target or
/// "" for a file), with GNU long names where they need them.
fn with_long_names(entries: &[(&str, &str)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, target) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(0);
        if target.is_empty() {
            tar.append_data(&mut header, path, std::io::empty())
        } else {
            header.set_entry_type(EntryType::Symlink);
            tar.append_link(&mut header, path, target)
        }
        .expect("tar");
    }
    let mut bundle = TarBuilder::with_entry_file().dir("d/").tar();
    bundle.truncate(bundle.len() - 1024);
    bundle.extend(tar.into_inner().expect("tar"));
    gzip(&bundle)
}

#[test]
fn refuses_paths_the_kernel_would_not_unpack() {
    // Each of these validated and then failed to unpack (ENAMETOOLONG).
    assert!(matches!(
        refused("name too long"),
        BundleError::InvalidEntry { .. }
    ));
    let name = "n".repeat(250);
    let deep = [name.as_str(); 5].join("/");
    // tar drops `.` components, so the long way round is `d/..`.
    let long_target = ["d/.."; 205].join("/") + "/f.py";
    for (what, bundle) in [
        ("path", with_long_names(&[(&format!("{deep}/x.py"), "")])),
        ("symlink target", with_long_names(&[("l.py", &long_target)])),
    ] {
        let err = validate(&bundle, &BundleLimits::default()).expect_err(what);
        assert!(
            err.to_string().contains("over 1024 bytes"),
            "{what}: got '{err}'"
        );
    }
    // Up to the bounds, they unpack.
    let at_bounds = with_long_names(&[
        (&format!("{}/{}.py", "d".repeat(255), "n".repeat(252)), ""),
        ("l.py", &(["d/.."; 203].join("/") + "/f.py")),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    unpack(
        &at_bounds,
        &dir.path().join("code"),
        &BundleLimits::default(),
    )
    .expect("unpacks");
}

#[test]
fn every_hostile_kind_has_its_own_test() {
    // Keeps the catalogue and the tests above from drifting apart.
    let tested = [
        "not gzip",
        "not tar",
        "truncated",
        "gzip bomb",
        "too many entries",
        "absolute path",
        "dotdot escape",
        "symlink outside",
        "absolute symlink",
        "symlink chain outside",
        "write through symlink",
        "hard link outside",
        "hard link missing",
        "fifo",
        "character device",
        "block device",
        "duplicate entry",
        "no entry file",
        "missing OL_ENTRY_FILE",
        "missing WSGI module",
        "invalid ol.yaml",
        "unknown limit",
        "name too long",
    ];
    let kinds: Vec<_> = HOSTILE.iter().map(|h| h.kind).collect();
    assert_eq!(kinds, tested);
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn accepts_leading_dot_slash_global_headers_and_long_names() {
    let long = format!("{}/deep.py", "d".repeat(150));
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o644);
    tar.append_data(&mut header, &long, std::io::empty())
        .expect("long name");
    let long_tar = tar.into_inner().expect("tar");
    let global = b"52 comment=0123456789012345678901234567890123456789\n";

    let mut bundle = TarBuilder::new()
        .entry(
            "pax_global_header",
            EntryType::XGlobalHeader,
            "",
            0o644,
            global.len() as u64,
            global,
        )
        .dir("./")
        .file("./f.py", F_PY)
        .tar();
    bundle.truncate(bundle.len() - 1024);
    bundle.extend_from_slice(&long_tar);
    let bundle = gzip(&bundle);

    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("code");
    unpack(&bundle, &dest, &BundleLimits::default()).expect("valid");
    assert_eq!(fs::read(dest.join("f.py")).expect("f.py"), F_PY);
    assert!(dest.join(&long).is_file());
}

#[test]
fn unpack_ignores_archive_modes() {
    let bundle = TarBuilder::with_entry_file()
        .entry("private/", EntryType::Directory, "", 0o700, 0, b"")
        .file_mode("private/secret.py", 0o600, b"x = 1\n")
        .file_mode("run.sh", 0o4755, b"#!/bin/sh\n")
        .file_mode("tool", 0o100, b"")
        .bundle();
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("code");
    unpack(&bundle, &dest, &BundleLimits::default()).expect("valid");
    assert_eq!(mode(&dest), 0o755);
    assert_eq!(mode(&dest.join("private")), 0o755);
    assert_eq!(mode(&dest.join("private/secret.py")), 0o644);
    assert_eq!(mode(&dest.join("run.sh")), 0o755, "setuid is dropped");
    assert_eq!(mode(&dest.join("tool")), 0o755);
    assert_eq!(mode(&dest.join("f.py")), 0o644);
}

#[test]
fn unpack_refuses_an_existing_destination_and_leaves_it_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("code");
    fs::create_dir(&dest).expect("mkdir");
    fs::write(dest.join("keep"), b"mine").expect("write");
    let err = unpack(
        &TarBuilder::with_entry_file().bundle(),
        &dest,
        &BundleLimits::default(),
    )
    .expect_err("dest exists");
    assert!(
        matches!(err, BundleError::DestinationExists { .. }),
        "{err}"
    );
    assert_eq!(fs::read(dest.join("keep")).expect("kept"), b"mine");
}

#[test]
fn unpack_creates_in_bundle_links() {
    let bundle = TarBuilder::new()
        .file("lib/impl.py", F_PY)
        .hard_link("copy.py", "lib/impl.py")
        .symlink("f.py", "lib/impl.py")
        .symlink("lib/self", ".")
        .bundle();
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("code");
    unpack(&bundle, &dest, &BundleLimits::default()).expect("entry file through a symlink is fine");
    assert_eq!(fs::read(dest.join("f.py")).expect("via symlink"), F_PY);
    assert_eq!(fs::read(dest.join("copy.py")).expect("hard link"), F_PY);
    assert_eq!(
        fs::read_link(dest.join("f.py")).expect("symlink"),
        Path::new("lib/impl.py")
    );
    assert_eq!(
        fs::read_link(dest.join("lib/self")).expect("symlink"),
        Path::new(".")
    );
}

#[test]
fn config_comes_from_ol_yaml_and_requirements() {
    let bundle = TarBuilder::new()
        .file("web/__init__.py", b"app = None\n")
        .file(
            "ol.yaml",
            b"triggers:\n  http:\n    - method: post\nenvironment:\n  OL_WSGI_ENTRY: web:app\n\
              limits:\n  memory_mb: 64\nisolation: gvisor\n",
        )
        .file(
            "requirements.txt",
            b"# pinned\nrequests==2.31.0\n\nidna==3.6  # via requests\n",
        )
        .bundle();
    let config = validate(&bundle, &BundleLimits::default())
        .expect("valid")
        .config;
    assert_eq!(config.http_methods, ["POST"]);
    assert_eq!(config.wsgi_entry, "web:app");
    assert_eq!(config.entry_file, "f.py");
    assert_eq!(config.requirements, ["requests==2.31.0", "idna==3.6"]);
    assert_eq!(config.limits.map(|l| l.memory_mb), Some(64));
    assert_eq!(config.isolation, "gvisor");
}

#[test]
fn entry_file_can_live_in_a_subdirectory() {
    let bundle = TarBuilder::new()
        .file("src/main.py", F_PY)
        .file("ol.yaml", b"environment:\n  OL_ENTRY_FILE: src/main.py\n")
        .bundle();
    let config = validate(&bundle, &BundleLimits::default())
        .expect("valid")
        .config;
    assert_eq!(config.entry_file, "src/main.py");
    assert_eq!(config.environment["OL_ENTRY_FILE"], "src/main.py");
}

fn function_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for (path, data) in [
        ("f.py", F_PY),
        ("requirements.txt", b"six==1.16.0\n".as_slice()),
        ("pkg/mod.py", b"X = 1\n"),
        ("pkg/__pycache__/mod.cpython-311.pyc", b"junk"),
        ("stale.pyc", b"junk"),
        (".git/config", b"[core]\n"),
        ("bin/run", b"#!/bin/sh\n"),
    ] {
        let full = root.join(path);
        fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
        fs::write(&full, data).expect("write");
    }
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::create_dir(root.join("empty")).expect("mkdir");
    std::os::unix::fs::symlink("pkg/mod.py", root.join("alias.py")).expect("symlink");
    dir
}

#[test]
fn pack_validate_unpack_round_trip() {
    let src = function_dir();
    let bundle = pack(src.path()).expect("pack");
    let config = validate(&bundle, &BundleLimits::default())
        .expect("valid")
        .config;
    assert_eq!(config.requirements, ["six==1.16.0"]);

    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("code");
    unpack(&bundle, &dest, &BundleLimits::default()).expect("unpack");
    assert_eq!(fs::read(dest.join("f.py")).expect("f.py"), F_PY);
    assert_eq!(fs::read(dest.join("alias.py")).expect("alias"), b"X = 1\n");
    assert!(
        fs::symlink_metadata(dest.join("alias.py"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    assert!(dest.join("empty").is_dir());
    assert_eq!(mode(&dest.join("bin/run")), 0o755);
    assert_eq!(mode(&dest.join("pkg/mod.py")), 0o644);
    for skipped in [".git", "stale.pyc", "pkg/__pycache__"] {
        assert!(!dest.join(skipped).exists(), "{skipped} was packed");
    }
    assert_eq!(
        pack(src.path()).expect("pack again"),
        bundle,
        "packing is deterministic"
    );
}

#[test]
fn pack_refuses_symlinks_out_of_the_directory() {
    for target in ["../../etc/passwd", "/etc/passwd"] {
        let src = function_dir();
        std::os::unix::fs::symlink(target, src.path().join("pkg/out")).expect("symlink");
        let err = pack(src.path()).expect_err(target);
        assert_eq!(
            err.to_string(),
            format!("symlink 'pkg/out' points to '{target}', outside the bundle")
        );
    }
}

#[test]
fn pack_refuses_special_files() {
    let src = function_dir();
    let fifo = src.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let err = pack(src.path()).expect_err("fifo");
    assert_eq!(
        err.to_string(),
        "entry 'pipe' is a fifo; bundles may hold only files, directories and symlinks"
    );
}

#[test]
fn refuses_names_that_are_not_utf8_or_hold_nul() {
    let mut bad_name = TarBuilder::with_entry_file().file("bad-name.py", b"").tar();
    // f.py takes a header block and a data block; the next name follows.
    let second = 1024..1536;
    bad_name[second.start + 3] = 0xff;
    let mut header = tar::Header::from_byte_slice(&bad_name[second.clone()]).clone();
    header.set_cksum();
    bad_name[second].copy_from_slice(header.as_bytes());
    let err = validate(&gzip(&bad_name), &BundleLimits::default()).expect_err("not utf-8");
    assert_eq!(
        err.to_string(),
        "entry 'bad\u{fffd}name.py' is invalid: its name is not valid UTF-8"
    );

    let long_name = b"evil\0.py";
    let with_nul = TarBuilder::with_entry_file()
        .entry(
            "././@LongLink",
            EntryType::GNULongName,
            "",
            0o644,
            long_name.len() as u64,
            long_name,
        )
        .file("decoy.py", b"")
        .bundle();
    let err = validate(&with_nul, &BundleLimits::default()).expect_err("nul");
    assert_eq!(
        err.to_string(),
        "entry 'evil\\0.py' is invalid: its name holds a NUL byte"
    );
}
