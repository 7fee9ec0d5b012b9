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

/// The repository's `examples/<name>` directory.
pub fn example(name: &str) -> std::path::PathBuf {
    crate::repository().join("examples").join(name)
}
