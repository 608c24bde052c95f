"""Fake command-line agents for tests: small Python scripts with a predictable CLI.

Build an argv with :func:`agent` (``agent("echo.py", "{prompt}")`` gives
``[sys.executable, "<abs path>/echo.py", "{prompt}"]``), usable as an argv template.
Every script documents its CLI in its module docstring; ``python X.py --help`` prints it.

=================  ==============================================================
script             behaviour
=================  ==============================================================
``succeed.py``     prints a line, then a JSON object as its last line; exit 0
                   (``--result JSON`` to choose the object, ``--exit-code N``)
``fail_n.py``      fails (exit 1) its first N runs in a workspace, counting in a
                   file there, then succeeds with ``{"ok": true, "runs": k}``
``hang.py``        prints ``started <pid>`` then sleeps forever
                   (``--ignore-term`` ignores SIGTERM)
``spew.py``        prints N MiB fast to stdout/stderr, then a JSON last line
``bad_json.py``    ends stdout with a last line that is not a JSON object
``binary.py``      writes invalid UTF-8 / binary bytes to stdout and stderr
``write_files.py`` writes NAME=CONTENT files into its cwd (the workspace)
``echo.py``        prints JSON of its argv, stdin, HIVE_* env, cwd, pgid, pdeathsig
``grandchild.py``  starts a grandchild that sleeps forever (same process group),
                   writes its pid to a file, then exits or hangs
=================  ==============================================================
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The 64-byte line ``spew.py`` repeats (kept in step with ``spew.py``'s ``LINE``).
SPEW_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n"

#: The folder holding the fake agents.
AGENTS_DIR = Path(__file__).resolve().parent


def agent(script: str, *args: str) -> list[str]:
    """An argv (template) running fake agent ``script`` with this Python and ``args``."""
    path = AGENTS_DIR / script
    if not path.is_file():
        raise FileNotFoundError(f"no fake agent {script!r} in {AGENTS_DIR}")
    return [sys.executable, str(path), *args]


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process of group ``pgid`` exists.

    Reads /proc rather than signalling the group: PID 1 in these containers does not
    reap orphans, so a killed grandchild may linger as a zombie.
    """
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
