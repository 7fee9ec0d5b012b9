//! `sock`: the command line of sock. Each subcommand lives in its own
//! module; this file only parses arguments and reports the error once.
#![forbid(unsafe_code)]

mod admin;
mod invoke;
mod logs;
mod restart;
mod supervise;
mod tree;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sock_cli::tokens::Kind;

#[derive(Parser)]
#[command(
    name = "sock",
    version,
    about = "Serverless Python functions on SOCK containers",
    after_help = sock_cli::failure::exit_codes_help()
)]
struct Cli {
    /// Gateway gRPC address [default: from ./.sock/endpoints.json, else http://127.0.0.1:7070]
    #[arg(long, global = true, env = "SOCK_CLI_GATEWAY")]
    gateway: Option<String>,
    /// Registry gRPC address [default: from ./.sock/endpoints.json, else http://127.0.0.1:7071]
    #[arg(long, global = true, env = "SOCK_CLI_REGISTRY")]
    registry: Option<String>,
    /// Bearer token for the gateway and the registry's admin API [default:
    /// the admin token (invoke: the invoke token) in <data dir>/tokens/]
    #[arg(long, global = true, env = "SOCK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data dir of a local `sock up`, read for its endpoints and tokens.
    #[arg(long, global = true, env = "SOCK_DATA_DIR", default_value = ".sock")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a function directory and upload it as a new version.
    Push {
        dir: PathBuf,
        /// Function name [default: the directory's name]
        #[arg(long)]
        name: Option<String>,
    },
    /// Call a function with a JSON event and print its JSON result.
    Invoke {
        name: String,
        /// The JSON event [default: null]
        payload: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u32>,
    },
    /// Print what a function's calls printed (stdout and stderr).
    Logs {
        name: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
    },
    /// Show every node's import-cache tree: per zygote, the cold starts
    /// it served (hits) and could not (misses), its memory and last use.
    Tree {
        /// Have each node's cache rebuild its learned tree first.
        #[arg(long)]
        rebuild: bool,
    },
    /// List functions.
    Ls,
    /// Delete a function.
    Rm { name: String },
    /// Start registry, cache, sandboxd and gateway as separate processes and
    /// stop them all on Ctrl-C.
    Up(up::UpArgs),
    /// Make the admin, invoke and node tokens of the data dir (keeping
    /// those that exist) and print where they are: for deployments that
    /// start the services themselves, such as compose.
    Tokens {
        /// Hand the tokens (all three) to this UID:GID, e.g. the services'
        /// user.
        #[arg(long, value_parser = parse_owner)]
        owner: Option<(u32, u32)>,
    },
}

fn parse_owner(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text
        .split_once(':')
        .ok_or_else(|| format!("'{text}' is not UID:GID"))?;
    let id = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("'{s}' is not a number"))
    };
    Ok((id(uid)?, id(gid)?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoints =
        sock_cli::endpoints::Endpoints::resolve(&cli.data_dir, cli.gateway, cli.registry);
    // A token given outright wins; else the one `sock up` keeps for the
    // command's kind.
    let token = |kind: Kind| {
        cli.token
            .clone()
            .or_else(|| sock_cli::tokens::read(&cli.data_dir, kind))
    };
    let admin = token(Kind::Admin);
    let admin = admin.as_deref();
    let outcome = match cli.command {
        Command::Push { dir, name } => admin::push(&endpoints, admin, &dir, name).await,
        Command::Invoke {
            name,
            payload,
            timeout_ms,
        } => {
            let invoke = token(Kind::Invoke);
            invoke::invoke(&endpoints, invoke.as_deref(), &name, payload, timeout_ms).await
        }
        Command::Logs { name, follow } => logs::logs(&endpoints, admin, &name, follow).await,
        Command::Tree { rebuild } => tree::tree(&endpoints, admin, rebuild).await,
        Command::Ls => admin::list(&endpoints, admin).await,
        Command::Rm { name } => admin::remove(&endpoints, admin, &name).await,
        Command::Up(args) => up::up(args, &cli.data_dir).await,
        Command::Tokens { owner } => up::tokens(&cli.data_dir, owner),
    };
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(sock_cli::failure::exit_code(&err))
        }
    }
}
