"""Fake agent that writes files into its cwd (the task's workspace).

Usage: write_files.py NAME=CONTENT [NAME=CONTENT ...] [--append]

Writes each CONTENT (UTF-8) to NAME relative to the cwd, creating parent folders;
``--append`` appends instead of overwriting. Also appends the task's feedback
(``HIVE_TASK_JSON``'s ``feedback``, if any) to ``feedback.txt``, one line per run, so
rework tests can see it arrived. Prints ``{"written": [NAME, ...], "cwd": <cwd>}``.
"""

import argparse
import json
import os
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("files", nargs="+")
parser.add_argument("--append", action="store_true")
opts = parser.parse_args()
written = []
for spec in opts.files:
    name, sep, content = spec.partition("=")
    if not sep:
        parser.error(f"expected NAME=CONTENT, got {spec!r}")
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if opts.append else "w", encoding="utf-8") as f:
        f.write(content)
    written.append(name)
feedback = json.loads(os.environ.get("HIVE_TASK_JSON", "{}")).get("feedback")
if feedback:
    with open("feedback.txt", "a", encoding="utf-8") as f:
        f.write(feedback.replace("\n", " ") + "\n")
print(json.dumps({"written": written, "cwd": os.getcwd()}))
