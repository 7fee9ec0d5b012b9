//! The first steps of every service binary's `main`.
//!
//! Every `services/<name>` crate is a library (`Config`, `run`) plus a small
//! `main.rs` binary `sock-<name>`: `main` calls [`start`] (parses
//! `--config FILE`, loads the config in layers, installs telemetry, logs the
//! effective config at debug level with secrets redacted), binds, and calls
//! `run(config, listener(s), shutdown)`, where `shutdown` is the token of
//! [`crate::shutdown_on_signals`].
use std::fmt::Debug;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ConfigError;

/// The command line every service binary takes.
#[derive(Debug, Parser)]
struct ServiceArgs {
    /// TOML file whose [<service>] section overrides the defaults;
    /// SOCK_<SERVICE>_<KEY> environment variables override both.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// A started service: its effective config and the telemetry guard that
/// must live as long as the process.
pub struct Started<T> {
    pub config: T,
    pub telemetry: sock_telemetry::Telemetry,
}

/// Parses `sock-<service> [--config FILE]`, loads the config in layers,
/// installs telemetry, and logs the effective config at debug level (the
/// config's `Debug` redacts secrets).
pub fn start<T>(service: &'static str, about: &'static str) -> Result<Started<T>, ConfigError>
where
    T: Default + Serialize + DeserializeOwned + Debug,
{
    // Usage shows the binary's own name (clap takes it from argv[0]).
    let matches = ServiceArgs::command().about(about).get_matches();
    let args = ServiceArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config: T = crate::load_config(service, args.config.as_deref())?;
    let telemetry = sock_telemetry::init(service);
    tracing::debug!(?config, "effective config");
    Ok(Started { config, telemetry })
}
