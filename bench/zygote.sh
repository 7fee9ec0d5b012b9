#!/usr/bin/env bash
# Cold starts three ways (fresh sandbox, fork of the root zygote, fork of
# a zygote that imported the function's package): p50/p99 over CALLS
# calls each. Needs root. Usage: bench/zygote.sh [CALLS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p sock-sandboxd --bin sock-sandboxd --example zygote_bench
exec target/release/examples/zygote_bench "${1:-100}" target/release/sock-sandboxd
