"""Fake agent that never finishes.

Usage: hang.py [--ignore-term] [--pid-file FILE]

Prints ``started <pid>`` (flushed), writes its pid to ``--pid-file`` if given, then
sleeps forever. With ``--ignore-term`` it ignores SIGTERM, so only SIGKILL stops it.
"""

import argparse
import os
import signal
import time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--pid-file")
opts = parser.parse_args()
if opts.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if opts.pid_file:
    with open(opts.pid_file, "w") as f:
        f.write(str(os.getpid()))
print(f"started {os.getpid()}", flush=True)
while True:
    time.sleep(3600)
