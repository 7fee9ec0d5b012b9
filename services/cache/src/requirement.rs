//! PEP 508 requirements: parsing `name[extras] (specifiers) ; marker`,
//! and deciding whether a version already in the store satisfies a
//! requirement's specifiers.
use crate::markers::Marker;
use crate::version::{Op, Specifier, normalize_name};

/// One requirement line (requirements.txt or `Requires-Dist`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Requirement {
    /// Normalised as PEP 503 says (lowercase, runs of `-_.` → `-`).
    pub name: String,
    pub extras: Vec<String>,
    pub specifiers: Vec<Specifier>,
    pub marker: Option<Marker>,
}

impl Requirement {
    /// Parses one requirement. pip options after it (`--hash=…`) are
    /// dropped; a line that is only an option, or a URL or path
    /// requirement, is refused: the store installs index packages only.
    pub(crate) fn parse(line: &str) -> Result<Requirement, String> {
        let line = line.trim();
        if line.starts_with('-') {
            return Err(format!(
                "'{line}' is a pip option; only package requirements such as 'name==1.0' are supported"
            ));
        }
        let line = line.split(" -").next().unwrap_or(line).trim();
        let (head, marker) = match line.split_once(';') {
            Some((head, marker)) => (head.trim(), Some(Marker::parse(marker.trim())?)),
            None => (line, None),
        };
        let name_end = head
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(head.len());
        let name = &head[..name_end];
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(format!("'{line}' does not start with a package name"));
        }
        let mut rest = head[name_end..].trim_start();
        let mut extras = Vec::new();
        if let Some(inner) = rest.strip_prefix('[') {
            let (list, after) = inner
                .split_once(']')
                .ok_or_else(|| format!("'{line}' has an unclosed '[' of extras"))?;
            extras = list
                .split(',')
                .map(|e| normalize_name(e.trim()))
                .filter(|e| !e.is_empty())
                .collect();
            rest = after.trim_start();
        }
        if rest.starts_with('@') {
            return Err(format!(
                "'{line}' is a URL requirement; only index packages such as 'name==1.0' are supported"
            ));
        }
        let rest = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or(rest)
            .trim();
        let specifiers = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',')
                .map(|s| Specifier::parse(s.trim()).map_err(|why| format!("'{line}': {why}")))
                .collect::<Result<_, _>>()?
        };
        Ok(Requirement {
            name: normalize_name(name),
            extras,
            specifiers,
            marker,
        })
    }

    /// The exact version this requirement pins (`==1.2`, not `==1.*`).
    pub(crate) fn pinned(&self) -> Option<&str> {
        match self.specifiers.as_slice() {
            [s] if matches!(s.op, Op::Equal | Op::Arbitrary) && !s.version.ends_with(".*") => {
                Some(&s.version)
            }
            _ => None,
        }
    }

    /// What pip is asked to install: name and specifiers, no spaces, no
    /// extras (installs are `--no-deps`; extras only add dependencies).
    pub(crate) fn pip_spec(&self) -> String {
        let specs: Vec<String> = self.specifiers.iter().map(ToString::to_string).collect();
        format!("{}{}", self.name, specs.join(","))
    }

    /// Whether `version` satisfies every specifier. A version or
    /// specifier we cannot read satisfies nothing, so pip decides.
    pub(crate) fn allows(&self, version: &str) -> bool {
        self.specifiers.iter().all(|s| s.allows(version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_lines_parse() {
        let r =
            Requirement::parse("Requests[Socks, security] (>=2.0, <3) ; python_version >= \"3.8\"")
                .expect("valid");
        assert_eq!(r.name, "requests");
        assert_eq!(r.extras, ["socks", "security"]);
        assert_eq!(r.pip_spec(), "requests>=2.0,<3");
        assert!(r.marker.is_some());
        assert_eq!(r.pinned(), None);

        let pinned = Requirement::parse("six==1.16.0 --hash=sha256:abc").expect("valid");
        assert_eq!(pinned.pinned(), Some("1.16.0"));
        assert_eq!(pinned.pip_spec(), "six==1.16.0");
        assert_eq!(
            Requirement::parse("numpy==2.*").expect("valid").pinned(),
            None
        );
        assert_eq!(
            Requirement::parse("numpy").expect("valid").pip_spec(),
            "numpy"
        );

        for (bad, says) in [
            ("-r other.txt", "pip option"),
            ("pkg @ https://example.com/pkg.whl", "URL requirement"),
            ("pkg >>1", "not a version specifier"),
            ("==1.0", "package name"),
            ("pkg[x", "unclosed"),
        ] {
            let err = Requirement::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn specifiers_select_versions() {
        let req = |s: &str| Requirement::parse(s).expect("valid");
        assert!(req("a>=1.0,<2").allows("1.5"));
        assert!(!req("a>=1.0,<2").allows("2.0"));
        assert!(req("a~=1.4.2").allows("1.4.9"));
        assert!(!req("a~=1.4.2").allows("1.5.0"));
        assert!(req("a~=2.2").allows("2.9"));
        assert!(req("a==2.1.*").allows("2.1.7"));
        assert!(!req("a==2.1.*").allows("2.2.0"));
        assert!(req("a!=1.3").allows("1.4"));
        assert!(req("a==1.0").allows("1.0.0"));
        assert!(req("a").allows("0.1"));
        assert!(!req("a>=1").allows("garbage"));
    }
}
