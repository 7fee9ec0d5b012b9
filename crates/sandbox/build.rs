//! Stamps the library with a hash of the sources it was built from, so
//! sandboxd can refuse a `libsock_sandbox.so` left over from another build
//! (cargo puts one beside the binaries and one in `deps/`, and rebuilds
//! them at different times): a stale copy would lock children down with
//! code other than the one reviewed.
use std::hash::{DefaultHasher, Hasher};
use std::path::Path;

fn main() {
    let mut files: Vec<_> = std::fs::read_dir("src")
        .expect("src")
        .map(|entry| entry.expect("src entry").path())
        .collect();
    files.push(Path::new("build.rs").to_path_buf());
    files.push(Path::new("Cargo.toml").to_path_buf());
    // The seccomp rules are compiled in (include_str! in src/seccomp.rs).
    files.push(Path::new("seccomp/sandbox.json").to_path_buf());
    files.push(Path::new("seccomp/zygote.json").to_path_buf());
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        hasher.write(file.to_string_lossy().as_bytes());
        hasher.write(&std::fs::read(file).expect("read source"));
    }
    println!(
        "cargo:rustc-env=SOCK_SANDBOX_BUILD_ID={:016x}",
        hasher.finish()
    );
}
