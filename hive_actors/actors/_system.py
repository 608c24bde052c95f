"""The actor system: root supervisor, name registry, death watch, stats, lifetime."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._actor import DEFAULT_MAILBOX_SIZE, ActorRef, _ActorCell
from ._bus import Bus
from ._errors import ActorError, ActorStopped, MailboxFull
from ._faults import FaultInjector
from ._messages import ActorStats, SystemStats, Terminated
from ._supervisor import SupervisorRef, _StartedOnce, _Supervisor


class ActorSystem:
    """A tree of supervised actors living in one trio nursery.

    Actors spawned with ``spawn`` are children of the root supervisor (``one_for_one``,
    ``max_restarts=3`` within ``5.0`` s).  Get one from ``open_actor_system()``.
    ``bus`` is its publish/subscribe bus; ``faults`` injects crashes, delays and
    stalls for tests (inert until used).
    """

    def __init__(self, shutdown_timeout: float = 5.0) -> None:
        if not isinstance(shutdown_timeout, int | float) or shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be a number >= 0, got {shutdown_timeout!r}")
        self.shutdown_timeout = shutdown_timeout
        self.bus = Bus(self)
        self.faults = FaultInjector()
        self._root = _Supervisor(self, None, "root", "one_for_one", 3, 5.0)
        self._cells: dict[str, _ActorCell] = {}
        self._names: set[str] = {"root"}
        self._watchers: dict[int, list[ActorRef]] = {}
        self._dead_letters = 0
        self._serial = itertools.count(1)
        self._services: trio.Nursery | None = None
        self._failure: BaseException | None = None

    # -- public API -------------------------------------------------------------

    async def spawn(
        self,
        factory: Any,
        *args: Any,
        name: str | None = None,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        restart: str = "permanent",
    ) -> ActorRef:
        """Start ``factory(*args)`` under the root supervisor; return its ref.

        Returns once the actor's ``started()`` has run.  ``name`` must be unique among
        living actors (``lookup`` finds it); ``mailbox_size`` bounds the messages
        waiting; ``restart`` is ``permanent``, ``transient`` or ``temporary``.
        """
        return await self._root.ref.spawn(
            factory, *args, name=name, mailbox_size=mailbox_size, restart=restart
        )

    async def spawn_supervisor(
        self,
        name: str,
        strategy: str = "one_for_one",
        max_restarts: int = 3,
        within: float = 5.0,
    ) -> SupervisorRef:
        """Start a top-level supervisor.

        ``strategy``: ``one_for_one`` restarts the crashed child, ``one_for_all`` all
        children, ``rest_for_one`` the crashed child and those started after it.  If
        it gives up (more than ``max_restarts`` within ``within`` s), the whole system
        stops and ``SupervisorGaveUp`` leaves ``open_actor_system()``.
        """
        return await self._root.ref.spawn_supervisor(name, strategy, max_restarts, within)

    def lookup(self, name: str) -> ActorRef | None:
        """The living actor called ``name``, or None."""
        cell = self._cells.get(name)
        return cell.ref if cell is not None else None

    async def watch(self, ref: ActorRef, watcher: ActorRef) -> None:
        """Send ``watcher`` a ``Terminated(ref, reason)`` when ``ref`` stops for good.

        If ``ref`` is already gone, the message is sent at once.
        """
        if not isinstance(ref, ActorRef) or not isinstance(watcher, ActorRef):
            raise TypeError("watch(ref, watcher) takes two ActorRefs")
        if not ref.alive:
            self._notify(watcher, Terminated(ref, None))
        else:
            self._watchers.setdefault(id(ref._cell), []).append(watcher)
        await trio.lowlevel.checkpoint()

    def stats(self) -> SystemStats:
        """A snapshot: per living actor its mailbox depth, processed and restarts."""
        return SystemStats(
            actors={
                name: ActorStats(cell.mailbox, cell.processed, cell.restarts)
                for name, cell in self._cells.items()
            },
            dead_letters=self._dead_letters,
        )

    async def stop(self) -> None:
        """Stop every actor, in reverse start order, each within the shutdown timeout."""
        await self._root.stop_for_good()

    # -- internals used by cells, supervisors and the bus -----------------------

    def _register(self, name: str | None, base: str) -> str:
        if name is None:
            name = f"{base}-{next(self._serial)}"
            while name in self._names:
                name = f"{base}-{next(self._serial)}"
        elif name in self._names:
            raise ActorError(f"an actor or supervisor named {name!r} already exists")
        self._names.add(name)
        return name

    def _actor_gone(self, cell: _ActorCell, reason: BaseException | None) -> None:
        self._names.discard(cell.name)
        if self._cells.get(cell.name) is cell:
            del self._cells[cell.name]
        for watcher in self._watchers.pop(id(cell), ()):
            self._notify(watcher, Terminated(cell.ref, reason))

    def _supervisor_gone(self, sup: _Supervisor) -> None:
        if sup is not self._root:
            self._names.discard(sup.name)

    def _notify(self, watcher: ActorRef, message: Any) -> None:
        try:
            watcher.tell_nowait(message)
        except MailboxFull:
            self._start_service(self._tell_later, watcher, message)
        except ActorStopped:
            pass  # a watcher that is itself gone needs no news (counted as dead letter)

    async def _tell_later(self, ref: ActorRef, message: Any) -> None:
        try:
            await ref.tell(message)
        except ActorStopped:
            pass  # counted as a dead letter by tell

    def _start_service(self, fn: Any, *args: Any) -> None:
        if self._services is None:
            raise ActorError("the actor system is not running")
        self._services.start_soon(fn, *args)

    async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as services:
            self._services = services
            await services.start(self._run_root)
            task_status.started()
        self._services = None
        if self._failure is not None:
            raise self._failure

    async def _run_root(self, task_status: Any) -> None:
        root = self._root
        started = _StartedOnce(task_status)
        root.running = True
        try:
            await root.run(started)
        except Exception as exc:
            self._failure = exc
        finally:
            root.running = False
            root.exited.set()
            started.started()
            root.finalize(self._failure)
            self._services.cancel_scope.cancel()


@asynccontextmanager
async def open_actor_system(
    shutdown_timeout: float = 5.0, *, nursery: trio.Nursery | None = None
) -> AsyncIterator[ActorSystem]:
    """Run an actor system for the duration of the ``async with`` block.

    Leaving the block stops every actor in reverse start order, each within
    ``shutdown_timeout`` seconds, then cancels stragglers.  If a top-level supervisor
    (or the root) gives up, every actor is stopped, the block is cancelled and
    ``SupervisorGaveUp`` is raised inside an ExceptionGroup.  Pass ``nursery`` to run
    the system's tasks in a nursery of your own (they then live and fail with it).
    """
    system = ActorSystem(shutdown_timeout)
    if nursery is not None:
        await nursery.start(system._serve)
        try:
            yield system
        finally:
            with trio.CancelScope(shield=True):
                await system.stop()
        return
    async with trio.open_nursery() as own:
        await own.start(system._serve)
        try:
            yield system
        finally:
            with trio.CancelScope(shield=True):
                await system.stop()
