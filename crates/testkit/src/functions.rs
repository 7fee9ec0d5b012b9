//! Function directories for tests, written into temp dirs and packed.

/// Writes `files` (relative path, contents) into a new temp dir.
pub fn function_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp function dir");
    for (path, contents) in files {
        let path = dir.path().join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create function subdir");
        }
        std::fs::write(&path, contents).expect("write function file");
    }
    dir
}

/// A bundle of the given files, as `sock push` would upload it.
pub fn bundle(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = function_dir(files);
    sock_bundle::pack(dir.path()).expect("pack test function")
}

/// About `bytes` of text that gzip cannot shrink much (the hex of a
/// xorshift stream from `seed`): filler that makes a bundle big.
pub fn incompressible(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..bytes / 16)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!("{state:016x}")
        })
        .collect()
}

/// The repository's `examples/<name>` directory.
pub fn example(name: &str) -> std::path::PathBuf {
    crate::repository().join("examples").join(name)
}
