"""Value objects returned by the store. All are immutable (``attrs.frozen``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

QUEUED = "queued"
RUNNING = "running"
REVIEW = "review"
ESCALATED = "escalated"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"

#: Every task status, in lifecycle order.
STATUSES: tuple[str, ...] = (QUEUED, RUNNING, REVIEW, ESCALATED, DONE, FAILED, CANCELLED)

#: Statuses a task never leaves on its own (only ``retry`` leaves failed/cancelled).
TERMINAL: frozenset[str] = frozenset({DONE, FAILED, CANCELLED})

#: Every event type the store writes (``task.heartbeat`` is published, never persisted).
EVENT_TYPES: tuple[str, ...] = (
    "task.queued",
    "task.started",
    "task.heartbeat",
    "task.succeeded",
    "task.failed",
    "task.retrying",
    "task.review",
    "task.approved",
    "task.rejected",
    "task.escalated",
    "task.done",
    "task.cancelled",
    "task.recovered",
    "plan.stored",
)


@attrs.frozen
class Task:
    """A task as stored, at the moment it was read or changed.

    ``attempts`` counts every claim ever made of the task; ``fencing_token`` grows by
    one at every claim (and when a running task is cancelled), and is what a worker
    passes back to heartbeat, succeed or fail. ``result`` and ``metadata`` are
    JSON-decoded. ``depends_on`` lists the ids of the tasks this one waits for.
    """

    id: int
    kind: str
    title: str
    prompt: str
    status: str
    priority: int
    attempts: int
    result: Any
    feedback: str | None
    error: str | None
    depends_on: tuple[int, ...]
    parent_id: int | None
    created_at: float
    updated_at: float
    max_attempts: int = 3
    retry_delay: float = 1.0
    fencing_token: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    not_before: float = 0.0
    metadata: Any = None

    @property
    def terminal(self) -> bool:
        """True when the task is done, failed or cancelled."""
        return self.status in TERMINAL


@attrs.frozen
class Event:
    """One state change. ``seq`` is the position in the events table (``None`` for
    ``task.heartbeat``, which is published but not persisted). ``ts`` is the store's
    clock at the transaction; ``payload`` is a JSON-able dict that always has
    ``kind`` and ``status`` (the task's status after the change) for task events."""

    seq: int | None
    ts: float
    type: str
    task_id: int | None
    actor: str | None
    correlation_id: str | None
    payload: Mapping[str, Any]


@attrs.frozen
class Run:
    """One attempt at a task, or one review of an attempt (``review`` true).

    An attempt's run is opened by a claim and closed by succeed, fail, lease expiry,
    cancel, release or recovery; ``outcome`` says which (``"succeeded"``,
    ``"failed"``, ``"expired"``, ``"cancelled"``, ``"released"``, ``"recovered"``).
    A review's run is opened by a review claim and has the ``attempt`` number of the
    attempt under review (so an attempt may have several rows: its own, then one per
    review claim); its ``outcome`` is the verdict (``"approved"``, ``"rejected"``,
    ``"escalated"``), ``"decided"`` when a person's decision ended it, or
    ``"released"`` (given back by the reviewer: shutdown, crash), ``"expired"``,
    ``"cancelled"``, ``"recovered"``. ``None`` while it is open.
    ``pgid`` is the agent's (or reviewer command's) process group id if it was
    recorded; ``output_tail`` holds at most the last 64 KiB of output (UTF-8)."""

    id: int
    task_id: int
    attempt: int
    fencing_token: int
    worker: str
    hive_id: str | None
    started_at: float
    ended_at: float | None
    exit_code: int | None
    duration: float | None
    output_tail: str | None
    pgid: int | None
    outcome: str | None
    review: bool = attrs.field(default=False, converter=bool)


@attrs.frozen
class PlannedTask:
    """One entry of a plan. ``depends_on`` holds keys of other entries of the same
    plan (strings) or ids of tasks already stored (ints)."""

    key: str
    title: str
    kind: str
    prompt: str = ""
    depends_on: tuple[str | int, ...] = attrs.field(default=(), converter=tuple)
    priority: int = 0
    max_attempts: int = 3
    retry_delay: float = 1.0
    metadata: Any = None


@attrs.frozen
class StoredPlan:
    """The result of storing a plan: the plan task after the change and the created
    subtasks by key, in the order given."""

    plan: Task
    tasks: Mapping[str, Task]


@attrs.frozen
class RecoveryReport:
    """What opening the store recovered from hive processes that are gone.

    ``requeued``/``failed``: ids of tasks that were running under a dead hive's lease
    (failed when out of attempts). ``pgids``: process group ids recorded for those
    attempts and for the reviews the dead hives held (the task stays in review for
    another reviewer), which may still be alive and should be killed before the
    tasks run (or are reviewed) again. ``dead_hives``: ids of the hive processes
    found dead."""

    hive_id: str
    requeued: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()
    pgids: tuple[int, ...] = ()
    dead_hives: tuple[str, ...] = ()
