"""The demo's reviewer: checks the files an agent wrote in the task's workspace.

Run by the hive as a command reviewer (``[python, reviewer.py]``) in the task's
workspace, with the task (its ``result`` set to the agent's result) in
``HIVE_TASK_JSON``. It approves when every file the agent names exists, is not empty
and has no ``TODO`` left; otherwise it rejects with feedback the agent gets on its
next attempt. It answers with a JSON object ``{"approved": bool, "feedback": str}``
on the last line of stdout.
"""

import json
from pathlib import Path

from _task import load_task  # the sibling _task.py (scripts run by path)


def review(result: object) -> tuple[bool, str]:
    """Return ``(approved, feedback)`` for an agent's ``result``."""
    files = result.get("files") if isinstance(result, dict) else None
    if not files:
        return False, "the agent reported no files; write the file the task asks for"
    for name in files:
        path = Path(name)
        if not path.is_file() or not path.read_text(encoding="utf-8").strip():
            return False, f"{name} is missing or empty"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "TODO" in line:
                return False, f"{name}:{number} still has a TODO ({line.strip()}); finish it"
    return True, "looks good: " + ", ".join(files)


def main() -> None:
    """Review the task in ``HIVE_TASK_JSON`` and print the verdict."""
    task = load_task()
    approved, feedback = review(task.get("result"))
    print(json.dumps({"approved": approved, "feedback": feedback}))


if __name__ == "__main__":
    main()
