"""Fake agent that writes bytes that are not valid UTF-8.

Usage: binary.py [--kib N] [--result]

Writes ``b"bad \\xff\\xfe utf8 \\xc3\\x28 end\\n"`` to stdout and stderr, then N KiB
(default 4) of every byte value 0..255 repeated to stdout, then a newline; with
``--result`` ends with the line ``{"binary": true}``.
"""

import argparse
import sys

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--kib", type=int, default=4)
parser.add_argument("--result", action="store_true")
opts = parser.parse_args()
out = sys.stdout.buffer
sys.stderr.buffer.write(b"bad \xff\xfe utf8 \xc3\x28 end\n")
sys.stderr.buffer.flush()
out.write(b"bad \xff\xfe utf8 \xc3\x28 end\n")
out.write(bytes(range(256)) * (opts.kib * 4))
out.write(b"\n")
if opts.result:
    out.write(b'{"binary": true}\n')
out.flush()
