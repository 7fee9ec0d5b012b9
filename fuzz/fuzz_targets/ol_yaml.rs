//! A bundle's `ol.yaml` and `requirements.txt` (the input split at its
//! first NUL: ol.yaml before it, requirements.txt after it, if any), read
//! as the registry reads them at a push. A config that is accepted keeps
//! the promises the rest of sock relies on: an entry file inside the
//! bundle, environment entries a process can be given, methods as HTTP
//! spells them, schedules the cron parser takes, requirement lines that
//! are single trimmed lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sock_bundle::Schedule;

fuzz_target!(|data: &[u8]| {
    let (ol_yaml, requirements) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let Ok(config) = sock_bundle::read_config(Some(ol_yaml), requirements) else {
        return;
    };
    let entry = &config.entry_file;
    assert!(entry.ends_with(".py"), "{entry:?}");
    assert!(
        !entry.starts_with('/') && entry.split('/').all(|c| !matches!(c, "" | "." | "..")),
        "entry file {entry:?} is not a plain path inside the bundle"
    );
    for (key, value) in &config.environment {
        assert!(!key.is_empty() && !key.contains(['=', '\0']), "{key:?}");
        assert!(!value.contains('\0'), "{key:?}={value:?}");
    }
    for method in &config.http_methods {
        assert!(
            !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()),
            "{method:?}"
        );
    }
    for trigger in &config.cron {
        assert!(
            Schedule::parse(&trigger.schedule).is_ok(),
            "{:?}",
            trigger.schedule
        );
    }
    assert!(["sock", "gvisor"].contains(&config.isolation.as_str()));
    for line in &config.requirements {
        assert!(!line.is_empty() && !line.contains(['\n', '\r']), "{line:?}");
        assert_eq!(line.trim(), line, "requirement {line:?} is not trimmed");
        assert!(
            !line.contains("  "),
            "requirement {line:?} keeps a run of spaces"
        );
    }
});
