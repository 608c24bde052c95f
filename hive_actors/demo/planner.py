"""The demo's planner: turns the plan request into six subtasks with dependencies.

Run by the hive as a command agent (``[python, planner.py]``). A real planner would
ask a model; this one always answers the same plan for building a tiny key-value
store, so the demo is reproducible. It prints one JSON document on stdout:
``{"tasks": [{"key", "title", "kind", "prompt", "depends_on", "priority"}, ...]}``.

Each prompt ends with a ``[demo]`` line that the demo agent reads: which file to
write, and an optional quirk (``todo``: the first attempt leaves a TODO that the
reviewer rejects; ``flaky``: the first run crashes and is retried).
"""

import json
import sys

from _task import load_task  # the sibling _task.py (scripts run by path)

PLAN = [
    ("models", "Design the data model", "code", [],
     "Define the Record type the store keeps.", "models.py", None),
    ("storage", "Write the storage layer", "code", ["models"],
     "Persist records to a JSON file, atomically.", "storage.py", None),
    ("cli", "Write the command line", "code", ["models"],
     "A `kv get/set` command line over the store.", "cli.py", None),
    ("api", "Write the public API", "code", ["storage"],
     "get/set/delete on top of the storage layer, with clear errors.", "api.py", "todo"),
    ("tests", "Write and run the tests", "test", ["api", "cli"],
     "Cover get/set/delete and the command line.", "test_api.py", "flaky"),
    ("docs", "Write the README", "code", ["api", "cli"],
     "Explain how to install and use the store.", "README.md", None),
]



def main() -> None:
    """Print the plan for the request found in ``HIVE_TASK_JSON`` (or stdin)."""
    task = load_task()
    request = task.get("prompt") or sys.stdin.read()
    tasks = []
    for priority, (key, title, kind, deps, text, filename, quirk) in enumerate(reversed(PLAN)):
        marker = f"[demo] file={filename}" + (f" quirk={quirk}" if quirk else "")
        tasks.append({
            "key": key,
            "title": title,
            "kind": kind,
            "prompt": f"{text}\nPart of: {request.strip()}\n{marker}",
            "depends_on": deps,
            "priority": priority,
        })
    tasks.reverse()
    print(json.dumps({"tasks": tasks}))


if __name__ == "__main__":
    main()
