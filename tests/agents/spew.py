"""Fake agent that prints megabytes as fast as it can.

Usage: spew.py MIB [--stream stdout|stderr|both] [--no-result]

Writes MIB mebibytes of the repeating 64-byte line ``LINE`` (below) to the chosen
stream(s) (``both``: MIB to each), then, unless ``--no-result``, prints
``{"bytes": <bytes written to stdout before this line>}`` as its last stdout line.
Tests can rebuild the exact bytes: ``LINE * (MIB * 16384)``.
"""

import argparse
import json
import sys

LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n"
assert len(LINE) == 64

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("mib", type=float)
parser.add_argument("--stream", choices=["stdout", "stderr", "both"], default="stdout")
parser.add_argument("--no-result", action="store_true")
opts = parser.parse_args()
block = LINE * 16384  # 1 MiB
total = int(opts.mib * 16384) * 64
streams = {"stdout": [sys.stdout.buffer], "stderr": [sys.stderr.buffer]}
targets = streams.get(opts.stream, [sys.stdout.buffer, sys.stderr.buffer])
for out in targets:
    left = total
    while left:
        chunk = block[:left]
        out.write(chunk)
        left -= len(chunk)
    out.flush()
if not opts.no_result:
    written = total if sys.stdout.buffer in targets else 0
    sys.stdout.write(json.dumps({"bytes": written}) + "\n")
