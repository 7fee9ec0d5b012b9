//! A function's configuration from its bundle: `ol.yaml` (OpenLambda's
//! format, plus sock's `limits` and `isolation`) and `requirements.txt`.
//!
//! Defaults: `entry_file` "f.py", `isolation` "sock", `limits` present with
//! zeros (the platform's defaults apply). `OL_ENTRY_FILE`, `OL_WSGI_ENTRY`
//! and `OL_ASGI_ENTRY` stay in `environment` too (the runtime reads them).
//! `OL_ENTRY_FILE` must end in `.py` and exist. `wsgi_entry` is
//! `OL_WSGI_ENTRY`, else `OL_ASGI_ENTRY`: a Python name (an attribute of the
//! entry file) or, for WSGI, sock's `pkg.mod:app`, for which `pkg/mod.py` or
//! `pkg/mod/__init__.py` must exist instead of the entry file.
//! `reuse-sandbox: false` (OpenLambda's key) sets `fresh_sandbox_per_call`.
//! A `triggers.http` method `*` (OpenLambda's default) means every method,
//! kept as an empty list. `triggers.cron` is parsed by `cron.rs`.
//! Requirements follow pip's comment rules, with `\` continuations joined.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;
use sock_proto::v1::{CronTrigger, FunctionConfig, KafkaTrigger, Limits};

use crate::cron::Schedule;
use crate::error::{BundleError, shown};
use crate::tree::normalize;

pub(crate) const DEFAULT_ENTRY_FILE: &str = "f.py";
const ENTRY_FILE_VAR: &str = "OL_ENTRY_FILE";
pub(crate) const WSGI_ENTRY_VAR: &str = "OL_WSGI_ENTRY";
const ASGI_ENTRY_VAR: &str = "OL_ASGI_ENTRY";
const ISOLATIONS: [&str; 2] = ["sock", "gvisor"];

/// ol.yaml as written. Unknown top-level keys and triggers (`kafka`) are
/// ignored so OpenLambda bundles with features sock lacks still load;
/// `limits` is ours,
/// so a typo there is an error rather than a silently ignored limit.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OlYaml {
    triggers: Triggers,
    environment: BTreeMap<String, Value>,
    limits: Option<LimitsYaml>,
    isolation: Option<String>,
    /// OpenLambda's spelling; false = a fresh sandbox for every call.
    #[serde(rename = "reuse-sandbox")]
    reuse_sandbox: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Triggers {
    http: Vec<Value>,
    cron: Vec<Value>,
    kafka: Vec<KafkaYaml>,
}

/// One `triggers.kafka` entry. Unknown keys are ignored, as OpenLambda
/// does (it ignores a `group_id` too: the group is derived from the name).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KafkaYaml {
    bootstrap_servers: Vec<String>,
    topics: Vec<String>,
    auto_offset_reset: Option<String>,
}

const OFFSET_RESETS: [&str; 2] = ["earliest", "latest"];

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LimitsYaml {
    memory_mb: u64,
    pids: u32,
    cpu_percent: u32,
    timeout_ms: u32,
}

fn invalid(reason: impl Into<String>) -> BundleError {
    BundleError::InvalidConfig {
        reason: reason.into(),
    }
}

/// Builds the config from the bytes of `ol.yaml` and `requirements.txt`,
/// either of which may be absent.
pub(crate) fn function_config(
    ol_yaml: Option<&[u8]>,
    requirements: Option<&[u8]>,
) -> Result<FunctionConfig, BundleError> {
    let ol = match ol_yaml {
        Some(bytes) => parse_ol_yaml(bytes)?,
        None => OlYaml::default(),
    };
    let environment = environment(ol.environment)?;
    let entry_file = match environment.get(ENTRY_FILE_VAR) {
        // OpenLambda imports the entry file as a module, so it must be one.
        Some(file) if !file.ends_with(".py") => {
            return Err(invalid(format!(
                "{ENTRY_FILE_VAR} '{}' must name a Python file ending in .py",
                shown(file)
            )));
        }
        Some(file) => match normalize(file) {
            Ok(Some(path)) => path,
            _ => {
                return Err(invalid(format!(
                    "{ENTRY_FILE_VAR} '{}' must be a relative path inside the bundle",
                    shown(file)
                )));
            }
        },
        None => DEFAULT_ENTRY_FILE.to_string(),
    };
    // OpenLambda's runtime looks at OL_WSGI_ENTRY first, then OL_ASGI_ENTRY.
    let wsgi_entry = match [WSGI_ENTRY_VAR, ASGI_ENTRY_VAR]
        .into_iter()
        .find_map(|var| Some((var, environment.get(var)?)))
    {
        Some((var, entry)) => {
            app_module_files(var, entry)?;
            entry.clone()
        }
        None => String::new(),
    };
    let isolation = match ol.isolation {
        None => ISOLATIONS[0].to_string(),
        Some(i) if ISOLATIONS.contains(&i.as_str()) => i,
        Some(i) => {
            return Err(invalid(format!(
                "isolation must be 'sock' or 'gvisor', not '{}'",
                shown(&i)
            )));
        }
    };
    let limits = ol.limits.unwrap_or_default();
    Ok(FunctionConfig {
        http_methods: http_methods(ol.triggers.http)?,
        environment: environment.into_iter().collect(),
        entry_file,
        wsgi_entry,
        limits: Some(Limits {
            memory_mb: limits.memory_mb,
            pids: limits.pids,
            cpu_percent: limits.cpu_percent,
            timeout_ms: limits.timeout_ms,
        }),
        requirements: match requirements {
            Some(bytes) => parse_requirements(bytes)?,
            None => Vec::new(),
        },
        isolation,
        fresh_sandbox_per_call: ol.reuse_sandbox == Some(false),
        cron: cron_triggers(ol.triggers.cron)?,
        kafka: ol
            .triggers
            .kafka
            .into_iter()
            .enumerate()
            .map(|(i, trigger)| kafka_trigger(i, trigger))
            .collect::<Result<_, _>>()?,
    })
}

/// Checks one `triggers.kafka` entry now, so a mistake is the push's error
/// and not a consumer that quietly never starts.
fn kafka_trigger(index: usize, raw: KafkaYaml) -> Result<KafkaTrigger, BundleError> {
    let at = format!("triggers.kafka[{index}]");
    if raw.bootstrap_servers.is_empty() {
        return Err(invalid(format!(
            "{at} has no bootstrap_servers (list the brokers as host:port)"
        )));
    }
    for server in &raw.bootstrap_servers {
        check_server(server).map_err(|reason| {
            invalid(format!(
                "{at} bootstrap server '{}' {reason}",
                shown(server)
            ))
        })?;
    }
    if raw.topics.is_empty() {
        return Err(invalid(format!("{at} has no topics")));
    }
    for topic in &raw.topics {
        // Kafka's own rule for topic names.
        let legal = !topic.is_empty()
            && topic.len() <= 249
            && topic != "."
            && topic != ".."
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !legal {
            return Err(invalid(format!(
                "{at} topic '{}' is not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)",
                shown(topic)
            )));
        }
    }
    let auto_offset_reset = match raw.auto_offset_reset {
        None => "latest".to_string(),
        Some(reset) if OFFSET_RESETS.contains(&reset.as_str()) => reset,
        Some(reset) => {
            return Err(invalid(format!(
                "{at} auto_offset_reset must be 'earliest' or 'latest', not '{}'",
                shown(&reset)
            )));
        }
    };
    Ok(KafkaTrigger {
        bootstrap_servers: raw.bootstrap_servers,
        topics: raw.topics,
        auto_offset_reset,
    })
}

/// A broker address as Kafka clients take it: `host:port`, the host a
/// name, an IPv4 address or a bracketed IPv6 one. Commas and spaces would
/// split it into several addresses in the client's list.
fn check_server(server: &str) -> Result<(), &'static str> {
    let (host, port) = server.rsplit_once(':').ok_or("must be host:port")?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err("has no valid host name before the port");
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err("must end in a port from 1 to 65535"),
    }
}

fn parse_ol_yaml(bytes: &[u8]) -> Result<OlYaml, BundleError> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("it is not UTF-8 text"))?;
    // An empty or comments-only file is a valid "no settings".
    let doc: Value = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if doc.is_null() {
        return Ok(OlYaml::default());
    }
    serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))
}

fn environment(raw: BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, BundleError> {
    raw.into_iter()
        .map(|(key, value)| {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(invalid(format!(
                    "environment variable name '{}' is empty or holds '=' or NUL",
                    shown(&key)
                )));
            }
            let value = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                _ => {
                    return Err(invalid(format!(
                        "environment variable '{}' must be a string, number or boolean",
                        shown(&key)
                    )));
                }
            };
            if value.contains('\0') {
                return Err(invalid(format!(
                    "environment variable '{}' holds NUL",
                    shown(&key)
                )));
            }
            Ok((key, value))
        })
        .collect()
}

/// Methods of `triggers.http`, either `- method: GET` (OpenLambda) or a
/// plain `[GET, POST]`; upper-cased, without repeats. OpenLambda's `*`
/// allows every method, which sock keeps as no methods at all.
fn http_methods(raw: Vec<Value>) -> Result<Vec<String>, BundleError> {
    let mut methods: Vec<String> = Vec::new();
    let mut every = false;
    for trigger in raw {
        let method = match &trigger {
            Value::String(m) => Some(m.as_str()),
            Value::Mapping(map) => map.get("method").and_then(Value::as_str),
            _ => None,
        };
        if method == Some("*") {
            every = true;
            continue;
        }
        let Some(method) =
            method.filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()))
        else {
            return Err(invalid(
                "each triggers.http entry must be an HTTP method such as GET, `*` for \
                 every method, or `method: GET`",
            ));
        };
        let method = method.to_ascii_uppercase();
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    if every {
        methods.clear();
    }
    Ok(methods)
}

/// Schedules of `triggers.cron`, `- schedule: "*/5 * * * *"` as OpenLambda
/// writes them, each checked (see `cron`), without repeats: a repeat would
/// claim the same firings and fire nothing more.
fn cron_triggers(raw: Vec<Value>) -> Result<Vec<CronTrigger>, BundleError> {
    let mut triggers: Vec<CronTrigger> = Vec::new();
    for trigger in raw {
        let Some(schedule) = trigger.get("schedule").and_then(Value::as_str) else {
            return Err(invalid(
                "each triggers.cron entry must be `schedule: \"<cron fields>\"`, \
                 e.g. `- schedule: \"*/5 * * * *\"`",
            ));
        };
        Schedule::parse(schedule).map_err(|why| {
            invalid(format!(
                "triggers.cron schedule '{}' is not a cron schedule: {why}",
                shown(schedule)
            ))
        })?;
        let schedule = schedule.trim().to_string();
        if !triggers.iter().any(|t| t.schedule == schedule) {
            triggers.push(CronTrigger { schedule });
        }
    }
    Ok(triggers)
}

/// Checks an app entry (`OL_WSGI_ENTRY` or `OL_ASGI_ENTRY`): either an
/// attribute of the entry file's module (OpenLambda's form, `my_app`),
/// which needs no other file, or sock's `package.module:app`, which needs
/// `package/module.py` or `package/module/__init__.py`: those two are
/// returned.
pub(crate) fn app_module_files(var: &str, entry: &str) -> Result<Option<[String; 2]>, BundleError> {
    let is_ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match entry.split_once(':') {
        None if is_ident(entry) => return Ok(None),
        Some((module, app))
            if var == WSGI_ENTRY_VAR
                && module.split('.').all(is_ident)
                && app.split('.').all(is_ident) =>
        {
            let base = module.replace('.', "/");
            return Ok(Some([format!("{base}.py"), format!("{base}/__init__.py")]));
        }
        _ => {}
    }
    let forms = if var == WSGI_ENTRY_VAR {
        "a Python name such as 'app', or 'module:app'"
    } else {
        "a Python name such as 'app'"
    };
    Err(invalid(format!("{var} '{}' must be {forms}", shown(entry))))
}

/// Requirement lines as pip reads them: continuation lines joined,
/// comments and blank lines dropped, whitespace trimmed.
fn parse_requirements(bytes: &[u8]) -> Result<Vec<String>, BundleError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BundleError::InvalidRequirements {
        reason: "it is not UTF-8 text".into(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    // One requirement per logical line, its whitespace runs made single
    // spaces, however the line ended (a `\` on the last line too).
    let mut finish = |pending: &mut String| {
        let requirement = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        if !requirement.is_empty() {
            out.push(requirement);
        }
        pending.clear();
    };
    let mut pending = String::new();
    for line in text.lines() {
        let line = strip_comment(line);
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                finish(&mut pending);
            }
        }
    }
    finish(&mut pending);
    Ok(out)
}

/// pip treats `#` as a comment at the start of a line or after whitespace.
fn strip_comment(line: &str) -> &str {
    let cut = line
        .char_indices()
        .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with([' ', '\t'])))
        .map_or(line.len(), |(i, _)| i);
    line[..cut].trim_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<FunctionConfig, BundleError> {
        function_config(Some(yaml.as_bytes()), None)
    }

    #[test]
    fn no_files_means_defaults() {
        let c = function_config(None, None).expect("defaults");
        assert_eq!(c.entry_file, "f.py");
        assert_eq!(c.isolation, "sock");
        assert!(c.http_methods.is_empty() && c.environment.is_empty() && c.wsgi_entry.is_empty());
        assert_eq!(c.limits, Some(Limits::default()));
        let empty = config("# nothing here\n").expect("comments only");
        assert_eq!(empty, c);
    }

    #[test]
    fn full_file_is_read() {
        let c = config(
            "triggers:\n  http:\n    - method: get\n    - method: POST\n    - method: GET\n\
             environment:\n  OL_ENTRY_FILE: ./src/main.py\n  GREETING: hi\n  PORT: 8080\n\
             limits:\n  memory_mb: 128\n  pids: 32\n  cpu_percent: 50\n  timeout_ms: 3000\n\
             isolation: gvisor\n",
        )
        .expect("valid");
        assert_eq!(c.http_methods, ["GET", "POST"]);
        assert_eq!(c.entry_file, "src/main.py");
        assert_eq!(c.environment["GREETING"], "hi");
        assert_eq!(c.environment["PORT"], "8080");
        assert_eq!(c.environment["OL_ENTRY_FILE"], "./src/main.py");
        assert_eq!(
            c.limits,
            Some(Limits {
                memory_mb: 128,
                pids: 32,
                cpu_percent: 50,
                timeout_ms: 3000
            })
        );
        assert_eq!(c.isolation, "gvisor");
    }

    #[test]
    fn methods_may_be_plain_strings_and_unknown_triggers_are_ignored() {
        let c = config("triggers:\n  http: [get, Post]\n  sqs: [{queue: q}]\nother: 1\n")
            .expect("valid");
        assert_eq!(c.http_methods, ["GET", "POST"]);
    }

    #[test]
    fn method_star_is_every_method() {
        // OpenLambda's default when ol.yaml names no HTTP trigger.
        let c = config("triggers:\n  http:\n    - method: \"*\"\n").expect("valid");
        assert!(c.http_methods.is_empty());
        let c = config("triggers:\n  http: [GET, '*']\n").expect("valid");
        assert!(c.http_methods.is_empty(), "{:?}", c.http_methods);
        assert!(config("triggers:\n  http: ['**']\n").is_err());
    }

    #[test]
    fn cron_triggers_are_read_and_checked() {
        let c = config(
            "triggers:\n  cron:\n    - schedule: \"*/5 * * * *\"\n    - schedule: ' */2 * * * * * '\n\
             \x20   - schedule: \"*/5 * * * *\"\n",
        )
        .expect("valid");
        let schedules: Vec<&str> = c.cron.iter().map(|t| t.schedule.as_str()).collect();
        assert_eq!(schedules, ["*/5 * * * *", "*/2 * * * * *"]);
        assert!(config("other: 1\n").expect("valid").cron.is_empty());
    }

    #[test]
    fn wsgi_entry_is_taken_from_the_environment() {
        let c = config("environment:\n  OL_WSGI_ENTRY: web.app:application\n").expect("valid");
        assert_eq!(c.wsgi_entry, "web.app:application");
        assert_eq!(
            app_module_files(WSGI_ENTRY_VAR, &c.wsgi_entry).expect("valid"),
            Some(["web/app.py".to_string(), "web/app/__init__.py".to_string()])
        );
    }

    #[test]
    fn openlambda_app_entries_name_an_attribute_of_the_entry_file() {
        let c = config("environment:\n  OL_ENTRY_FILE: web.py\n  OL_WSGI_ENTRY: my_wsgi_app\n")
            .expect("valid");
        assert_eq!(
            (c.entry_file.as_str(), c.wsgi_entry.as_str()),
            ("web.py", "my_wsgi_app")
        );
        let c = config("environment:\n  OL_ASGI_ENTRY: api\n").expect("valid");
        assert_eq!(c.wsgi_entry, "api");
        // OpenLambda's runtime takes OL_WSGI_ENTRY when both are set.
        let c =
            config("environment:\n  OL_ASGI_ENTRY: api\n  OL_WSGI_ENTRY: web\n").expect("valid");
        assert_eq!(c.wsgi_entry, "web");
        assert_eq!(
            app_module_files(ASGI_ENTRY_VAR, "api").expect("valid"),
            None
        );
    }

    #[test]
    fn reuse_sandbox_false_asks_for_a_fresh_sandbox_per_call() {
        assert!(
            config("reuse-sandbox: false\n")
                .expect("valid")
                .fresh_sandbox_per_call
        );
        assert!(
            !config("reuse-sandbox: true\n")
                .expect("valid")
                .fresh_sandbox_per_call
        );
        assert!(!config("other: 1\n").expect("valid").fresh_sandbox_per_call);
    }

    #[test]
    fn mistakes_are_named() {
        for (yaml, needle) in [
            ("limits:\n  memroy_mb: 1\n", "unknown field `memroy_mb`"),
            ("limits:\n  memory_mb: -1\n", "memory_mb"),
            (
                "isolation: docker\n",
                "isolation must be 'sock' or 'gvisor', not 'docker'",
            ),
            (
                "environment:\n  OL_ENTRY_FILE: ../x.py\n",
                "OL_ENTRY_FILE '../x.py' must be a relative path",
            ),
            (
                "environment:\n  OL_ENTRY_FILE: /x.py\n",
                "OL_ENTRY_FILE '/x.py'",
            ),
            (
                "environment:\n  OL_WSGI_ENTRY: my-app\n",
                "OL_WSGI_ENTRY 'my-app' must be a Python name such as 'app', or 'module:app'",
            ),
            (
                "environment:\n  OL_ASGI_ENTRY: m:app\n",
                "OL_ASGI_ENTRY 'm:app' must be a Python name such as 'app'",
            ),
            (
                "environment:\n  OL_ENTRY_FILE: main.txt\n",
                "OL_ENTRY_FILE 'main.txt' must name a Python file ending in .py",
            ),
            ("reuse-sandbox: maybe\n", "reuse-sandbox"),
            (
                "environment:\n  X: [1]\n",
                "environment variable 'X' must be a string",
            ),
            ("triggers:\n  http: [{verb: GET}]\n", "triggers.http entry"),
            (
                "triggers:\n  cron: ['* * * * *']\n",
                "triggers.cron entry must be",
            ),
            (
                "triggers:\n  cron: [{every: 5m}]\n",
                "triggers.cron entry must be",
            ),
            (
                "triggers:\n  cron: [{schedule: 5}]\n",
                "triggers.cron entry must be",
            ),
            (
                "triggers:\n  cron: [{schedule: ''}]\n",
                "triggers.cron schedule '' is not a cron schedule: it is empty",
            ),
            (
                "triggers:\n  cron: [{schedule: '* * *'}]\n",
                "triggers.cron schedule '* * *' is not a cron schedule: it has 3 fields",
            ),
            (
                "triggers:\n  cron: [{schedule: '@every 1m'}]\n",
                "schedule '@every 1m' is not a cron schedule: @every is not supported",
            ),
            (
                "triggers:\n  cron: [{schedule: '*/5 25 * * *'}]\n",
                "schedule '*/5 25 * * *' is not a cron schedule",
            ),
            (
                "triggers:\n  cron: [{schedule: '0 0 31 2 *'}]\n",
                "schedule '0 0 31 2 *' is not a cron schedule: it never fires",
            ),
            ("triggers: [oops\n", "invalid ol.yaml"),
        ] {
            let err = config(yaml).expect_err(yaml).to_string();
            assert!(err.starts_with("invalid ol.yaml: "), "{err}");
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn kafka_triggers_are_read_in_openlambdas_format() {
        let c = config(
            "triggers:\n  http:\n    - method: POST\n  kafka:\n\
             \x20   - bootstrap_servers: [\"localhost:9092\", \"10.0.0.2:19092\", \"[::1]:9092\"]\n\
             \x20     topics: [my-topic, other.topic_2]\n\
             \x20     auto_offset_reset: earliest\n\
             \x20   - bootstrap_servers: [kafka:9092]\n\
             \x20     topics: [events]\n\
             \x20     group_id: ignored-as-in-openlambda\n",
        )
        .expect("valid");
        assert_eq!(
            c.kafka,
            [
                KafkaTrigger {
                    bootstrap_servers: vec![
                        "localhost:9092".into(),
                        "10.0.0.2:19092".into(),
                        "[::1]:9092".into()
                    ],
                    topics: vec!["my-topic".into(), "other.topic_2".into()],
                    auto_offset_reset: "earliest".into(),
                },
                // OpenLambda starts at the end when it is not "earliest".
                KafkaTrigger {
                    bootstrap_servers: vec!["kafka:9092".into()],
                    topics: vec!["events".into()],
                    auto_offset_reset: "latest".into(),
                },
            ]
        );
        assert!(config("other: 1\n").expect("valid").kafka.is_empty());
    }

    #[test]
    fn kafka_trigger_mistakes_are_named() {
        let trigger = |body: &str| format!("triggers:\n  kafka:\n    - {body}\n");
        for (yaml, needle) in [
            (
                trigger("topics: [t]"),
                "triggers.kafka[0] has no bootstrap_servers",
            ),
            (
                trigger("bootstrap_servers: []\n      topics: [t]"),
                "triggers.kafka[0] has no bootstrap_servers",
            ),
            (
                trigger("bootstrap_servers: [\"k:9092\"]"),
                "triggers.kafka[0] has no topics",
            ),
            (
                trigger("bootstrap_servers: [\"k:9092\"]\n      topics: [\"a b\"]"),
                "topic 'a b' is not a Kafka topic name",
            ),
            (
                trigger("bootstrap_servers: [\"k:9092\"]\n      topics: [t]\n      auto_offset_reset: smallest"),
                "triggers.kafka[0] auto_offset_reset must be 'earliest' or 'latest', not 'smallest'",
            ),
            (
                trigger("bootstrap_servers: [localhost]\n      topics: [t]"),
                "bootstrap server 'localhost' must be host:port",
            ),
            (
                trigger("bootstrap_servers: [\"k:0\"]\n      topics: [t]"),
                "bootstrap server 'k:0' must end in a port from 1 to 65535",
            ),
            (
                trigger("bootstrap_servers: [\"k:x\"]\n      topics: [t]"),
                "must end in a port",
            ),
            (
                trigger("bootstrap_servers: [\"a:1,b:2\"]\n      topics: [t]"),
                "bootstrap server 'a:1,b:2' has no valid host name",
            ),
            (
                trigger("bootstrap_servers: [\":9092\"]\n      topics: [t]"),
                "has no valid host name",
            ),
            (
                "triggers:\n  kafka:\n    - bootstrap_servers: [\"k:1\"]\n      topics: [t]\n    - topics: [t]\n".to_string(),
                "triggers.kafka[1] has no bootstrap_servers",
            ),
        ] {
            let err = config(&yaml).expect_err(&yaml).to_string();
            assert!(err.starts_with("invalid ol.yaml: "), "{err}");
            assert!(err.contains(needle), "{yaml:?}: {err}");
        }
    }

    #[test]
    fn requirements_lose_comments_blanks_and_continuations() {
        let reqs = parse_requirements(
            b"\xef\xbb\xbf# via pip-compile\nrequests==2.31.0  # http\n\n  idna==3.6\n\
              certifi==2024.2.2 \\\n    --hash=sha256:abc\nurl#frag==1\n",
        )
        .expect("valid");
        assert_eq!(
            reqs,
            [
                "requests==2.31.0",
                "idna==3.6",
                "certifi==2024.2.2 --hash=sha256:abc",
                "url#frag==1"
            ]
        );
        assert!(parse_requirements(b"\xff\n").is_err());
    }

    #[test]
    fn a_continuation_on_the_last_line_is_joined_like_any_other() {
        // Found by the fuzzer: the last line kept its run of spaces.
        let reqs = parse_requirements(b"pkg \\\n  ==1.0 \\\n").expect("valid");
        assert_eq!(reqs, ["pkg ==1.0"]);
    }
}
