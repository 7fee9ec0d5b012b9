//! What every sock service shares: config loading in layers, the shutdown
//! signal, and the frame of a gRPC server (health, reflection, graceful
//! stop). Service logic never lives here.
#![forbid(unsafe_code)]

mod config;
mod server;
mod shutdown;

pub use config::{ConfigError, load_config};
pub use server::{bind, with_standard_services};
pub use shutdown::shutdown_on_signals;
