//! A requirement line as the cache reads it (a function's requirements.txt
//! or a package's `Requires-Dist`). What pip is asked for is one word
//! (no spaces: pip gets it as one argument) led by a normalised name, and
//! reads back as itself, with no marker left to hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((spec, _holds)) = sock_cache::read_requirement(line) else {
        return;
    };
    assert!(!spec.is_empty());
    assert!(!spec.contains(char::is_whitespace), "{spec:?}");
    let name_end = spec
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        .unwrap_or(spec.len());
    let name = &spec[..name_end];
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.contains("--"),
        "pip is asked for {spec:?}, whose name {name:?} is not normalised"
    );
    assert_eq!(
        sock_cache::read_requirement(&spec),
        Ok((spec.clone(), true)),
        "{line:?} asks pip for {spec:?}, which reads back otherwise"
    );
});
