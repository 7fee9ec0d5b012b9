#!/bin/sh
# Prints the system calls that workloads.py makes and seccomp/sandbox.json
# does not allow (README.md, "Extending the list").
#   trace.sh [PYTHON [PACKAGE...]]
# PYTHON defaults to /usr/bin/python3 (what sandboxes run); the packages,
# installed as wheels from PyPI into a temporary dir, default to the ones
# workloads.py exercises. Needs strace.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-/usr/bin/python3}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] || set -- numpy pandas flask fastapi uvicorn requests
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip install -q --target "$work/site" --only-binary :all: "$@"
for workload in stdlib numpy pandas flask fastapi requests; do
    PYTHONPATH="$work/site" strace -f -c -qq -o "$work/$workload.strace" \
        "$python" -B "$here/workloads.py" "$workload"
done
"$python" - "$here/../sandbox.json" "$work"/*.strace <<'PY'
import json, sys
rules = json.load(open(sys.argv[1]))
allowed = {r["syscall"] for r in rules["allow"]["filter"]}
for path in sys.argv[2:]:
    seen = set()
    for line in open(path):
        fields = line.split()
        # strace -c rows: % time, seconds, usecs/call, calls, [errors,] name
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            seen.add(fields[-1])
    # clone3 gets ENOSYS on purpose: glibc then falls back to clone.
    missing = sorted(seen - allowed - {"clone3"})
    print(path.rsplit("/", 1)[1], "calls not allowed:", " ".join(missing) or "none")
PY
