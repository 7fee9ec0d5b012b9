//! What an installed package says about itself: its `*.dist-info`
//! (`METADATA`'s Name, Version and Requires-Dist; `top_level.txt`) and,
//! when `top_level.txt` is missing, its top-level modules read from the
//! installed files.
//!
//! METADATA's headers end at the first empty line only: a line of spaces
//! continues a header (pandas' `License:` holds the license text and comes
//! before its `Requires-Dist`). Modules: `top_level.txt`, else the packages,
//! `*.py` files and extension modules at the top of `files`.
use std::fs;
use std::path::Path;

use crate::requirement::Requirement;
use crate::version::normalize_name;

/// One package as pip left it in a `--target` dir.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct DistInfo {
    /// Normalised.
    pub name: String,
    pub version: String,
    pub requires: Vec<Requirement>,
    /// Importable top-level module names, sorted.
    pub modules: Vec<String>,
}

/// Headers of a METADATA file (RFC 822 style): the fields we use.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Metadata {
    pub name: String,
    pub version: String,
    pub requires_dist: Vec<String>,
}

/// Reads headers up to the first empty line (the body is the long
/// description); continuation lines are folded into their header. A line
/// of only spaces is a continuation, not the end: pandas' and numpy's
/// `License:` holds the whole license text, its blank lines indented, and
/// their `Requires-Dist` lines come after it.
pub(crate) fn parse_metadata(text: &str) -> Metadata {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let mut metadata = Metadata::default();
    for (key, value) in fields {
        match key.as_str() {
            "name" => metadata.name = value,
            "version" => metadata.version = value,
            "requires-dist" => metadata.requires_dist.push(value),
            _ => {}
        }
    }
    metadata
}

/// The package pip installed into `files` (one `--no-deps` install, so
/// one dist-info).
pub(crate) fn read_dist_info(files: &Path) -> Result<DistInfo, String> {
    let entries =
        fs::read_dir(files).map_err(|e| format!("cannot list the installed files: {e}"))?;
    let mut dist_infos: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dist-info") && p.is_dir())
        .collect();
    let dist_info = match dist_infos.len() {
        1 => dist_infos.remove(0),
        0 => return Err("pip left no *.dist-info (not a wheel-installed package?)".into()),
        n => {
            return Err(format!(
                "pip left {n} *.dist-info directories, expected one"
            ));
        }
    };
    let text = fs::read_to_string(dist_info.join("METADATA"))
        .map_err(|e| format!("cannot read its METADATA: {e}"))?;
    let metadata = parse_metadata(&text);
    let (dir_name, dir_version) = dist_info
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.split_once('-'))
        .map_or((String::new(), String::new()), |(n, v)| {
            (n.to_string(), v.to_string())
        });
    let name = normalize_name(if metadata.name.is_empty() {
        &dir_name
    } else {
        &metadata.name
    });
    let version = if metadata.version.is_empty() {
        dir_version
    } else {
        metadata.version
    };
    if name.is_empty() || version.is_empty() {
        return Err("its METADATA names no Name or Version".into());
    }
    let requires = metadata
        .requires_dist
        .iter()
        .filter_map(|line| match Requirement::parse(line) {
            Ok(requirement) => Some(requirement),
            Err(error) => {
                tracing::warn!(package = %name, %error, "ignoring a Requires-Dist line");
                None
            }
        })
        .collect();
    let modules = match fs::read_to_string(dist_info.join("top_level.txt")) {
        Ok(text) => {
            let mut modules: Vec<String> = text
                .lines()
                .filter_map(|l| l.trim().split('/').next())
                .filter(|m| is_identifier(m))
                .map(str::to_string)
                .collect();
            modules.sort();
            modules.dedup();
            modules
        }
        Err(_) => modules_in(files)?,
    };
    Ok(DistInfo {
        name,
        version,
        requires,
        modules,
    })
}

/// Top-level modules among the installed files: packages (dirs with
/// `__init__.py`), `*.py` files and extension modules.
fn modules_in(files: &Path) -> Result<Vec<String>, String> {
    let entries =
        fs::read_dir(files).map_err(|e| format!("cannot list the installed files: {e}"))?;
    let mut modules = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let module = if path.is_dir() {
            let skipped = file_name == "bin"
                || file_name == "__pycache__"
                || file_name.ends_with(".dist-info")
                || file_name.ends_with(".data");
            (!skipped && path.join("__init__.py").is_file()).then_some(file_name)
        } else if let Some(stem) = file_name.strip_suffix(".py") {
            Some(stem)
        } else if file_name.ends_with(".so") || file_name.ends_with(".pyd") {
            // name.cpython-311-x86_64-linux-gnu.so, name.abi3.so, name.so
            file_name.split('.').next()
        } else {
            None
        };
        if let Some(module) = module.filter(|m| is_identifier(m)) {
            modules.push(module.to_string());
        }
    }
    modules.sort();
    modules.dedup();
    Ok(modules)
}

fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = "Metadata-Version: 2.1\n\
Name: Alpha_Pkg\n\
Version: 1.0\n\
Summary: a test\n\
License: BSD 3-Clause License\n\
\x20       \n\
\x20       Copyright (c) the alpha authors\n\
Requires-Dist: beta (>=1.0)\n\
Requires-Dist: gamma>=2; python_version < \"3.8\"\n\
Requires-Dist: delta; extra == \"fast\"\n\
Requires-Dist: epsilon ;\n\
\t sys_platform == \"linux\"\n\
\n\
Requires-Dist: not-a-header-in-the-body\n";

    #[test]
    fn metadata_headers_are_read_up_to_the_body() {
        let metadata = parse_metadata(METADATA);
        assert_eq!(metadata.name, "Alpha_Pkg");
        assert_eq!(metadata.version, "1.0");
        assert_eq!(
            metadata.requires_dist,
            [
                "beta (>=1.0)",
                "gamma>=2; python_version < \"3.8\"",
                "delta; extra == \"fast\"",
                "epsilon ; sys_platform == \"linux\"",
            ]
        );
    }

    #[test]
    fn dist_info_gives_name_version_requirements_and_modules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = dir.path().join("Alpha_Pkg-1.0.dist-info");
        fs::create_dir(&info).expect("mkdir");
        fs::write(info.join("METADATA"), METADATA).expect("write");
        fs::create_dir_all(dir.path().join("alpha/sub")).expect("mkdir");
        fs::write(dir.path().join("alpha/__init__.py"), "").expect("write");
        fs::write(dir.path().join("alpha_helpers.py"), "").expect("write");
        fs::write(
            dir.path().join("_speedups.cpython-311-x86_64-linux-gnu.so"),
            "",
        )
        .expect("write");
        fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        fs::create_dir_all(dir.path().join("__pycache__")).expect("mkdir");
        fs::create_dir_all(dir.path().join("namespace_only")).expect("mkdir");

        let dist = read_dist_info(dir.path()).expect("readable");
        assert_eq!(dist.name, "alpha-pkg");
        assert_eq!(dist.version, "1.0");
        let names: Vec<&str> = dist.requires.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["beta", "gamma", "delta", "epsilon"]);
        assert_eq!(dist.modules, ["_speedups", "alpha", "alpha_helpers"]);

        // top_level.txt wins over the files.
        fs::write(info.join("top_level.txt"), "alpha\n\n").expect("write");
        assert_eq!(
            read_dist_info(dir.path()).expect("readable").modules,
            ["alpha"]
        );
    }

    #[test]
    fn a_dir_without_dist_info_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_dist_info(dir.path()).expect_err("no dist-info");
        assert!(err.contains("no *.dist-info"), "{err}");
    }
}
