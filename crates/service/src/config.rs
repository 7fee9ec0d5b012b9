//! Config in three layers: the service's embedded defaults, then its section
//! of an optional TOML file shared by all services (`[gateway]`,
//! `[registry]`, …), then `SOCK_<SERVICE>_<KEY>` environment variables.
//! `SOCK_<SERVICE>_<KEY>_FILE` names a file that holds the value instead
//! (Docker's convention for secrets: a token need not sit in the
//! environment of a container spec).
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("cannot read {variable} ({path}): {source}")]
    ReadVariable {
        variable: String,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid {service} config: {source}")]
    Invalid {
        service: String,
        source: Box<figment::Error>,
    },
}

/// How cold starts begin, one setting read by sandboxd and the cache:
/// `tree` forks them from zygotes of the import-cache tree, `off` makes
/// each a fresh sandbox. Any other value fails the config load, naming
/// these two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportCache {
    #[default]
    Tree,
    Off,
}

/// Suffix of a variable that names the file holding a key's value.
const FILE_SUFFIX: &str = "_FILE";

/// Loads the config of `service` ("gateway", "registry", …).
pub fn load_config<T>(service: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Default + Serialize + DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.display().to_string(),
                source,
            })?;
        if let Some(section) = table.remove(service) {
            figment = figment.merge(Toml::string(&toml::to_string(&section).unwrap_or_default()));
        }
    }
    let prefix = format!("SOCK_{}_", service.to_ascii_uppercase());
    let from_files = values_from_files(&prefix, std::env::vars())?;
    figment
        .merge(Env::prefixed(&prefix).filter(|key| !key.as_str().ends_with("_file")))
        .merge(Serialized::defaults(from_files))
        .extract()
        .map_err(|source| ConfigError::Invalid {
            service: service.to_string(),
            source: Box::new(source),
        })
}

/// For `#[serde(deserialize_with)]` on a list setting: a list, or one
/// string of comma-separated items, as a `SOCK_<SERVICE>_<KEY>` variable
/// gives it; blank items are dropped.
pub fn list_or_commas<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form<T> {
        List(Vec<T>),
        One(String),
    }
    Ok(match Form::deserialize(deserializer)? {
        Form::List(list) => list,
        Form::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| T::from(s.to_string()))
            .collect(),
    })
}

/// The keys that `<prefix><KEY>_FILE` variables among `vars` give, each
/// the trimmed text of the file it names.
fn values_from_files(
    prefix: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<toml::Table, ConfigError> {
    let mut values = toml::Table::new();
    for (variable, path) in vars {
        let Some(key) = variable
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(FILE_SUFFIX))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadVariable {
            variable: variable.clone(),
            path: path.clone(),
            source,
        })?;
        values.insert(
            key.to_ascii_lowercase(),
            toml::Value::String(text.trim().to_string()),
        );
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Demo {
        listen: String,
        cache_ms: u64,
        import_cache: ImportCache,
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                listen: "127.0.0.1:1".into(),
                cache_ms: 5000,
                import_cache: ImportCache::Tree,
            }
        }
    }

    #[test]
    fn import_cache_is_tree_or_off_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock.toml");
        std::fs::write(&path, "[demo]\nimport_cache = \"off\"\n").expect("write");
        let cfg: Demo = load_config("demo", Some(&path)).expect("load");
        assert_eq!(cfg.import_cache, ImportCache::Off);

        std::fs::write(&path, "[demo]\nimport_cache = \"sometimes\"\n").expect("write");
        let err = load_config::<Demo>("demo", Some(&path)).expect_err("refused");
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(
            text.contains("sometimes") && text.contains("tree") && text.contains("off"),
            "{text}"
        );
    }

    #[test]
    fn file_section_overrides_defaults_and_other_sections_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock.toml");
        std::fs::write(&path, "[demo]\ncache_ms = 10\n[other]\nlisten = \"nope\"\n")
            .expect("write");
        let cfg: Demo = load_config("demo", Some(&path)).expect("load");
        assert_eq!(
            cfg,
            Demo {
                listen: "127.0.0.1:1".into(),
                cache_ms: 10,
                import_cache: ImportCache::Tree,
            }
        );
    }

    #[test]
    fn unknown_file_is_a_clear_error() {
        let err = load_config::<Demo>("demo", Some(Path::new("/nonexistent/sock.toml")))
            .expect_err("missing file must fail");
        assert!(
            err.to_string()
                .contains("cannot read config file /nonexistent/sock.toml")
        );
    }

    #[test]
    fn a_file_variable_gives_the_value_of_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").expect("write");
        let var = |k: &str, v: &str| (k.to_string(), v.to_string());
        let values = values_from_files(
            "SOCK_DEMO_",
            [
                var("SOCK_DEMO_ADMIN_TOKEN_FILE", path.to_str().expect("utf-8")),
                var("SOCK_DEMO_LISTEN", "ignored: not a _FILE"),
                var("SOCK_OTHER_NODE_TOKEN_FILE", "/ignored/other/service"),
            ]
            .into_iter(),
        )
        .expect("read");
        assert_eq!(values.len(), 1, "{values:?}");
        assert_eq!(values["admin_token"].as_str(), Some("s3cret"));

        let missing = [var("SOCK_DEMO_ADMIN_TOKEN_FILE", "/nonexistent/token")];
        let err = values_from_files("SOCK_DEMO_", missing.into_iter()).expect_err("missing");
        assert!(
            err.to_string()
                .contains("cannot read SOCK_DEMO_ADMIN_TOKEN_FILE (/nonexistent/token)"),
            "{err}"
        );
    }

    #[test]
    fn a_list_setting_is_a_list_or_one_string_of_commas() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        #[serde(default)]
        struct Lists {
            #[serde(deserialize_with = "list_or_commas")]
            items: Vec<String>,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock.toml");
        for (toml, expected) in [
            ("items = [\"a\", \"b, c\"]", vec!["a", "b, c"]),
            ("items = \" a, b,,c \"", vec!["a", "b", "c"]),
            ("items = \"\"", vec![]),
        ] {
            std::fs::write(&path, format!("[demo]\n{toml}\n")).expect("write");
            let lists: Lists = load_config("demo", Some(&path)).expect("load");
            assert_eq!(lists.items, expected, "{toml}");
        }
    }

    #[test]
    fn wrong_type_names_the_service() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock.toml");
        std::fs::write(&path, "[demo]\ncache_ms = \"soon\"\n").expect("write");
        let err = load_config::<Demo>("demo", Some(&path)).expect_err("bad type must fail");
        assert!(err.to_string().starts_with("invalid demo config"), "{err}");
    }
}
