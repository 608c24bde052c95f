"""Fake agent that leaves a grandchild behind (which would be orphaned).

Usage: grandchild.py PID_FILE [--then exit|hang] [--new-session]

Starts a grandchild process that sleeps forever, in the agent's own process group
(unless ``--new-session``: then it escapes into a session of its own), writes the
grandchild's pid to PID_FILE, prints ``{"grandchild": <pid>}`` (flushed), then
``--then exit`` (default) exits 0 at once, leaving the grandchild running, or
``--then hang`` sleeps forever.
"""

import argparse
import json
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("pid_file")
parser.add_argument("--then", choices=["exit", "hang"], default="exit")
parser.add_argument("--new-session", action="store_true")
opts = parser.parse_args()
child = subprocess.Popen(
    [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"],
    stdin=subprocess.DEVNULL,
    start_new_session=opts.new_session,
)
with open(opts.pid_file, "w") as f:
    f.write(str(child.pid))
print(json.dumps({"grandchild": child.pid}), flush=True)
if opts.then == "hang":
    while True:
        time.sleep(3600)
