//! What every sandboxd integration test shares.

/// True when the test may create sandboxes (root). Elsewhere the test
/// fails, unless `SOCK_TEST_ALLOW_SKIP=1` asks for a skip: then it says so
/// and the caller returns.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("SOCK_TEST_ALLOW_SKIP").as_deref() == Ok("1"),
        "{test} needs root (set SOCK_TEST_ALLOW_SKIP=1 to skip it)"
    );
    eprintln!("SKIPPED: needs root ({test})");
    false
}
