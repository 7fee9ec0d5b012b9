//! Small pure-Python wheels built by the tests, so package installs run
//! offline (`--no-index --find-links`).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A wheel to build: its files, and `Requires-Dist` lines for METADATA.
pub struct Wheel<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub requires: &'a [&'a str],
    /// (path inside the wheel, contents), e.g. `("mod.py", "X = 1\n")`.
    pub files: &'a [(&'a str, &'a str)],
}

/// A directory for wheels that the installer sandbox's unprivileged pip
/// can read (temp dirs are 0700).
pub fn wheel_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sock-wheels-")
        .tempdir()
        .expect("temp wheel dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("make the wheel dir readable");
    dir
}

/// Builds `wheel` into `dir` with Python's zipfile, as a packager would
/// (METADATA, WHEEL, RECORD with hashes), and returns its path.
pub fn build(dir: &Path, wheel: &Wheel) -> PathBuf {
    let script = r#"
import base64, hashlib, json, sys, zipfile
out, spec = sys.argv[1], json.loads(sys.argv[2])
name, version = spec["name"], spec["version"]
dist = name.replace("-", "_")
info = f"{dist}-{version}.dist-info"
files = dict(spec["files"])
metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
# As pandas' and numpy's: the license text in the header, its blank lines
# indented, before Requires-Dist.
metadata += "License: BSD 3-Clause License\n        \n        Copyright (c) sock tests\n"
metadata += "".join(f"Requires-Dist: {r}\n" for r in spec["requires"])
files[f"{info}/METADATA"] = metadata
files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: sock-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
record = []
for path, text in files.items():
    data = text.encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{path},sha256={digest},{len(data)}")
record.append(f"{info}/RECORD,,")
files[f"{info}/RECORD"] = "\n".join(record) + "\n"
path = f"{out}/{dist}-{version}-py3-none-any.whl"
with zipfile.ZipFile(path, "w") as whl:
    for name_in_zip, text in files.items():
        whl.writestr(name_in_zip, text)
print(path)
"#;
    let spec = serde_json::json!({
        "name": wheel.name,
        "version": wheel.version,
        "requires": wheel.requires,
        "files": wheel.files,
    });
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(spec.to_string())
        .output()
        .expect("run python3 to build a wheel");
    assert!(
        output.status.success(),
        "building wheel {} {} failed: {}",
        wheel.name,
        wheel.version,
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .expect("make the wheel readable");
    path
}

/// A wheel with one module `<name>.py` (dashes as underscores) holding
/// `body`.
pub fn module_wheel(
    dir: &Path,
    name: &str,
    version: &str,
    requires: &[&str],
    body: &str,
) -> PathBuf {
    let module = format!("{}.py", name.replace('-', "_"));
    build(
        dir,
        &Wheel {
            name,
            version,
            requires,
            files: &[(&module, body)],
        },
    )
}

/// An sdist `<name>-<version>.tar.gz` (PEP 625 name) in `dir` whose
/// build backend is `backend` (the module `backend.py`, in-tree:
/// `backend-path = ["."]`, no build requirements, so it builds offline);
/// returns its path.
pub fn sdist(dir: &Path, name: &str, version: &str, backend: &str) -> PathBuf {
    let script = r#"
import io, sys, tarfile
out, name, version, backend = sys.argv[1:5]
base = f"{name.replace('-', '_')}-{version}"
files = {
    "pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
    "backend.py": backend,
    "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
}
path = f"{out}/{base}.tar.gz"
with tarfile.open(path, "w:gz") as tar:
    for file, text in files.items():
        data = text.encode()
        info = tarfile.TarInfo(f"{base}/{file}")
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
print(path)
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .args([name, version, backend])
        .output()
        .expect("run python3 to build an sdist");
    assert!(
        output.status.success(),
        "building sdist {name} {version} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .expect("make the sdist readable");
    path
}

/// `requirements` and their dependencies as wheels for CPython
/// `python_version` (e.g. "3.11"), downloaded from PyPI once into
/// `target/pypi-wheels/` and reused: caches install from them with no
/// index. Tests that call this need PyPI on their first run, and say
/// `pypi` in their names.
pub fn pypi_wheels(requirements: &[&str], python_version: &str) -> PathBuf {
    let target = crate::repository().join("target/pypi-wheels");
    let name = requirements.join(",");
    let dir = target.join(format!("{name}-py{python_version}"));
    if dir.is_dir() {
        return dir;
    }
    // Downloaded beside it and renamed when complete, so a failed run
    // leaves no half-filled dir to be reused.
    let partial = target.join(format!("{name}-py{python_version}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    let status = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "pip", "download", "--quiet", "--only-binary", ":all:"])
        .args(["--python-version", python_version, "--dest"])
        .arg(&partial)
        .args(requirements)
        .status()
        .expect("run python3 -m pip");
    assert!(
        status.success(),
        "pip download {name} failed (it needs PyPI once; {} is reused after)",
        dir.display()
    );
    std::fs::rename(&partial, &dir).expect("move the wheels into place");
    dir
}

/// The Python of the sandboxes (the host's /usr/bin/python3), as "3.11".
fn sandbox_python() -> String {
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("run /usr/bin/python3");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A [`wheel_dir`] holding the [`pypi_wheels`] of each of
/// `requirement_sets` for the sandboxes' Python, copied there because
/// the installer sandbox's unprivileged pip may not read `target/`.
pub fn readable_pypi_wheels(requirement_sets: &[&[&str]]) -> tempfile::TempDir {
    let wheels = wheel_dir();
    let python = sandbox_python();
    for requirements in requirement_sets {
        for entry in std::fs::read_dir(pypi_wheels(requirements, &python)).expect("wheels") {
            let path = entry.expect("wheel").path();
            let copy = wheels.path().join(path.file_name().expect("a file"));
            std::fs::copy(&path, copy).expect("copy the wheel");
        }
    }
    wheels
}
