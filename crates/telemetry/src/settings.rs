//! What the standard `OTEL_*` environment variables ask for, decided in
//! one pure function so the rules are testable without touching the
//! process environment.

/// The telemetry a process should set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Whether the OpenTelemetry SDK runs at all. When it does but nothing
    /// is exported, spans still get ids, so trace context passes through.
    pub sdk_enabled: bool,
    /// The OTLP endpoint spans go to, when they are exported at all.
    pub export_to: Option<String>,
}

impl Settings {
    /// Reads the settings of `service` ("gateway", …) through `var`, which
    /// looks a variable up (normally `std::env::var`).
    pub fn from_env(service: &str, var: impl Fn(&str) -> Option<String>) -> Settings {
        let set = |name: &str| {
            var(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let sdk_enabled = !set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let exporter_off =
            set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        Settings {
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| {
                match service.strip_prefix("sock-") {
                    Some(_) => service.to_string(),
                    None => format!("sock-{service}"),
                }
            }),
            sdk_enabled,
            export_to: endpoint.filter(|_| sdk_enabled && !exporter_off),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "http://127.0.0.1:4317";

    fn settings(vars: &[(&str, &str)]) -> Settings {
        Settings::from_env("gateway", |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn nothing_set_means_logs_only_with_the_sock_service_name() {
        assert_eq!(
            settings(&[]),
            Settings {
                service_name: "sock-gateway".into(),
                sdk_enabled: true,
                export_to: None,
            }
        );
    }

    #[test]
    fn either_endpoint_variable_turns_export_on() {
        let general = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT)]);
        assert_eq!(general.export_to.as_deref(), Some(ENDPOINT));
        let traces = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ENDPOINT),
        ]);
        assert_eq!(traces.export_to.as_deref(), Some(ENDPOINT));
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).export_to,
            None
        );
    }

    #[test]
    fn sdk_disabled_wins_over_an_endpoint() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]);
        assert_eq!(s.export_to, None);
        assert!(!s.sdk_enabled);
        assert!(settings(&[("OTEL_SDK_DISABLED", "false")]).sdk_enabled);
    }

    #[test]
    fn traces_exporter_none_turns_export_off_but_keeps_the_sdk() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ENDPOINT),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]);
        assert_eq!(s.export_to, None);
        assert!(s.sdk_enabled);
    }

    #[test]
    fn a_service_already_named_sock_is_not_prefixed_twice() {
        assert_eq!(
            Settings::from_env("sock-cache", |_| None).service_name,
            "sock-cache"
        );
    }

    #[test]
    fn otel_service_name_overrides_the_default() {
        assert_eq!(
            settings(&[("OTEL_SERVICE_NAME", "edge")]).service_name,
            "edge"
        );
    }
}
