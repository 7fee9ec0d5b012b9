# The baselines' per-call program, as OpenFaaS's classic watchdog runs one:
# a fresh interpreter reads the event on stdin, imports f.py from the code
# dir given as argv[1], and writes f(event) as JSON on stdout.
import json
import sys

sys.path.insert(0, sys.argv[1])
from f import f  # noqa: E402

json.dump(f(json.load(sys.stdin)), sys.stdout)
