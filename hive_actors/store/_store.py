"""The store's public face: ``open_store`` and the ``Store`` facade."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..actors import ActorRef, ActorSystem
from . import messages as m
from ._actor import StoreActor
from ._engine import Engine
from ._model import Event, RecoveryReport, Run, StoredPlan, Task
from ._thread import SqliteThread

log = logging.getLogger("hive_actors.store")


class Store:
    """Async facade over the DB actor. Every method sends one message and waits for
    the reply, which comes only after the transaction holding it has committed
    (so a returned value is on disk, per the ``synchronous`` setting).

    Methods that change a task raise a :class:`StoreError` subclass and change
    nothing when the operation is not allowed: :class:`TaskNotFound`,
    :class:`IllegalTransition`, :class:`StaleLease` (the caller's fencing token is
    not current), :class:`DependencyError`, :class:`InvalidPlan`, or
    :class:`DatabaseError` when SQLite itself fails.
    """

    def __init__(
        self, ref: ActorRef, path: str, recovery: RecoveryReport, engine: Engine | None = None,
        watchers: list[Callable[[list[Event]], None]] | None = None,
    ) -> None:
        self.ref = ref
        self.path = path
        self.recovery = recovery
        self._engine = engine
        self._watchers = [] if watchers is None else watchers

    def watch(self, callback: Callable[[list[Event]], None]) -> Callable[[], None]:
        """Call ``callback(events)`` with the events of every committed transaction of
        this store, in commit order, right after they are published on the bus (before
        the callers are answered); returns a function that stops it.

        It runs in the DB actor's task, so it must be quick and must not block; an
        exception it raises is logged. Unlike a bus subscription it never misses an
        event and sees only this store's (several stores may share one bus).
        """
        self._watchers.append(callback)

        def unwatch() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return unwatch

    def commit_stats(self) -> tuple[int, int]:
        """``(transactions, operations)`` committed so far by this store's DB actor;
        their ratio is the mean group-commit size."""
        if self._engine is None:
            return (0, 0)
        return (self._engine.batches, self._engine.operations)

    @property
    def hive_id(self) -> str:
        """The id of this process's row in the ``hives`` table (lease owner)."""
        return self.recovery.hive_id

    async def execute(self, message: Any) -> Any:
        """Send one operation message (see ``hive_actors.store.messages``)."""
        return await self.ref.ask(message)

    # -- writing ------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        title: str,
        prompt: str = "",
        *,
        priority: int = 0,
        depends_on: Iterable[int] = (),
        max_attempts: int = 3,
        retry_delay: float = 1.0,
        metadata: Any = None,
        parent_id: int | None = None,
        delay: float = 0.0,
        actor: str | None = None,
        correlation_id: str | None = None,
    ) -> Task:
        """Store a new ``queued`` task and return it. ``depends_on`` must name
        existing tasks (else ``DependencyError``); if one of them already failed or
        was cancelled, the task is stored ``cancelled``. ``delay`` postpones its
        first claim. Higher ``priority`` is claimed first."""
        return await self.ref.ask(m.Submit(
            kind, title, prompt, priority, tuple(depends_on), max_attempts, retry_delay,
            metadata, parent_id, delay, actor=actor, correlation_id=correlation_id,
        ))

    async def claim(
        self, kind: str, n: int, worker: str, lease_seconds: float, **kw: Any
    ) -> list[Task]:
        """Atomically claim up to ``n`` ready tasks of ``kind`` (queued, not
        postponed, every dependency done), highest priority then oldest first. Each
        gets ``status="running"``, one more attempt, a new ``fencing_token`` and a
        lease until now + ``lease_seconds``, held by ``worker`` (or, with
        ``workers=``, ``n`` names, the i-th task by the i-th). Never returns a task to
        two callers."""
        return await self.ref.ask(m.Claim(kind, n, worker, lease_seconds, **kw))

    async def claim_review(
        self,
        n: int,
        worker: str,
        lease_seconds: float,
        kinds: Sequence[str] | None = None,
        **kw: Any,
    ) -> list[Task]:
        """Claim up to ``n`` tasks waiting in ``review`` for a reviewer (with a new
        fencing token and a lease; the status stays ``review``), held by ``worker``
        (or, with ``workers=``, ``n`` names, the i-th task by the i-th). Each claim
        opens a run row for the review (``Run.review``), closed with its verdict."""
        return await self.ref.ask(m.ClaimReview(n, worker, lease_seconds, kinds, **kw))

    async def heartbeat(self, task_id: int, token: int, lease_seconds: float) -> float:
        """Extend the lease; returns the new expiry. ``StaleLease`` if the token is
        not current (the task was re-claimed, cancelled or finished)."""
        return await self.ref.ask(m.Heartbeat(task_id, token, lease_seconds))

    async def record_run(
        self,
        task_id: int,
        token: int,
        *,
        pgid: int | None = None,
        exit_code: int | None = None,
        output_tail: str | bytes | None = None,
    ) -> None:
        """Record the agent's process group id (and/or exit code, output tail) on the
        run row of the current attempt, or of the current review (a reviewer's token);
        ``StaleLease`` if the token is not current."""
        await self.ref.ask(m.RecordRun(task_id, token, pgid, exit_code, output_tail))

    async def succeed(
        self,
        task_id: int,
        token: int,
        result: Any = None,
        *,
        review: bool = False,
        exit_code: int | None = None,
        output_tail: str | bytes | None = None,
        **kw: Any,
    ) -> Task:
        """Finish the attempt with ``result`` (JSON-able): the task goes to
        ``review`` if ``review`` else ``done``. ``StaleLease`` if the token is not
        current: then the result is discarded."""
        return await self.ref.ask(
            m.Succeed(task_id, token, result, review, exit_code, output_tail, **kw)
        )

    async def fail(
        self,
        task_id: int,
        token: int,
        error: str,
        *,
        retry: bool = True,
        delay: float | None = None,
        exit_code: int | None = None,
        output_tail: str | bytes | None = None,
        **kw: Any,
    ) -> Task:
        """Finish the attempt as failed: re-queued after an exponential backoff
        (``delay`` overrides it) while attempts remain and ``retry`` is true, else
        ``failed`` (and its waiting dependents are cancelled)."""
        return await self.ref.ask(
            m.Fail(task_id, token, error, retry, delay, exit_code, output_tail, **kw)
        )

    async def release(
        self, task_id: int, token: int, reason: str = "released", **kw: Any
    ) -> Task:
        """Give a running task back at once (shutdown, worker crash); the attempt is
        not counted against ``max_attempts``. With a reviewer's token, the review is
        given back: the task stays in ``review`` for another reviewer."""
        return await self.ref.ask(m.Release(task_id, token, reason, **kw))

    async def store_plan(
        self,
        task_id: int,
        token: int,
        subtasks: Iterable[Any],
        *,
        result: Any = None,
        review: bool = False,
        **kw: Any,
    ) -> StoredPlan:
        """Complete the running plan task ``task_id`` and insert its subtasks
        (``PlannedTask`` or mappings with key, title, kind, prompt, depends_on,
        priority...) in one transaction, children of the plan task. Dependencies are
        keys of the same plan or ids of stored tasks. A cycle, an unknown dependency
        or a malformed entry raises ``InvalidPlan`` and stores nothing."""
        return await self.ref.ask(
            m.StorePlan(task_id, token, tuple(subtasks), result, review, **kw)
        )

    async def approve(self, task_id: int, *, token: int | None = None, **kw: Any) -> Task:
        """``review`` → ``done``. Pass the reviewer's ``token``; ``None`` is a
        person's approval."""
        return await self.ref.ask(m.Approve(task_id, token, **kw))

    async def reject(
        self, task_id: int, feedback: str, *, token: int | None = None, **kw: Any
    ) -> Task:
        """``review`` → ``queued`` at once with ``feedback`` (or ``failed`` when the
        attempts are used up)."""
        return await self.ref.ask(m.Reject(task_id, feedback, token, **kw))

    async def escalate(
        self, task_id: int, reason: str = "", *, token: int | None = None, **kw: Any
    ) -> Task:
        """``review`` → ``escalated``: the task waits for a person's decision."""
        return await self.ref.ask(m.Escalate(task_id, reason, token, **kw))

    async def decide(
        self, task_id: int, *, approve: bool, feedback: str | None = None, **kw: Any
    ) -> Task:
        """A person's decision on an ``escalated`` or ``review`` task: ``done``, or
        back to ``queued`` with ``feedback``."""
        return await self.ref.ask(m.Decide(task_id, approve, feedback, **kw))

    async def cancel(self, task_id: int, reason: str = "cancelled", **kw: Any) -> Task:
        """Cancel a task that is not terminal, and transitively every unfinished task
        depending on it. ``reason`` is free text, kept as the task's error (a retry of
        a dependency never brings back a task a person cancelled, whatever it says). A
        running or reviewed task's token is invalidated (its worker or reviewer gets
        ``StaleLease``); the event's payload carries the ``pgid`` recorded for its
        agent or reviewer command."""
        return await self.ref.ask(m.Cancel(task_id, reason, **kw))

    async def retry(self, task_id: int, **kw: Any) -> Task:
        """``failed``/``cancelled`` → ``queued`` with a fresh attempt budget; the
        dependents the cascade cancelled come back too, transitively, each with a fresh
        budget, as soon as none of their dependencies is failed or cancelled (a task a
        person cancelled stays). ``DependencyError`` if a dependency of this task failed
        or was cancelled. Returns the retried task."""
        return await self.ref.ask(m.Retry(task_id, **kw))

    async def sweep_leases(self) -> list[Task]:
        """Expire leases whose time has passed: running tasks are re-queued after
        backoff (or failed when out of attempts); review claims are released.
        Returns the tasks changed."""
        return await self.ref.ask(m.SweepLeases())

    # -- reading ------------------------------------------------------------

    async def get(self, task_id: int) -> Task:
        """The task with this id; ``TaskNotFound`` if there is none."""
        return await self.ref.ask(m.Get(task_id))

    async def list(
        self,
        status: str | Sequence[str] | None = None,
        kind: str | None = None,
        *,
        parent_id: int | None = None,
        limit: int | None = None,
        after_id: int = 0,
    ) -> list[Task]:
        """Tasks in id order, filtered by status (one or several), kind, parent."""
        if status is not None and not isinstance(status, str):
            status = tuple(status)
        return await self.ref.ask(m.ListTasks(status, kind, parent_id, limit, after_id))

    async def counts(self, statuses: Iterable[str] | None = None) -> dict[str, Any]:
        """``{"counts": {status: n}, "kinds": {kind: {status: n}}}``; every status
        appears in each mapping, or with ``statuses`` only those (a cheaper read when
        many tasks are finished)."""
        return await self.ref.ask(m.Counts(None if statuses is None else tuple(statuses)))

    async def events_since(
        self, since: int = 0, limit: int = 1000, task_id: int | None = None
    ) -> list[Event]:
        """Persisted events with ``seq > since`` in order, at most ``limit``."""
        return await self.ref.ask(m.EventsSince(since, limit, task_id))

    async def runs(self, task_id: int) -> list[Run]:
        """The runs of a task, oldest first: one per attempt, and one per review claim
        (``Run.review``, with the number of the attempt it reviews)."""
        return await self.ref.ask(m.GetRuns(task_id))


@asynccontextmanager
async def open_store(
    system: ActorSystem,
    path: str,
    *,
    name: str = "store",
    synchronous: str = "NORMAL",
    busy_timeout: float = 5.0,
    clock: Callable[[], float] = time.time,
    rng: random.Random | None = None,
    hive_stale_after: float = 60.0,
    hive_heartbeat: float | None = 10.0,
    mailbox_size: int = 4096,
    inline: bool = False,
    integrity_check: bool = False,
    register: bool = True,
) -> AsyncIterator[Store]:
    """Open the database at ``path`` and run its DB actor in ``system`` for the
    duration of the ``async with`` block.

    Opening creates the file if needed, applies migrations, registers this process in
    the ``hives`` table and recovers tasks left ``running`` by hive processes that
    are gone (``store.recovery`` says which, with the process groups to kill). A file
    that cannot be used raises a :class:`DatabaseError` subclass naming it and what
    to do, with nothing written.

    ``synchronous="NORMAL"`` (default): an acknowledged write survives a crash of the
    process; only an OS crash or power cut can lose the last transactions. ``"FULL"``
    survives those too, at a cost per commit. ``clock`` gives the time used for
    leases, backoff and timestamps (seconds). By default the store has its own
    thread for what can block (COMMIT and its I/O, waiting for a write lock another
    process holds) while the operations run on the trio thread; ``inline=True`` runs
    everything on the trio thread (lowest latency, but a COMMIT's I/O or a locked
    database blocks the trio loop meanwhile). ``hive_heartbeat`` is how
    often this process's liveness row is refreshed (seen by hives on other hosts).
    ``register=False`` opens the database as an admin tool (the ``hive`` command):
    this process is not recorded as a hive and recovers nothing, so it never takes
    over a live or dead hive's work by merely looking.
    """
    runner = None if inline else SqliteThread()
    try:
        do_open = functools.partial(
            Engine.open, path, synchronous=synchronous, busy_timeout=busy_timeout,
            clock=clock, rng=rng, hive_stale_after=hive_stale_after,
            integrity_check=integrity_check, register=register,
        )
        if runner is None:
            engine, report, events = do_open()
        else:
            engine, report, events = await runner.run(do_open)
            try:
                await runner.run(engine.no_wait)
            except BaseException:
                await runner.run(engine.close)
                raise
        try:
            watchers: list[Callable[[list[Event]], None]] = []
            ref = await system.spawn(
                StoreActor, engine, runner, watchers, name=name, mailbox_size=mailbox_size
            )
            for event in events:
                system.bus.publish_nowait(event.type, event)
            store = Store(ref, path, report, engine, watchers)
            async with trio.open_nursery() as nursery:
                if hive_heartbeat is not None and register:
                    nursery.start_soon(_touch_hive, ref, hive_heartbeat)
                if runner is not None and path != ":memory:":
                    nursery.start_soon(_checkpoints, runner, engine, CHECKPOINT_INTERVAL)
                try:
                    yield store
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.CancelScope(shield=True):
                        await ref.stop()
        finally:
            with trio.CancelScope(shield=True):
                if runner is None:
                    engine.close()
                else:
                    await runner.run(engine.close)
    finally:
        if runner is not None:
            runner.close()


#: How often (seconds) the store's thread copies the WAL into the database file.
CHECKPOINT_INTERVAL = 0.5


async def _checkpoints(runner: SqliteThread, engine: Engine, interval: float) -> None:
    """WAL checkpoints on the store's thread (the trio thread never waits for their
    fsync), after any interval in which something was committed."""
    seen = engine.batches
    while True:
        await trio.sleep(interval)
        if engine.batches != seen:
            seen = engine.batches
            await runner.run(engine.checkpoint)


async def _touch_hive(ref: ActorRef, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        try:
            await ref.ask(m.TouchHive())
        except Exception as exc:
            # The DB actor crashed on this batch (it is being restarted): the next
            # touch will do. Letting it escape would take the whole store down.
            log.warning("could not refresh this hive's liveness row: %r", exc)
