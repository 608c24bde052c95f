"""Fake agent that succeeds: prints a progress line, then a JSON object as its last line.

Usage: succeed.py [--result JSON] [--exit-code N] [--stderr TEXT] [ARG ...]

The last stdout line is ``--result`` verbatim when given (any text: use it to make a
reviewer print ``{"approved": true}`` or a planner print ``{"tasks": [...]}``), else
``{"ok": true, "args": [ARG ...]}``. ``--stderr`` is written to stderr first. Exits
with ``--exit-code`` (default 0). Never reads stdin.
"""

import argparse
import json
import sys

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--result")
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--stderr")
parser.add_argument("args", nargs="*")
opts = parser.parse_args()
if opts.stderr is not None:
    print(opts.stderr, file=sys.stderr, flush=True)
print("working...", flush=True)
print(opts.result if opts.result is not None else json.dumps({"ok": True, "args": opts.args}))
sys.exit(opts.exit_code)
