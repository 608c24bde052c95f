"""Fake agent that reports exactly what it received, as one JSON line (ASCII-escaped).

Usage: echo.py [--no-stdin] [ARG ...]

Prints ``{"argv": [ARG, ...], "stdin": <stdin decoded UTF-8, or null with
--no-stdin>, "stdin_hex": <hex of the raw stdin bytes>, "env": {HIVE_*: value},
"task": <HIVE_TASK_JSON decoded, or null>, "cwd": <cwd>, "pid", "pgid", "sid",
"pdeathsig": <PR_GET_PDEATHSIG signal number, or null off Linux>}``.
ARGs are taken verbatim (no option parsing after ``--no-stdin``), so hostile text
survives. With ``--no-stdin`` it never touches stdin (an agent that ignores it).
"""

import ctypes
import json
import os
import sys


def pdeathsig():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    value = ctypes.c_int(-1)
    if libc.prctl(2, ctypes.byref(value), 0, 0, 0) != 0:  # PR_GET_PDEATHSIG
        return None
    return value.value


args = sys.argv[1:]
read_stdin = True
if args[:1] == ["--no-stdin"]:
    read_stdin = False
    args = args[1:]
raw = sys.stdin.buffer.read() if read_stdin else None
task_json = os.environ.get("HIVE_TASK_JSON")
report = {
    "argv": args,
    "stdin": raw.decode("utf-8", errors="surrogateescape") if raw is not None else None,
    "stdin_hex": raw.hex() if raw is not None else None,
    "env": {k: v for k, v in os.environ.items() if k.startswith("HIVE_")},
    "task": json.loads(task_json) if task_json is not None else None,
    "cwd": os.getcwd(),
    "pid": os.getpid(),
    "pgid": os.getpgrp(),
    "sid": os.getsid(0),
    "pdeathsig": pdeathsig(),
}
print(json.dumps(report, ensure_ascii=True))
