"""What the demo's scripts share: reading the task the hive hands them."""

import json
import os


def load_task() -> dict:
    """The task as JSON: ``HIVE_TASK_JSON``, or the file named by
    ``HIVE_TASK_JSON_FILE`` when the hive put a large task there."""
    path = os.environ.get("HIVE_TASK_JSON_FILE")
    if path:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    return json.loads(os.environ.get("HIVE_TASK_JSON") or "{}")
