//! `sock-bench`: sock against fork-exec, unshare, bwrap, gVisor and Docker
//! on this machine, in one run. Writes RESULTS.md and SVG plots.
#![forbid(unsafe_code)]

mod baselines;
mod density;
mod plot;
mod report;
mod run;
mod sock;
mod stats;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmarks sock against fork-exec, unshare, bwrap, gVisor and Docker")]
pub struct Args {
    /// A smoke run in under a minute (few iterations), for CI.
    #[arg(long)]
    quick: bool,
    /// Where RESULTS.md and the plots go [default: bench/, or
    /// target/bench-quick with --quick]
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("sock-bench creates sandboxes and needs root; run it with sudo");
    }
    let out = args.out.unwrap_or_else(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        if args.quick {
            root.join("../target/bench-quick")
        } else {
            root
        }
    });
    std::fs::create_dir_all(&out)?;
    let results = tokio::runtime::Runtime::new()?.block_on(run::run(args.quick))?;
    report::write(&out, &results)?;
    println!(
        "sock-bench: results in {}",
        out.join("RESULTS.md").display()
    );
    Ok(())
}
