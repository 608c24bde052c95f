"""The demo's coding agent: writes a real file into its workspace.

Run by the hive as a command agent (``[python, agent.py]``) in the task's own
workspace directory, with the task as JSON in ``HIVE_TASK_JSON``. A real agent
would be Claude Code, Codex or Aider; this one writes a small, plausible file named
by the ``[demo] file=NAME`` line of its prompt, and prints its result as a JSON
object on the last line of stdout.

Quirks, so the demo shows the hive's machinery:
- ``quirk=todo``: without reviewer feedback it leaves a ``TODO`` in the file (the
  reviewer rejects that); with feedback it finishes the job.
- ``quirk=flaky``: the first run in a workspace crashes (exit 1); the hive retries.

``HIVE_DEMO_PACE`` (default 1.0) scales the time each run pretends to think.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

from _task import load_task  # the sibling _task.py (scripts run by path)

PACE = float(os.environ.get("HIVE_DEMO_PACE", "1.0"))  # scales the simulated work



def _content(filename: str, title: str, finished: bool) -> str:
    stem = filename.rsplit(".", 1)[0]
    if filename.endswith(".md"):
        return f"# kv\n\n{title}.\n\n```sh\nkv set colour blue\nkv get colour\n```\n"
    body = [f'"""{title} (written by the demo agent)."""', ""]
    if stem == "models":
        body += ["import dataclasses", "", "", "@dataclasses.dataclass(frozen=True)",
                 "class Record:", '    """One key and its value."""', "",
                 "    key: str", "    value: str"]
    elif stem == "test_api":
        body += ["from api import delete, get, put", "", "", "def test_roundtrip():",
                 '    put("a", "1")', '    assert get("a") == "1"', '    delete("a")']
    else:
        body += [f"def {stem}_main(key: str) -> str:", f'    """Entry point of {stem}."""']
        if finished:
            body += ["    if not key:", '        raise KeyError("empty key")', "    return key"]
        else:
            body += ["    # TODO: handle missing keys", "    return key"]
    return "\n".join(body) + "\n"


def main() -> int:
    """Do the task described by ``HIVE_TASK_JSON``; return the exit status."""
    task = load_task()
    prompt = task.get("prompt", "")
    match = re.search(r"\[demo\] file=(\S+)(?: quirk=(\w+))?", prompt)
    filename, quirk = (match.group(1), match.group(2)) if match else ("notes.md", None)
    runs_file = Path(".demo-runs")
    runs = (int(runs_file.read_text()) if runs_file.exists() else 0) + 1
    runs_file.write_text(str(runs))
    print(f"agent: task {task.get('id')} attempt {task.get('attempts')}: {task.get('title')}")
    time.sleep(PACE * (0.3 + 0.1 * (len(filename) % 4)))  # "thinking"
    if quirk == "flaky" and runs == 1:
        print("agent: simulated crash: the test database was locked", file=sys.stderr)
        return 1
    feedback = task.get("feedback")
    finished = quirk != "todo" or bool(feedback)
    Path(filename).write_text(_content(filename, task.get("title", ""), finished), encoding="utf-8")
    result = {"files": [filename], "attempt": task.get("attempts"), "run": runs}
    if feedback:
        result["addressed"] = feedback
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
