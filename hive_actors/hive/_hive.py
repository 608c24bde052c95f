"""open_hive(): the whole Hive in the caller's nursery, and the Hive handle."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from ..actors import ActorRef, ActorStopped, ActorSystem, open_actor_system
from ..store import ESCALATED, QUEUED, REVIEW, RUNNING, Event, Task, open_store
from ._model import Pump
from ._roles import (
    PLAN_KIND,
    QUEEN_TOPICS,
    REVIEW_POOL,
    Planner,
    Queen,
    Reviewer,
    Worker,
    tick_queen,
)

log = logging.getLogger("hive_actors.hive")

_ACTIVE = (QUEUED, RUNNING, REVIEW)  # statuses that keep a hive from being idle
_WATCHED = (*_ACTIVE, ESCALATED)  # what wait_idle counts while it waits
_POLL = 1.0  # seconds between re-reads of the database for changes made elsewhere
_IDLE_COALESCE = 0.02  # wait_idle re-counts at most this often while work goes on


class _Runtime:
    """What the Hive's actors share: config, store, launcher, running attempts."""

    def __init__(self, config: Any, store: Any, launcher: Any, workspaces: Path) -> None:
        self.config = config
        self.store = store
        self.launcher = launcher
        self.workspaces = workspaces
        self.lease_seconds = config.lease_seconds
        self.attempts: dict[int, Any] = {}  # task id -> slot actor running it
        # slot ref -> the task the Queen handed it, until the slot is done with it;
        # shared so that it survives a restart of the Queen
        self.assigned: dict[ActorRef, Any] = {}
        self.cancelled: set[int] = set()  # cancelled while handed to a slot, not started
        self.clock = time.time  # the store's clock (leases are in its time)
        self._drained = trio.Event()
        self.queen: ActorRef | None = None
        self.pump_pending = False  # a Pump waits in the Queen's mailbox
        self.pools: dict[str, list[ActorRef]] = {}
        self.closing = False

    def cancel_local(self, task_id: int) -> None:
        """The store cancelled ``task_id``: stop its attempt here, or make sure a slot
        holding it (an ``Assign`` still in its mailbox) never starts it."""
        slot = self.attempts.get(task_id)
        if slot is not None:
            slot.cancel_attempt("cancelled")
        elif any(task.id == task_id for task in self.assigned.values()):
            self.cancelled.add(task_id)

    def on_events(self, events: list[Event]) -> None:
        """Store watcher: stop the attempts of cancelled tasks here, and ask the Queen
        for a claim pass (one Pump at a time) when work may have become ready."""
        pump = False
        for event in events:
            if event.type == "task.cancelled":
                self.cancel_local(event.task_id)
            pump = pump or event.type in QUEEN_TOPICS
        if pump:
            self.request_pump()

    def request_pump(self) -> None:
        """Make sure a Pump waits in the Queen's (unbounded) mailbox."""
        if not self.pump_pending and self.queen is not None and self.queen.alive:
            try:
                self.queen.tell_nowait(Pump())
            except ActorStopped:
                return
            self.pump_pending = True

    def attempt_started(self, task_id: int, slot: Any) -> None:
        self.attempts[task_id] = slot
        self.cancelled.discard(task_id)

    def attempt_ended(self, task_id: int) -> None:
        self.attempts.pop(task_id, None)
        if not self.attempts:
            self._drained.set()
            self._drained = trio.Event()

    async def attempts_drained(self) -> None:
        """Return once no attempt runs in this process."""
        if self.attempts:
            await self._drained.wait()
        else:
            await trio.lowlevel.checkpoint()


class _Waiters:
    """Per-task and hive-wide trio Events, set when the store commits an event about
    them (``on_events`` watches the store) and replaced once they fire."""

    def __init__(self) -> None:
        self.by_task: dict[int, trio.Event] = {}
        self.any = trio.Event()
        self._any_waited = False  # for_any() handed out self.any since it was last set

    def for_task(self, task_id: int) -> trio.Event:
        event = self.by_task.get(task_id)
        if event is None:
            event = self.by_task[task_id] = trio.Event()
        return event

    def for_any(self) -> trio.Event:
        self._any_waited = True
        return self.any

    def on_events(self, events: list[Event]) -> None:
        changed = False
        for event in events:
            if event.seq is None:
                continue  # not persisted (a heartbeat): nothing to re-read
            changed = True
            if self.by_task:
                waiting = self.by_task.pop(event.task_id, None)
                if waiting is not None:
                    waiting.set()
        if changed and self._any_waited:
            self._any_waited = False
            self.any.set()
            self.any = trio.Event()


def _unfinished(status: dict[str, Any]) -> dict[tuple[str, str], int]:
    """The non-zero counts of ``_WATCHED`` statuses per (kind, status) in ``status``."""
    return {(kind, s): n for kind, counts in status["kinds"].items()
            for s, n in counts.items() if s in _WATCHED and n}


async def _wait_changed(event: trio.Event, coalesce: float = 0.0) -> None:
    """Wait for ``event`` (at most ``_POLL`` s: other processes' changes are polled),
    then ``coalesce`` s more so that a burst of changes costs one re-read."""
    with trio.move_on_after(_POLL):
        await event.wait()
    if coalesce:
        await trio.sleep(coalesce)


class Hive:
    """A running hive: submit work, watch it, decide escalations.

    Every method talks to the store (the DB actor), so what it returns is on disk.
    Get one from ``open_hive``.
    """

    def __init__(self, runtime: _Runtime, system: ActorSystem, waiters: _Waiters) -> None:
        self._rt = runtime
        self._waiters = waiters
        self.system = system
        self.store = runtime.store
        self.config = runtime.config

    @property
    def path(self) -> str:
        """The database file."""
        return self.store.path

    async def submit(
        self,
        *,
        kind: str,
        title: str,
        prompt: str = "",
        priority: int = 0,
        depends_on: Any = (),
        max_attempts: int | None = None,
        metadata: Any = None,
    ) -> Task:
        """Store a new task and return it once it is on disk.

        Any kind is accepted (another hive sharing the database may serve it);
        ``max_attempts`` defaults to the kind's setting (3 for kinds not configured
        here).  Raises ``DependencyError`` for unknown dependencies.
        """
        config = self._rt.config.kinds.get(kind)
        if max_attempts is None:
            max_attempts = config.max_attempts if config is not None else 3
        retry_delay = config.retry_delay if config is not None else 1.0
        return await self.store.submit(
            kind, title, prompt, priority=priority, depends_on=depends_on,
            max_attempts=max_attempts, retry_delay=retry_delay, metadata=metadata,
            actor="submit",
        )

    async def plan(self, *, title: str, prompt: str = "", priority: int = 0) -> Task:
        """Submit a planning request (a task of kind ``plan``) for the Planner."""
        return await self.store.submit(PLAN_KIND, title, prompt, priority=priority, actor="submit")

    async def cancel(self, task_id: int) -> Task:
        """Cancel a task (and its unfinished dependents); a running agent is killed."""
        # The runtime's store watcher stops the attempt here, as the store commits.
        return await self.store.cancel(task_id, actor="person")

    async def retry(self, task_id: int) -> Task:
        """Put a failed or cancelled task back in the queue with a fresh attempt budget,
        with the dependents its end cancelled (see ``Store.retry``)."""
        return await self.store.retry(task_id, actor="person")

    async def review(self, task_id: int, *, approve: bool, feedback: str | None = None) -> Task:
        """A person's decision on an escalated (or in-review) task: done, or rework."""
        return await self.store.decide(task_id, approve=approve, feedback=feedback, actor="person")

    async def get(self, task_id: int) -> Task:
        """The task as stored now; ``TaskNotFound`` if there is none."""
        return await self.store.get(task_id)

    async def list(self, status: str | None = None, kind: str | None = None) -> list[Task]:
        """Tasks in id order, optionally filtered by status and kind."""
        return await self.store.list(status, kind)

    async def wait(self, task_id: int, timeout: float | None = None) -> Task:  # noqa: ASYNC109 (contract API)
        """Return the task once it is terminal (done, failed or cancelled).

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                changed = self._waiters.for_task(task_id)
                task = await self.store.get(task_id)
                if task.terminal:
                    return task
                await _wait_changed(changed)
        raise TimeoutError(f"task {task_id} did not finish within {timeout} s")

    async def wait_idle(self, timeout: float | None = None) -> dict[str, Any]:  # noqa: ASYNC109 (contract API)
        """Return ``status()`` once no task of a kind served here is queued, running
        or in review (escalated tasks wait for a person and do not count, nor do queued
        tasks that can only run after an escalated one is decided).

        Raises ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while True:
                changed = self._waiters.for_any()
                # Only unfinished tasks are counted while waiting: a count of every
                # status reads the whole history of finished tasks each time.
                watched = await self.store.counts(_WATCHED)
                if await self._idle(watched):
                    status = await self.status()
                    if _unfinished(status) == _unfinished(watched):  # nothing moved since
                        return status
                    continue
                await _wait_changed(changed, coalesce=_IDLE_COALESCE)
        raise TimeoutError(f"the hive was not idle within {timeout} s")

    async def _idle(self, status: dict[str, Any]) -> bool:
        """Whether counts (a ``status()``, or one of fewer statuses) show an idle hive."""
        active = self._active(status)
        if not any(active.values()):
            return True
        return (not active[RUNNING] and not active[REVIEW] and bool(status["counts"][ESCALATED])
                and await self._only_wait_for_people())

    def _active(self, status: dict[str, Any]) -> dict[str, int]:
        """Tasks of the kinds served here per active status, from a ``status()``."""
        served = self.served_kinds()
        return {
            s: sum(counts.get(s, 0) for kind, counts in status["kinds"].items() if kind in served)
            for s in _ACTIVE
        }

    async def _only_wait_for_people(self) -> bool:
        """True if every queued task of a served kind waits, directly or through other
        queued tasks, on an escalated task: only a person's decision can move them."""
        served = self.served_kinds()
        queued = {t.id: t for t in await self.store.list(QUEUED) if t.kind in served}
        blocked = {t.id for t in await self.store.list(ESCALATED)}  # grows to a fixpoint
        changed = True
        while changed:
            changed = False
            for task in queued.values():
                if task.id not in blocked and any(dep in blocked for dep in task.depends_on):
                    blocked.add(task.id)
                    changed = True
        if not queued or not queued.keys() <= blocked:
            return False
        # The reads above were separate transactions: confirm nothing else moved since.
        now = self._active(await self.store.counts(_WATCHED))
        return now[QUEUED] == len(queued) and not now[RUNNING] and not now[REVIEW]

    def served_kinds(self) -> frozenset[str]:
        """The task kinds this hive runs (its configured kinds, and ``plan`` with a planner)."""
        config = self._rt.config
        extra = (PLAN_KIND,) if config.planner is not None else ()
        return frozenset((*config.served_kinds, *extra))

    async def status(self) -> dict[str, Any]:
        """``{"counts": {status: n}, "kinds": {kind: {status: n}}}``, as ``hive status --json``.

        ``kinds`` covers every kind in the database, served here or not.
        """
        return await self.store.counts()

    async def events(self, since: int = 0, *, follow: bool = True) -> AsyncIterator[Event]:
        """Persisted events with ``seq > since``, in order.

        With ``follow`` (the default) it then waits for new ones forever: close it
        with ``contextlib.aclosing`` when you stop early.  Without, it ends once it
        has caught up.
        """
        seq = since
        while True:
            changed = self._waiters.for_any()
            page = await self.store.events_since(seq, limit=1000)
            for event in page:
                seq = event.seq
                yield event
            if len(page) == 1000:
                continue
            if not follow:
                return
            await _wait_changed(changed)

    def running(self) -> dict[int, str]:
        """Tasks running in this process: task id → the slot actor running it."""
        return {task_id: slot.ref.name for task_id, slot in self._rt.attempts.items()}


def _pools(config: Any) -> dict[str, tuple[type, int]]:
    pools: dict[str, tuple[type, int]] = {
        kind: (Worker, kind_config.concurrency) for kind, kind_config in config.kinds.items()
    }
    if config.planner is not None:
        pools[PLAN_KIND] = (Planner, config.planner.concurrency)
    if config.reviewer is not None:
        pools[REVIEW_POOL] = (Reviewer, config.reviewer.concurrency)
    return pools


@asynccontextmanager
async def open_hive(
    path: str | os.PathLike[str] | None,
    config: Any,
    *,
    system: ActorSystem | None = None,
    grace: float = 10.0,
    tick: float = 0.25,
    synchronous: str = "NORMAL",
    clock: Callable[[], float] | None = None,
    store_inline: bool = False,
) -> AsyncIterator[Hive]:
    """Run a hive on the database at ``path`` (``None``: ``config.db``) for the block.

    Opening recovers what a dead hive left (its running tasks re-queued, its agents'
    process groups killed) before any task runs.  Leaving the block stops gracefully:
    no new claims; running attempts get ``grace`` seconds, then their agents are
    killed and their tasks re-queued (not failed).  Pass ``system`` to run the hive's
    actors in an actor system of your own, beside your own actors.  ``tick`` is how
    often (s) the Queen looks for work without being told (work submitted by other
    processes); ``synchronous`` is SQLite's durability setting (``"FULL"`` also
    survives an OS crash or power cut).  ``clock`` and ``store_inline`` exist for
    tests driven by trio's autojump clock.
    """
    if path is None:
        path = getattr(config, "db", None)
        if path is None:
            raise ValueError("open_hive needs a database path (or a config with [hive] db)")
    path = Path(path)
    workspaces = Path(config.workspaces) if config.workspaces else path.parent / f"{path.name}.workspaces"
    async with AsyncExitStack() as stack:
        if system is None:
            system = await stack.enter_async_context(open_actor_system())
        store_options: dict[str, Any] = {"synchronous": synchronous, "inline": store_inline}
        if clock is not None:
            store_options["clock"] = clock
        store = await stack.enter_async_context(open_store(system, str(path), **store_options))
        if store.recovery.pgids:
            from ._command import kill_process_groups

            killed = kill_process_groups(store.recovery.pgids)
            log.warning("killed %d agent process group(s) left by a dead hive", len(killed))
        roles = [*config.kinds.values(), config.reviewer, config.planner]
        if any(role is not None and role.loop == "asyncio" for role in roles):
            import trio_asyncio

            await stack.enter_async_context(trio_asyncio.open_loop())
        launcher = None
        if any(role is not None and role.backend is None for role in roles):
            from ._command import AgentLauncher

            launcher = stack.enter_context(AgentLauncher())
        runtime = _Runtime(config, store, launcher, workspaces)
        if clock is not None:
            runtime.clock = clock
        waiters = _Waiters()
        supervisors = []
        for pool, (role, size) in _pools(config).items():
            sup = await system.spawn_supervisor(
                f"hive-{pool}-{id(runtime)}", max_restarts=max(10, size), within=10.0
            )
            supervisors.append(sup)
            runtime.pools[pool] = [
                await sup.spawn(role, runtime, pool, name=f"{pool}-{i}-{id(runtime)}", mailbox_size=4)
                for i in range(size)
            ]
        # The Queen under a supervisor of its own: restarts of a crashing Queen do not
        # use up the root supervisor's budget, which the DB actor depends on.
        queen_sup = await system.spawn_supervisor(f"hive-queen-{id(runtime)}",
                                                  max_restarts=10, within=10.0)
        queen = await queen_sup.spawn(Queen, runtime, runtime.pools, name=f"queen-{id(runtime)}",
                                      mailbox_size=math.inf)
        runtime.queen = queen
        unwatch = [store.watch(waiters.on_events), store.watch(runtime.on_events)]
        hive = Hive(runtime, system, waiters)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick_queen, queen, tick)
            nursery.start_soon(_keep_leases, runtime)
            try:
                yield hive
            finally:
                with trio.CancelScope(shield=True):
                    await _shutdown(runtime, grace)
                    nursery.cancel_scope.cancel()
                    await queen_sup.stop()
                    for sup in reversed(supervisors):
                        await sup.stop()
                    for stop_watching in unwatch:
                        stop_watching()


async def _keep_leases(runtime: _Runtime) -> None:
    """Heartbeat every running attempt each third of the lease, in one burst
    (which the DB actor turns into one transaction)."""
    while True:
        await trio.sleep(runtime.lease_seconds / 3)
        async with trio.open_nursery() as nursery:
            for slot in list(runtime.attempts.values()):
                nursery.start_soon(slot.heartbeat)


async def _shutdown(runtime: _Runtime, grace: float) -> None:
    """No new claims; give running attempts ``grace`` s, then cancel and re-queue them."""
    runtime.closing = True
    with trio.move_on_after(grace):
        await runtime.attempts_drained()
    for slot in list(runtime.attempts.values()):
        slot.cancel_attempt("shutdown")
    with trio.move_on_after(5):
        await runtime.attempts_drained()
