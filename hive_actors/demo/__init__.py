"""The bundled demo: a planner, coding agents and a reviewer run as real commands.

``python -m hive_actors.run --demo`` calls :func:`prepare` to write the demo's
configuration into a fresh temporary directory, then runs the hive on it until it
is idle. The agents are the small Python scripts next to this module, started with
the current interpreter (``sys.executable``), so the demo works from an installed
wheel with nothing else on the machine.
"""

from __future__ import annotations

import json
import string
import sys
import tempfile
from importlib import resources
from pathlib import Path

#: The plan request the demo submits (the bundled planner splits it into six tasks).
REQUEST_TITLE = "Build a tiny key-value store"
REQUEST_PROMPT = "Build a tiny key-value store library with a command line, tests and docs."

_SCRIPTS = ("agent", "planner", "reviewer")


def _toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string for any path.
    return json.dumps(text)


def prepare(directory: str | Path | None = None) -> Path:
    """Write the demo's ``hive.toml`` into ``directory`` (a new temporary directory
    when ``None``) and return the file's path. The database and the workspaces go
    next to it."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="hive-demo-")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    package = resources.files(__name__)
    template = string.Template((package / "demo.toml").read_text(encoding="utf-8"))
    values = {"python": _toml_string(sys.executable)}
    for name in _SCRIPTS:
        values[name] = _toml_string(str(Path(str(package / f"{name}.py")).resolve()))
    config = directory / "hive.toml"
    config.write_text(template.substitute(values), encoding="utf-8")
    return config
