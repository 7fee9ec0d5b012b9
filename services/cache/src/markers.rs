//! PEP 508 environment markers (`python_version >= "3.8" and sys_platform
//! == "linux"`), evaluated for the sandboxes' Python.
//!
//! The environment is what the sandboxes' `python` reports at the cache's
//! start, else CPython 3.11 on x86_64 Linux.
use std::collections::HashMap;
use std::path::Path;

use crate::version::{Op, Specifier, Version, normalize_name};

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Marker {
    And(Vec<Marker>),
    Or(Vec<Marker>),
    Compare {
        left: Value,
        op: CompareOp,
        right: Value,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Variable(String),
    Literal(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum CompareOp {
    Version(Op),
    In,
    NotIn,
}

/// The values markers are evaluated against.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Environment {
    values: HashMap<String, String>,
}

/// Asked of the sandboxes' interpreter once, at start.
const PROBE: &str = r#"
import json, os, platform, sys
impl = sys.implementation
v = impl.version
iv = f"{v.major}.{v.minor}.{v.micro}" + ("" if v.releaselevel == "final" else v.releaselevel[0] + str(v.serial))
print(json.dumps({
    "implementation_name": impl.name,
    "implementation_version": iv,
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}))
"#;

impl Environment {
    /// Runs `python` to learn its environment; when that fails, the
    /// environment of Debian 12's CPython 3.11 on x86_64 Linux, which is
    /// what sandboxes run on the machines sock targets.
    pub(crate) fn probe(python: &Path) -> Environment {
        let probed = std::process::Command::new(python)
            .args(["-I", "-S", "-c", PROBE])
            .output()
            .map_err(|e| e.to_string())
            .and_then(|out| {
                if out.status.success() {
                    serde_json::from_slice::<HashMap<String, String>>(&out.stdout)
                        .map_err(|e| e.to_string())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            });
        match probed {
            Ok(values) => Environment { values },
            Err(error) => {
                tracing::warn!(python = %python.display(), %error, "cannot ask the sandbox python for its marker environment; assuming CPython 3.11 on x86_64 Linux");
                Environment::cpython311_linux()
            }
        }
    }

    pub(crate) fn cpython311_linux() -> Environment {
        let values = [
            ("implementation_name", "cpython"),
            ("implementation_version", "3.11.2"),
            ("os_name", "posix"),
            ("platform_machine", "x86_64"),
            ("platform_release", ""),
            ("platform_system", "Linux"),
            ("platform_version", ""),
            ("python_full_version", "3.11.2"),
            ("platform_python_implementation", "CPython"),
            ("python_version", "3.11"),
            ("sys_platform", "linux"),
        ];
        Environment {
            values: values
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        // Names from PEP 345, still found in old metadata.
        let name = match name {
            "os.name" => "os_name",
            "sys.platform" => "sys_platform",
            "platform.version" => "platform_version",
            "platform.machine" => "platform_machine",
            "platform.python_implementation" | "python_implementation" => {
                "platform_python_implementation"
            }
            other => other,
        };
        self.values.get(name).map(String::as_str)
    }
}

impl Marker {
    pub(crate) fn parse(text: &str) -> Result<Marker, String> {
        let tokens = tokenize(text).map_err(|why| format!("marker '{text}': {why}"))?;
        let mut parser = Parser { tokens, at: 0 };
        let marker = parser
            .or()
            .map_err(|why| format!("marker '{text}': {why}"))?;
        if parser.at != parser.tokens.len() {
            return Err(format!("marker '{text}': unexpected text after the end"));
        }
        Ok(marker)
    }

    /// Whether the marker holds in `env` when the requirement that led
    /// here asked for `extras` (empty for a function's own requirements).
    pub(crate) fn evaluate(&self, env: &Environment, extras: &[String]) -> bool {
        match self {
            Marker::And(all) => all.iter().all(|m| m.evaluate(env, extras)),
            Marker::Or(any) => any.iter().any(|m| m.evaluate(env, extras)),
            Marker::Compare { left, op, right } => {
                if let Some(extra) = extra_operand(left, right) {
                    let named = extras.contains(&normalize_name(extra));
                    return match op {
                        CompareOp::Version(Op::Equal) => named,
                        CompareOp::Version(Op::NotEqual) => !named,
                        _ => false,
                    };
                }
                let value = |v: &Value| match v {
                    Value::Variable(name) => env.get(name).unwrap_or("").to_string(),
                    Value::Literal(text) => text.clone(),
                };
                compare(&value(left), *op, &value(right))
            }
        }
    }
}

/// The literal an `extra` variable is compared with, if any.
fn extra_operand<'a>(left: &'a Value, right: &'a Value) -> Option<&'a str> {
    match (left, right) {
        (Value::Variable(v), Value::Literal(extra))
        | (Value::Literal(extra), Value::Variable(v))
            if v == "extra" =>
        {
            Some(extra)
        }
        _ => None,
    }
}

/// Versions compare as versions when both sides are versions (PEP 508),
/// otherwise as strings.
fn compare(left: &str, op: CompareOp, right: &str) -> bool {
    match op {
        CompareOp::In => right.contains(left),
        CompareOp::NotIn => !right.contains(left),
        CompareOp::Version(op) => {
            let spec = Specifier {
                op,
                version: right.to_string(),
            };
            let versions = Version::parse(left).is_some()
                && Version::parse(right.trim_end_matches(".*")).is_some();
            if versions {
                spec.allows(left)
            } else {
                match op {
                    Op::Equal | Op::Arbitrary => left == right,
                    Op::NotEqual => left != right,
                    _ => false,
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Op(CompareOp),
    Value(Value),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text.trim_start();
    while let Some(c) = rest.chars().next() {
        let (token, len) = match c {
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            '"' | '\'' => {
                let end = rest[1..]
                    .find(c)
                    .ok_or_else(|| "unterminated string".to_string())?;
                (
                    Token::Value(Value::Literal(rest[1..=end].to_string())),
                    end + 2,
                )
            }
            '<' | '>' | '=' | '!' | '~' => {
                let len = rest
                    .find(|c: char| !matches!(c, '<' | '>' | '=' | '!' | '~'))
                    .unwrap_or(rest.len());
                let op = Op::from_symbol(&rest[..len])
                    .ok_or_else(|| format!("'{}' is not a comparison", &rest[..len]))?;
                (Token::Op(CompareOp::Version(op)), len)
            }
            c if c.is_ascii_alphabetic() => {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                    .unwrap_or(rest.len());
                let word = &rest[..len];
                let token = match word {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "in" => Token::Op(CompareOp::In),
                    "not" => {
                        let after = rest[len..].trim_start();
                        let Some(tail) = after.strip_prefix("in") else {
                            return Err("'not' without 'in'".into());
                        };
                        rest = tail;
                        tokens.push(Token::Op(CompareOp::NotIn));
                        rest = rest.trim_start();
                        continue;
                    }
                    variable => Token::Value(Value::Variable(variable.to_string())),
                };
                (token, len)
            }
            other => return Err(format!("unexpected '{other}'")),
        };
        tokens.push(token);
        rest = rest[len..].trim_start();
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn or(&mut self) -> Result<Marker, String> {
        let mut any = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Marker::Or(any)
        })
    }

    fn and(&mut self) -> Result<Marker, String> {
        let mut all = vec![self.atom()?];
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            all.push(self.atom()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Marker::And(all)
        })
    }

    fn atom(&mut self) -> Result<Marker, String> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err("missing ')'".into()),
                }
            }
            Some(Token::Value(left)) => {
                let Some(Token::Op(op)) = self.next() else {
                    return Err("expected a comparison".into());
                };
                let Some(Token::Value(right)) = self.next() else {
                    return Err("expected a value after the comparison".into());
                };
                Ok(Marker::Compare { left, op, right })
            }
            _ => Err("expected a comparison or '('".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds(marker: &str) -> bool {
        Marker::parse(marker)
            .unwrap_or_else(|e| panic!("{e}"))
            .evaluate(&Environment::cpython311_linux(), &[])
    }

    #[test]
    fn common_markers_hold_for_cpython_311_on_linux() {
        assert!(holds(r#"python_version >= "3.8""#));
        assert!(!holds(r#"python_version < "3.8""#));
        assert!(holds(
            r#"python_version >= "3.10" and python_version < "3.12""#
        ));
        assert!(!holds(r#"python_version > "3.11""#));
        assert!(holds(r#"python_full_version >= "3.11.1""#));
        assert!(holds(r#"sys_platform == "linux""#));
        assert!(!holds(r#"sys_platform == "win32""#));
        assert!(holds(r#"platform_system != "Windows""#));
        assert!(holds(
            r#"platform_machine == "x86_64" or platform_machine == "aarch64""#
        ));
        assert!(holds(r#"implementation_name == "cpython""#));
        assert!(!holds(r#"platform_python_implementation == "PyPy""#));
        assert!(holds(r#"'linux' in sys_platform"#));
        assert!(holds(r#"sys_platform not in "win32 cygwin""#));
        assert!(holds(
            r#"(sys_platform == "win32" or sys_platform == "linux") and python_version >= '3'"#
        ));
        assert!(holds(r#"sys.platform == "linux""#));
    }

    #[test]
    fn extras_hold_only_when_asked_for() {
        let marker = Marker::parse(r#"extra == "Socks" and python_version >= "3""#).expect("valid");
        let env = Environment::cpython311_linux();
        assert!(!marker.evaluate(&env, &[]));
        assert!(marker.evaluate(&env, &["socks".into()]));
    }

    #[test]
    fn malformed_markers_are_refused() {
        for bad in [
            "python_version >=",
            "python_version >> '3'",
            "(python_version > '3'",
            "python_version > '3",
            "os_name not '3'",
        ] {
            assert!(Marker::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn probing_the_real_python_agrees_with_the_builtin_defaults() {
        let python = Path::new("/usr/bin/python3");
        if !python.exists() {
            return;
        }
        let probed = Environment::probe(python);
        assert_eq!(probed.get("sys_platform"), Some("linux"));
        assert_eq!(probed.get("implementation_name"), Some("cpython"));
        assert!(
            probed
                .get("python_version")
                .is_some_and(|v| v.starts_with("3."))
        );
    }
}
