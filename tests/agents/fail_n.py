"""Fake agent that fails its first N runs in a workspace, then succeeds.

Usage: fail_n.py N [--counter FILE] [--exit-code CODE]

Counts runs in ``FILE`` (default ``.fail_n_count``, relative to the cwd, i.e. the
task's workspace, which is kept across attempts). Runs 1..N print ``failing run k of
N`` to stderr and exit with CODE (default 1); later runs print
``{"ok": true, "runs": k}`` and exit 0.
"""

import argparse
import json
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("n", type=int)
parser.add_argument("--counter", default=".fail_n_count")
parser.add_argument("--exit-code", type=int, default=1)
opts = parser.parse_args()
counter = Path(opts.counter)
runs = (int(counter.read_text()) if counter.exists() else 0) + 1
# Atomically: a run killed mid-write (the chaos tests SIGKILL the hive, and so its
# agents, at random moments) must leave the old count, never an empty file.
partial = counter.with_name(counter.name + ".partial")
partial.write_text(str(runs))
os.replace(partial, counter)
if runs <= opts.n:
    print(f"failing run {runs} of {opts.n}", file=sys.stderr)
    sys.exit(opts.exit_code)
print(json.dumps({"ok": True, "runs": runs}))
