//! `sock-bench`: sock against fork-exec, unshare, bwrap, gVisor and Docker
//! on this machine, in one run, then cold starts of functions that import
//! real packages, then a soak under mixed and abusive load. Writes
//! RESULTS.md, RELIABILITY.md and SVG plots.
#![forbid(unsafe_code)]

mod baselines;
mod density;
mod packages;
mod plot;
mod profile;
mod report;
mod run;
mod soak;
mod sock;
mod stats;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Benchmarks sock against fork-exec, unshare, bwrap, gVisor and Docker")]
pub struct Args {
    /// A smoke run (few iterations, a package built here instead of
    /// PyPI's), for CI.
    #[arg(long)]
    quick: bool,
    /// Run one phase only; its section of RESULTS.md is rewritten, the
    /// others are kept.
    #[arg(long, value_enum)]
    only: Option<Phase>,
    /// Where RESULTS.md and the plots go [default: bench/, or
    /// target/bench-quick with --quick]
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long the soak runs [default: 30, or 1 with --quick]
    #[arg(long)]
    minutes: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Phase {
    /// Cold starts of functions importing real packages.
    Packages,
    /// Where a call's time goes: spans of cold and warm calls, and flame
    /// graphs (perf) of the machine while they run.
    Profile,
    /// Warm calls only (1 client's latency, 8 clients' throughput),
    /// printed and not written to RESULTS.md: to try a change to the warm
    /// path in a minute against the same figures the full run reports.
    Warm,
    /// A cluster whose memory pool is smaller than the demand, under warm,
    /// cold and abusive calls for `--minutes`: sandboxd's RSS, fds and
    /// cgroups and the calls' p99 over time, into RELIABILITY.md.
    Soak,
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
    tokio::runtime::Runtime::new()?.block_on(async {
        let bin = tokio::task::spawn_blocking(run::bin_dir).await??;
        if bin.file_name().is_none_or(|p| p != "release") {
            eprintln!(
                "sock-bench: *** {} binaries: the figures are not representative ***",
                bin.display()
            );
        }
        if args.only == Some(Phase::Profile) {
            return report::write_profile(&out, &profile::run(&bin, &out, args.quick).await?);
        }
        if args.only == Some(Phase::Warm) {
            return run::warm_only(&bin, args.quick).await;
        }
        if args.only.is_none() {
            report::write(&out, &run::run(&bin, args.quick).await?)?;
        }
        if args.only != Some(Phase::Soak) {
            report::write_packages(&out, &packages::run(&bin, args.quick).await?)?;
            println!(
                "sock-bench: results in {}",
                out.join("RESULTS.md").display()
            );
        }
        if args.only.is_none_or(|p| p == Phase::Soak) {
            let soaked = soak::run(&bin, args.quick, args.minutes).await?;
            report::write_soak(&out, &soaked)?;
            soak::verdict(&soaked, &out)?;
        }
        Ok(())
    })
}
