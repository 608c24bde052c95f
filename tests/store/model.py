"""A small pure-Python model of the task state machine, the oracle of the property
tests. It knows nothing of SQLite: it is the DESIGN.md diagram written as code."""

from __future__ import annotations

import attrs

from hive_actors.store import (
    MAX_BACKOFF,
    DependencyError,
    IllegalTransition,
    StaleLease,
    TaskNotFound,
)

ACTIVE = ("queued", "running", "review", "escalated")


@attrs.define
class MTask:
    id: int
    kind: str
    priority: int
    deps: tuple[int, ...]
    max_attempts: int
    retry_delay: float
    status: str = "queued"
    attempts: int = 0
    base: int = 0
    token: int = 0
    lease: float | None = None
    not_before: float = 0.0
    feedback: str | None = None
    cause: int | None = None  # the dependency whose end cancelled it (the cascade)


class Model:
    """Applies one operation; returns (value or exception class, expected events).

    Events are ``(type, task_id)`` pairs in the order the store must write them.
    Delays chosen by the store's jitter are read back from the store's answer
    (``delays``) after checking they are within bounds.
    """

    def __init__(self) -> None:
        self.tasks: dict[int, MTask] = {}
        self.next_id = 1

    # -- helpers --------------------------------------------------------------

    def _get(self, task_id: int) -> MTask:
        if task_id not in self.tasks:
            raise TaskNotFound(task_id)
        return self.tasks[task_id]

    def _leased(self, task_id: int, token: int | None, statuses=("running",)) -> MTask:
        t = self._get(task_id)
        # A review nobody claimed has no lease: its token is the finished attempt's.
        if t.status not in statuses or t.token != token or (t.status == "review" and t.lease is None):
            raise StaleLease(task_id, token, t.token, t.status)
        return t

    def _cascade(self, root: int, events: list) -> None:
        stack = [root]
        while stack:
            cause = stack.pop()
            waiting = sorted(
                t.id for t in self.tasks.values() if cause in t.deps and t.status in ACTIVE
            )
            for tid in waiting:
                t = self.tasks[tid]
                if t.status in ("running", "review"):
                    t.token += 1
                t.status, t.lease, t.cause = "cancelled", None, cause
                events.append(("task.cancelled", tid))
                stack.append(tid)

    def ready(self, kind: str, now: float) -> list[MTask]:
        found = [
            t for t in self.tasks.values()
            if t.kind == kind and t.status == "queued" and t.not_before <= now
            and all(self.tasks[d].status == "done" for d in t.deps)
        ]
        return sorted(found, key=lambda t: (-t.priority, t.id))

    # -- operations -----------------------------------------------------------

    def submit(self, now, kind, priority, deps, max_attempts, retry_delay, events):
        missing = [d for d in deps if d not in self.tasks]
        if missing:
            raise DependencyError("unknown", tuple(missing))
        t = MTask(self.next_id, kind, priority, tuple(sorted(set(deps))), max_attempts,
                  retry_delay, not_before=now)
        self.next_id += 1
        broken = [d for d in t.deps if self.tasks[d].status in ("failed", "cancelled")]
        if broken:
            t.status, t.cause = "cancelled", broken[0]
            events.append(("task.cancelled", t.id))
        else:
            events.append(("task.queued", t.id))
        self.tasks[t.id] = t
        return t

    def claim(self, now, kind, n, lease, events):
        claimed = self.ready(kind, now)[:n]
        for t in claimed:
            t.status, t.attempts, t.token, t.lease = "running", t.attempts + 1, t.token + 1, now + lease
            events.append(("task.started", t.id))
        return claimed

    def claim_review(self, now, n, lease, events):
        found = sorted(
            (t for t in self.tasks.values()
             if t.status == "review" and (t.lease is None or t.lease < now)),
            key=lambda t: (-t.priority, t.id),
        )[:n]
        for t in found:
            t.token += 1
            t.lease = now + lease
        return found

    def heartbeat(self, now, task_id, token, lease, events):
        t = self._leased(task_id, token, ("running", "review"))
        t.lease = now + lease
        events.append(("task.heartbeat", t.id))
        return t

    def succeed(self, now, task_id, token, review, events):
        t = self._leased(task_id, token)
        events.append(("task.succeeded", t.id))
        t.lease = None
        if review:
            t.status = "review"
            events.append(("task.review", t.id))
        else:
            t.status = "done"
            events.append(("task.done", t.id))
        return t

    def _failed_attempt(self, now, t, retry, delays, events):
        used = t.attempts - t.base
        t.lease = None
        if retry and used < t.max_attempts:
            t.status = "queued"
            delay = delays.pop(0) - now
            base = t.retry_delay * 2.0 ** max(used - 1, 0)
            low, high = min(MAX_BACKOFF, base) * 0.75, min(MAX_BACKOFF, min(MAX_BACKOFF, base) * 1.25)
            assert low - 1e-9 <= delay <= high + 1e-9, (delay, low, high)
            t.not_before = now + delay
            events.append(("task.retrying", t.id))
        else:
            t.status = "failed"
            events.append(("task.failed", t.id))
            self._cascade(t.id, events)

    def fail(self, now, task_id, token, retry, delays, events):
        t = self._leased(task_id, token)
        self._failed_attempt(now, t, retry, delays, events)
        return t

    def release(self, now, task_id, token, events):
        t = self._leased(task_id, token, ("running", "review"))
        if t.status == "review":  # given back by its reviewer: waits for another
            t.token, t.lease = t.token + 1, None
            return t
        t.status, t.lease, t.base, t.not_before = "queued", None, t.base + 1, now
        events.append(("task.retrying", t.id))
        return t

    def _review(self, task_id, token, op, statuses=("review",)):
        if token is not None:
            return self._leased(task_id, token, statuses)
        t = self._get(task_id)
        if t.status not in statuses:
            raise IllegalTransition(task_id, t.status, op)
        return t

    def approve(self, now, task_id, token, events):
        t = self._review(task_id, token, "approve")
        t.status, t.lease = "done", None
        events += [("task.approved", t.id), ("task.done", t.id)]
        return t

    def reject(self, now, task_id, token, feedback, events, bounded=True, statuses=("review",)):
        t = self._review(task_id, token, "reject", statuses)
        t.lease, t.feedback = None, feedback
        events.append(("task.rejected", t.id))
        if bounded and t.attempts - t.base >= t.max_attempts:
            t.status = "failed"
            events.append(("task.failed", t.id))
            self._cascade(t.id, events)
        else:
            t.status, t.not_before = "queued", now
            events.append(("task.queued", t.id))
        return t

    def escalate(self, now, task_id, token, events):
        t = self._review(task_id, token, "escalate")
        t.status, t.lease = "escalated", None
        events.append(("task.escalated", t.id))
        return t

    def decide(self, now, task_id, approve, feedback, events):
        if approve:
            t = self._review(task_id, None, "decide", ("escalated", "review"))
            t.status, t.lease = "done", None
            events += [("task.approved", t.id), ("task.done", t.id)]
            return t
        return self.reject(now, task_id, None, feedback, events, bounded=False,
                           statuses=("escalated", "review"))

    def cancel(self, now, task_id, events):
        t = self._get(task_id)
        if t.status in ("done", "failed", "cancelled"):
            raise IllegalTransition(task_id, t.status, "cancel")
        if t.status in ("running", "review"):
            t.token += 1
        t.status, t.lease, t.cause = "cancelled", None, None
        events.append(("task.cancelled", t.id))
        self._cascade(t.id, events)
        return t

    def retry(self, now, task_id, events):
        t = self._get(task_id)
        if t.status not in ("failed", "cancelled"):
            raise IllegalTransition(task_id, t.status, "retry")
        if any(self.tasks[d].status in ("failed", "cancelled") for d in t.deps):
            raise DependencyError("blocked")
        t.status, t.base, t.not_before, t.lease, t.cause = "queued", t.attempts, now, None, None
        events.append(("task.queued", t.id))
        stack = [t.id]  # dependents a cascade cancelled come back once nothing blocks them
        while stack:
            back = stack.pop()
            for tid in sorted(d.id for d in self.tasks.values()
                              if d.status == "cancelled" and d.cause is not None and back in d.deps):
                d = self.tasks[tid]
                if any(self.tasks[x].status in ("failed", "cancelled") for x in d.deps):
                    continue
                d.status, d.base, d.not_before, d.lease, d.cause = "queued", d.attempts, now, None, None
                events.append(("task.queued", tid))
                stack.append(tid)
        return t

    def sweep(self, now, delays, events):
        changed = []
        for tid in sorted(self.tasks):
            t = self.tasks[tid]
            if t.lease is None or not t.lease < now:
                continue
            if t.status == "running":
                self._failed_attempt(now, t, True, delays, events)
            else:
                t.token += 1
                t.lease = None
            changed.append(t)
        return changed
