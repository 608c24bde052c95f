"""OTP-style supervisors: restart strategies, restart types and intensity limits."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from ._actor import DEFAULT_MAILBOX_SIZE, ActorRef, _ActorCell, check_spawn_args, log
from ._errors import ActorStopped, SupervisorGaveUp

if TYPE_CHECKING:
    from ._system import ActorSystem

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_STOP = object()  # control-loop event: leave


class _StartedOnce:
    """Wraps a trio task_status so that the child wrapper can tell if it was called."""

    __slots__ = ("_status", "done")

    def __init__(self, status: Any) -> None:
        self._status = status
        self.done = False

    def started(self) -> None:
        if not self.done:
            self.done = True
            self._status.started()


class SupervisorRef:
    """Handle of a supervisor: add children to it, nest supervisors, stop it.

    Children are started in the order they were added and stopped in reverse.  A
    restarted child keeps its name, mailbox and ``ActorRef``.
    """

    __slots__ = ("_sup",)

    def __init__(self, sup: _Supervisor) -> None:
        self._sup = sup

    @property
    def name(self) -> str:
        """The supervisor's name."""
        return self._sup.name

    @property
    def alive(self) -> bool:
        """False once the supervisor has stopped for good."""
        return not self._sup.gone.is_set()

    def __repr__(self) -> str:
        return f"<SupervisorRef {self.name!r} {self._sup.strategy}>"

    async def spawn(
        self,
        factory: Any,
        *args: Any,
        name: str | None = None,
        mailbox_size: int = DEFAULT_MAILBOX_SIZE,
        restart: str = "permanent",
    ) -> ActorRef:
        """Start ``factory(*args)`` as a child actor; return once ``started()`` ran.

        ``restart``: ``permanent`` (always restarted after a crash), ``transient``
        (restarted only after an exception), ``temporary`` (never restarted).
        """
        return await self._sup.spawn(factory, args, name, mailbox_size, restart)

    async def spawn_supervisor(
        self,
        name: str,
        strategy: str = "one_for_one",
        max_restarts: int = 3,
        within: float = 5.0,
    ) -> SupervisorRef:
        """Start a nested supervisor; when it gives up it counts as one crash here."""
        return await self._sup.spawn_supervisor(name, strategy, max_restarts, within)

    async def stop(self) -> None:
        """Stop every child (in reverse start order), then the supervisor, for good."""
        await self._sup.stop_for_good()


class _Supervisor:
    """One node of the supervision tree; runs its children in its own nursery."""

    restart = "permanent"

    def __init__(
        self,
        system: ActorSystem,
        parent: _Supervisor | None,
        name: str,
        strategy: str,
        max_restarts: int,
        within: float,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        if not isinstance(within, int | float) or not within > 0 or within == math.inf:
            raise ValueError(f"within must be a positive number of seconds, got {within!r}")
        self.system = system
        self.parent = parent
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = within
        self.ref = SupervisorRef(self)
        self.children: list[Any] = []
        self.restarts = 0
        self.incarnation = 0
        self.running = False
        self.exited = trio.Event()
        self.gone = trio.Event()
        self.final = False
        self._nursery: trio.Nursery | None = None
        self._events: Any = None
        self._history: list[float] = []

    # -- adding children --------------------------------------------------------

    async def spawn(self, factory, args, name, mailbox_size, restart) -> ActorRef:
        if not callable(factory):
            raise TypeError(f"spawn needs an Actor class or factory, got {factory!r}")
        check_spawn_args(name, mailbox_size, restart)
        self._check_alive()
        name = self.system._register(name, getattr(factory, "__name__", "actor"))
        cell = _ActorCell(self.system, self, factory, args, name, mailbox_size, restart)
        self.system._cells[name] = cell
        await self._add(cell)
        return cell.ref

    async def spawn_supervisor(self, name, strategy, max_restarts, within) -> SupervisorRef:
        self._check_alive()
        sup = _Supervisor(self.system, self, name, strategy, max_restarts, within)
        sup.name = self.system._register(name, "supervisor")
        await self._add(sup)
        return sup.ref

    def _check_alive(self) -> None:
        if self.final or self.gone.is_set():
            raise ActorStopped(f"supervisor {self.name!r} has stopped")

    async def _add(self, child: Any) -> None:
        self.children.append(child)
        if self.running and self._nursery is not None:
            await self._start(child)
        else:
            await trio.lowlevel.checkpoint()

    def _forget(self, child: Any) -> None:
        if child in self.children:
            self.children.remove(child)

    # -- running ----------------------------------------------------------------

    async def run(self, started: Any) -> None:
        """One incarnation: start the children, supervise, stop them in reverse."""
        self._history = []
        send, receive = trio.open_memory_channel[Any](math.inf)
        self._events = send
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for child in list(self.children):
                await self._start(child)
            started.started()
            failure = await self._supervise(receive)
            await self._stop_children(list(self.children), final=self.final)
            self._nursery = None
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _start(self, child: Any) -> None:
        if child.final:
            self._forget(child)
            child.finalize(None)
            return
        child.incarnation += 1
        await self._nursery.start(self._child_task, child, child.incarnation)

    async def _child_task(self, child: Any, incarnation: int, task_status: Any) -> None:
        started = _StartedOnce(task_status)
        child.running = True
        child.exited = trio.Event()
        error: Exception | None = None
        try:
            await child.run(started)
        except Exception as exc:
            error = exc
        finally:
            child.running = False
            child.exited.set()
        started.started()
        if child.final:
            self._forget(child)
            child.finalize(error)
        self._events.send_nowait((child, incarnation, error))

    async def _supervise(self, events: Any) -> BaseException | None:
        """Handle child exits until asked to stop; return the reason to give up."""
        async for event in events:
            if event is _STOP:
                return None
            child, incarnation, error = event
            if incarnation != child.incarnation or child not in self.children or child.running:
                continue  # stale: that incarnation was already replaced or removed
            if error is None and child.restart != "permanent":
                self._forget(child)
                child.finalize(None)
                continue
            if error is not None:
                log.warning(
                    "supervisor %r: child %r crashed: %r", self.name, child.name, error
                )
                if child.restart == "temporary":
                    self._forget(child)
                    child.finalize(error)
                    continue
                if self.parent is None and isinstance(child, _Supervisor):
                    return error  # a top-level supervisor gave up: the system stops
            now = trio.current_time()
            self._history = [t for t in self._history if t > now - self.within]
            if len(self._history) >= self.max_restarts:
                gave_up = SupervisorGaveUp(self.name, self.max_restarts, self.within)
                gave_up.__cause__ = error
                log.error("%s", gave_up)
                return gave_up
            self._history.append(now)
            await self._restart(child)
        return None

    async def _restart(self, crashed: Any) -> None:
        index = self.children.index(crashed)
        if self.strategy == "one_for_one":
            group = [crashed]
        elif self.strategy == "one_for_all":
            group = list(self.children)
        else:
            group = self.children[index:]
        others = [child for child in group if child is not crashed]
        await self._stop_children(others, final=False)
        for child in others:
            if child.restart == "temporary":  # stopped by us: temporary means gone
                self._forget(child)
                child.finalize(None)
        for child in group:
            if child in self.children:
                child.restarts += 1
                await self._start(child)

    async def _stop_children(self, children: list[Any], *, final: bool) -> None:
        for child in reversed(children):
            if final:
                child.final = True
            if child.running:
                child.request_stop()
                await child.exited.wait()
            elif final:
                self._forget(child)
                child.finalize(None)

    # -- stopping ---------------------------------------------------------------

    def request_stop(self) -> None:
        if self._events is not None:
            self._events.send_nowait(_STOP)

    async def stop_for_good(self) -> None:
        if self.gone.is_set():
            await trio.lowlevel.checkpoint()
            return
        self.final = True
        if self.running:
            self.request_stop()
        else:
            await self._stop_children(list(self.children), final=True)
            if self.parent is not None:
                self.parent._forget(self)
            self.finalize(None)
        await self.gone.wait()

    def finalize(self, reason: BaseException | None) -> None:
        if self.gone.is_set():
            return
        self.final = True
        for child in list(self.children):
            child.finalize(reason)
        self.children.clear()
        self.gone.set()
        self.system._supervisor_gone(self)

