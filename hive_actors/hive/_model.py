"""Values of the Hive layer: verdicts, and the messages its actors exchange."""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..actors import ActorRef
from ..store import Task


@attrs.frozen
class Verdict:
    """A reviewer's decision on one attempt.

    ``approved=True``: the task is done.  ``approved=False``: it goes back to the
    queue with ``feedback``, which the next attempt sees as ``Task.feedback``.
    ``escalate=True``: the task waits (``escalated``) until a person decides with
    ``hive review ID --approve|--reject`` or ``Hive.review``.
    """

    approved: bool = False
    feedback: str = attrs.field(default="", converter=lambda value: "" if value is None else str(value))
    escalate: bool = False


@attrs.frozen
class Assign:
    """Queen → slot actor: run one attempt of ``task`` (claimed, with its token)."""

    task: Task


@attrs.frozen
class SlotFree:
    """Slot actor → Queen: ``slot`` of ``pool`` is ready for the next task.

    ``restarted`` says the slot was rebuilt after a crash: whatever the Queen had
    assigned to it is given back to the queue at once.
    """

    pool: str
    slot: ActorRef
    restarted: bool = False


@attrs.frozen
class Pump:
    """→ Queen: claim work for free slots. Left by the runtime's store watcher when
    store events say work may be ready (one at a time), and by the Queen at start."""


@attrs.frozen
class Tick:
    """Timer → Queen: periodic claim pass and sweep of expired leases."""

    sweep: bool = True


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as JSON, or None if it can."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"result is not JSON-serialisable: {exc}"
    return None
