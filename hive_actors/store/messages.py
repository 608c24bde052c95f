"""Operation messages understood by the DB actor.

Each is a small frozen class. Messages that change state carry optional ``actor``
(who acts: a worker name, ``"person"``...) and ``correlation_id`` keywords, written
into the event rows they produce. Field validators reject malformed messages at the
boundary, before they reach the DB actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from attrs import validators as v

from ._model import STATUSES

_pos_int = [v.instance_of(int), v.ge(1)]


def _positive(_inst: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _name(_inst: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _ids(value: Sequence[int] | int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,)
    return tuple(value)


def _check_ids(_inst: object, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    for item in value:
        if not isinstance(item, int) or isinstance(item, bool):
            raise ValueError(f"{attribute.name} must hold task ids (ints), got {item!r}")


_actor = attrs.field(default=None, kw_only=True)
_corr = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Submit:
    """Store a new task (``queued``); rejected with ``DependencyError`` if a
    dependency or the parent does not exist. A task whose dependency already failed
    or was cancelled is stored ``cancelled``."""

    kind: str = attrs.field(validator=_name)
    title: str = attrs.field(validator=v.instance_of(str))
    prompt: str = attrs.field(default="", validator=v.instance_of(str))
    priority: int = attrs.field(default=0, validator=v.instance_of(int))
    depends_on: tuple[int, ...] = attrs.field(default=(), converter=_ids, validator=_check_ids)
    max_attempts: int = attrs.field(default=3, validator=_pos_int)
    retry_delay: float = attrs.field(default=1.0, validator=_non_negative)
    metadata: Any = None
    parent_id: int | None = None
    delay: float = attrs.field(default=0.0, validator=_non_negative)
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Claim:
    """Claim up to ``n`` ready tasks of ``kind`` (priority, then age) for ``worker``;
    with ``workers`` (``n`` names), the i-th task claimed is leased to the i-th name
    (a pool claiming for its free slots)."""

    kind: str = attrs.field(validator=_name)
    n: int = attrs.field(validator=_pos_int)
    worker: str = attrs.field(validator=_name)
    lease_seconds: float = attrs.field(validator=_positive)
    workers: tuple[str, ...] | None = attrs.field(
        default=None, kw_only=True, converter=attrs.converters.optional(tuple)
    )
    actor: str | None = _actor
    correlation_id: str | None = _corr

    @workers.validator
    def _check_workers(self, attribute: attrs.Attribute, value: tuple[str, ...] | None) -> None:
        _check_worker_names(self.n, value)


def _check_worker_names(n: int, value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if len(value) != n or not all(isinstance(w, str) and w for w in value):
        raise ValueError(f"workers must be {n} non-empty strings (one per task), got {value!r}")


@attrs.frozen
class ClaimReview:
    """Claim up to ``n`` tasks waiting in ``review`` (of ``kinds``, or any kind) for
    ``worker``, each with a run row for the review; with ``workers`` (``n`` names),
    the i-th task claimed is leased to the i-th name."""

    n: int = attrs.field(validator=_pos_int)
    worker: str = attrs.field(validator=_name)
    lease_seconds: float = attrs.field(validator=_positive)
    kinds: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple)
    )
    workers: tuple[str, ...] | None = attrs.field(
        default=None, kw_only=True, converter=attrs.converters.optional(tuple)
    )
    actor: str | None = _actor
    correlation_id: str | None = _corr

    @workers.validator
    def _check_workers(self, attribute: attrs.Attribute, value: tuple[str, ...] | None) -> None:
        _check_worker_names(self.n, value)


@attrs.frozen
class Heartbeat:
    """Extend a running task's lease to ``now + lease_seconds``."""

    task_id: int
    token: int
    lease_seconds: float = attrs.field(validator=_positive)
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class RecordRun:
    """Record facts about the current attempt or review (the agent's or reviewer
    command's process group id, exit code, output tail) on its run row, without
    changing the task's status: the task must be ``running`` or ``review`` with
    ``token``."""

    task_id: int
    token: int
    pgid: int | None = None
    exit_code: int | None = None
    output_tail: str | bytes | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Succeed:
    """The attempt succeeded with ``result`` (JSON-able): to ``review`` if ``review``,
    else ``done``."""

    task_id: int
    token: int
    result: Any = None
    review: bool = False
    exit_code: int | None = None
    output_tail: str | bytes | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Fail:
    """The attempt failed: re-queued after backoff (or after ``delay`` seconds when
    given) while attempts remain and ``retry`` is true, else ``failed``."""

    task_id: int
    token: int
    error: str = attrs.field(validator=v.instance_of(str))
    retry: bool = True
    delay: float | None = attrs.field(default=None, validator=_non_negative)
    exit_code: int | None = None
    output_tail: str | bytes | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Release:
    """Give a running task back (e.g. at shutdown): re-queued at once, and the
    attempt is not counted against ``max_attempts``. A task under review is given
    back by its reviewer the same way: it stays in ``review``, for another one."""

    task_id: int
    token: int
    reason: str = "released"
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class StorePlan:
    """Complete a running ``plan`` task by inserting its subtasks, atomically."""

    task_id: int
    token: int
    subtasks: tuple[Any, ...] = attrs.field(converter=tuple)
    result: Any = None
    review: bool = False
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Approve:
    """Approve a task in ``review`` (``done``). ``token`` is the reviewer's lease
    token; ``None`` means a person approves."""

    task_id: int
    token: int | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Reject:
    """Reject a task in ``review``: back to ``queued`` with ``feedback`` and no delay,
    or ``failed`` when its attempts are exhausted."""

    task_id: int
    feedback: str = attrs.field(validator=v.instance_of(str))
    token: int | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Escalate:
    """Hand a task in ``review`` to a person (``escalated``)."""

    task_id: int
    reason: str = ""
    token: int | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Decide:
    """A person's decision on an ``escalated`` (or ``review``) task: ``done`` if
    ``approve``, else back to ``queued`` with ``feedback``."""

    task_id: int
    approve: bool
    feedback: str | None = None
    actor: str | None = _actor
    correlation_id: str | None = _corr


def _reason(_inst: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


@attrs.frozen
class Cancel:
    """Cancel a task that is not terminal, and transitively its waiting dependents.

    ``reason`` is free text, recorded as the task's error. The task stays cancelled
    when a dependency is retried, whatever the reason says: only the dependents the
    cascade cancelled come back."""

    task_id: int
    reason: str = attrs.field(default="cancelled", validator=_reason)
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Retry:
    """Re-queue a ``failed`` or ``cancelled`` task with a fresh attempt budget, and,
    transitively, the dependents the cascade cancelled, once none of their
    dependencies is failed or cancelled."""

    task_id: int
    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class SweepLeases:
    """Expire every lease whose time has passed: running tasks are re-queued after
    backoff (or failed), review leases are released."""

    actor: str | None = _actor
    correlation_id: str | None = _corr


@attrs.frozen
class Get:
    """Read one task."""

    task_id: int


@attrs.frozen
class ListTasks:
    """Read tasks, oldest first, filtered by status, kind and parent."""

    status: str | tuple[str, ...] | None = None
    kind: str | None = None
    parent_id: int | None = None
    limit: int | None = None
    after_id: int = 0


def _statuses(_inst: object, attribute: attrs.Attribute, value: tuple[str, ...] | None) -> None:
    if value is not None and (not value or any(s not in STATUSES for s in value)):
        raise ValueError(f"{attribute.name} must name task statuses {STATUSES}, got {value!r}")


@attrs.frozen
class Counts:
    """Count tasks by status and by kind: ``{"counts": {status: n}, "kinds": {kind:
    {status: n}}}``. With ``statuses``, only those are counted (and appear): a read
    of those statuses' tasks only, however long the history of finished ones."""

    statuses: tuple[str, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple), validator=_statuses
    )


@attrs.frozen
class EventsSince:
    """Read persisted events with ``seq > since``, in order, at most ``limit``."""

    since: int = 0
    limit: int = 1000
    task_id: int | None = None


@attrs.frozen
class GetRuns:
    """Read the attempts (runs) of one task, in order."""

    task_id: int


@attrs.frozen
class TouchHive:
    """Refresh this hive process's heartbeat in the ``hives`` table."""


#: Messages that only read.
READ_ONLY = (Get, ListTasks, Counts, EventsSince, GetRuns)

