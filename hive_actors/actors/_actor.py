"""Actors, their references, and the loop that feeds one actor its mailbox."""

from __future__ import annotations

import collections
import itertools
import logging
import math
from typing import TYPE_CHECKING, Any

import outcome
import trio

from ._errors import ActorError, ActorStopped, AskTimeout, MailboxFull

if TYPE_CHECKING:
    from ._system import ActorSystem

log = logging.getLogger("hive_actors")

DEFAULT_MAILBOX_SIZE = 1024
RESTART_TYPES = ("permanent", "transient", "temporary")
_YIELD_EVERY = 256  # messages handled back to back before the loop yields to trio
_BATCH_LIMIT = 512  # messages handed to one handle_batch() call at most
_REPLY_NONE = object()  # handle_batch returned None: reply None to each ask


class Actor:
    """Base class of actors: subclass it and implement ``handle``.

    The runtime guarantees that ``handle`` sees one message at a time, in the order
    the mailbox received them (so per-sender order holds).  ``started()`` runs before
    the first message, ``stopped()`` after the last one (also after a crash, so it can
    release resources; it gets the shutdown timeout).  ``self.ref`` and
    ``self.system`` are set before ``started()``.

    An actor may instead define ``async handle_batch(messages) -> list[outcome.Outcome]``:
    it then receives every message already waiting (up to 512) in one call and returns
    one ``outcome.Value``/``outcome.Error`` per message, in order, or ``None`` when
    every message was handled and each reply is ``None``.  An ``Error``
    outcome is re-raised in that message's asker only and is not a crash; an exception
    raised by ``handle_batch`` itself reaches every asker of the batch and is a crash.
    This is how the DB actor turns a burst of requests into one group commit.
    """

    ref: ActorRef
    system: ActorSystem

    async def started(self) -> None:
        """Called once per incarnation, before the first message."""

    async def stopped(self) -> None:
        """Called once per incarnation, after the last message (crashed or not)."""

    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to ``ask``.

        An exception raised here is re-raised in the asker and is a crash of the
        actor: its supervisor restarts it (or not) per its restart type.
        """
        raise ActorError(f"{type(self).__name__} does not handle {message!r}")


class _Ask:
    """An asked message and its single-use reply slot; the actor wakes the asker directly.

    Told messages travel through the mailbox as they are; asked ones in this wrapper.
    """

    __slots__ = ("message", "_task", "_outcome", "_abandoned")

    def __init__(self, message: Any) -> None:
        self.message = message
        self._task: Any = None
        self._outcome: outcome.Outcome | None = None
        self._abandoned = False

    def deliver(self, result: outcome.Outcome) -> None:
        if self._outcome is not None or self._abandoned:
            return
        self._outcome = result
        if self._task is not None:
            task, self._task = self._task, None
            trio.lowlevel.reschedule(task, result)

    async def wait(self) -> Any:
        if self._outcome is not None:
            await trio.lowlevel.checkpoint()
            return self._outcome.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._task = None
            self._abandoned = True
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class ActorRef:
    """The address of an actor: the only way to talk to it.

    A ref stays valid across restarts (the mailbox is kept); it becomes dead only when
    the actor stops for good, after which ``tell``/``ask`` raise ``ActorStopped``.
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: _ActorCell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        """The actor's name (given to ``spawn``, or generated)."""
        return self._cell.name

    @property
    def alive(self) -> bool:
        """False once the actor has stopped for good (restarting counts as alive)."""
        return not self._cell.gone.is_set()

    def __repr__(self) -> str:
        return f"<ActorRef {self.name!r}{'' if self.alive else ' (stopped)'}>"

    async def tell(self, message: Any) -> None:
        """Put ``message`` in the mailbox, waiting while it is full (backpressure).

        Messages from one sender arrive in the order sent.  Raises ``ActorStopped``
        (and counts a dead letter) if the actor has stopped for good.
        """
        try:
            await self._cell.send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._cell.dead_letter(message) from None

    def tell_nowait(self, message: Any) -> None:
        """Put ``message`` in the mailbox now, or raise ``MailboxFull`` (nothing sent).

        Raises ``ActorStopped`` (and counts a dead letter) if the actor is gone.
        """
        try:
            self._cell.send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(f"mailbox of actor {self.name!r} is full") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._cell.dead_letter(message) from None

    async def ask(self, message: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (contract API)
        """Send ``message`` and return the handler's reply.

        Re-raises the handler's exception (which is also a crash of the actor).
        Raises ``AskTimeout`` if no reply came within ``timeout`` seconds (waiting
        for mailbox room included), ``ActorStopped`` if the actor stopped for good
        before handling it.
        """
        cell = self._cell
        if cell.task is not None and cell.task is trio.lowlevel.current_task():
            raise ActorError(f"actor {self.name!r} asked itself: that would deadlock")
        request = _Ask(message)
        if timeout is None:
            await self._send_ask(cell, request)
            return await request.wait()
        with trio.move_on_after(timeout):
            await self._send_ask(cell, request)
            return await request.wait()
        raise AskTimeout(f"actor {self.name!r} did not reply within {timeout} s")

    @staticmethod
    async def _send_ask(cell: _ActorCell, request: _Ask) -> None:
        # An ask waits for its reply anyway (a full checkpoint), so the send itself
        # skips the scheduler pass of ``await send``: one pass per ask, not two. A
        # cancelled caller still sends nothing, and a full mailbox still waits.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                cell.send.send_nowait(request)
            except trio.WouldBlock:
                await cell.send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise cell.dead_letter(request.message) from None

    async def stop(self) -> None:
        """Stop the actor for good and wait until it is gone.

        Does not queue behind the mailbox: the current message finishes (or is
        cancelled after the shutdown timeout), ``stopped()`` runs, and messages still
        waiting become dead letters whose askers get ``ActorStopped``.  Never restarted
        afterwards, whatever its restart type.  Called by the actor on itself, it
        returns at once and the actor stops after the current message.
        """
        await self._cell.stop_for_good()


class _ActorCell:
    """Everything that outlives one incarnation of an actor: mailbox, ref, counters."""

    restart: str

    def __init__(
        self,
        system: ActorSystem,
        parent: Any,
        factory: Any,
        args: tuple,
        name: str,
        mailbox_size: int,
        restart: str,
    ) -> None:
        self.system = system
        self.parent = parent
        self.factory = factory
        self.args = args
        self.name = name
        self.restart = restart
        self.send, self.receive = trio.open_memory_channel[Any](mailbox_size)
        self.ref = ActorRef(self)
        self.processed = 0
        self.restarts = 0
        self.incarnation = 0
        self.running = False
        self.exited = trio.Event()
        self.gone = trio.Event()
        self.final = False  # asked to stop for good
        self.stop_requested = False  # the current incarnation should leave its loop
        self.idle = False  # waiting for a message (so a stop can cancel at once)
        self.task: Any = None
        self.scope: trio.CancelScope | None = None

    @property
    def mailbox(self) -> int:
        return self.send.statistics().current_buffer_used

    def dead_letter(self, message: Any) -> ActorStopped:
        self.system._dead_letters += 1
        return ActorStopped(f"actor {self.name!r} has stopped; message {message!r} not delivered")

    # -- one incarnation --------------------------------------------------------

    async def run(self, started: Any) -> None:
        """Build a fresh actor from the factory and feed it until asked to leave."""
        self.stop_requested = False
        self.idle = False
        self.task = trio.lowlevel.current_task()
        actor = None
        try:
            with trio.CancelScope() as self.scope:
                actor = self.factory(*self.args)
                if not isinstance(actor, Actor):
                    raise TypeError(
                        f"factory of actor {self.name!r} returned {type(actor).__name__}, "
                        "not an Actor"
                    )
                actor.ref = self.ref
                actor.system = self.system
                await actor.started()
                started.started()
                if getattr(type(actor), "handle_batch", None) is not None:
                    await self._batch_loop(actor)
                else:
                    await self._loop(actor)
        finally:
            self.task = None
            self.scope = None
            if actor is not None and started.done:
                await self._call_stopped(actor)

    async def _call_stopped(self, actor: Actor) -> None:
        with trio.move_on_after(self.system.shutdown_timeout):
            try:
                await actor.stopped()
            except Exception:
                log.exception("actor %r: stopped() raised", self.name)

    async def _loop(self, actor: Actor) -> None:
        # The hot path: take what is already waiting without a scheduler pass per
        # message, yielding every _YIELD_EVERY messages so others get to run.
        receive_nowait = self.receive.receive_nowait
        receive = self.receive.receive
        handle = actor.handle
        faults = self.system.faults
        buffered, blocked_senders = _channel_internals(self.receive)
        budget = _YIELD_EVERY
        while not self.stop_requested:
            if buffered and not blocked_senders:
                item = buffered.popleft()  # what receive_nowait() would do, minus a call
            elif buffered is None or blocked_senders:
                try:
                    item = receive_nowait()
                except trio.WouldBlock:
                    self.idle = True
                    item = await receive()
                    self.idle = False
                    budget = _YIELD_EVERY
            else:
                self.idle = True
                item = await receive()
                self.idle = False
                budget = _YIELD_EVERY
            if faults.active:
                item = await self._inject(faults, item)
            if type(item) is _Ask:
                try:
                    result = await handle(item.message)
                except Exception as exc:
                    self.processed += 1
                    item.deliver(outcome.Error(exc))
                    raise
                except BaseException:
                    item.deliver(outcome.Error(self._stopped_error()))
                    raise
                item.deliver(outcome.Value(result))
            else:
                try:
                    await handle(item)
                except Exception:
                    self.processed += 1
                    raise
            self.processed += 1
            budget -= 1
            if not budget:
                budget = _YIELD_EVERY
                await trio.lowlevel.checkpoint()

    async def _inject(self, faults: Any, item: Any) -> Any:
        """Run injected faults for this message; a crash counts as the handler's."""
        message = item.message if type(item) is _Ask else item
        try:
            await faults.before(self.name, message)
        except Exception as exc:
            self.processed += 1
            if type(item) is _Ask:
                item.deliver(outcome.Error(exc))
            raise
        except BaseException:
            if type(item) is _Ask:
                item.deliver(outcome.Error(self._stopped_error()))
            raise
        return item

    async def _batch_loop(self, actor: Any) -> None:
        receive = self.receive
        while not self.stop_requested:
            self.idle = True
            batch = [await receive.receive()]
            self.idle = False
            while len(batch) < _BATCH_LIMIT:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            messages = [item.message if type(item) is _Ask else item for item in batch]
            try:
                if self.system.faults.active:
                    for message in messages:
                        await self.system.faults.before(self.name, message)
                outcomes = await actor.handle_batch(messages)
                if outcomes is None:  # every message handled, each reply is None
                    outcomes = itertools.repeat(_REPLY_NONE, len(batch))
                elif len(outcomes) != len(batch):
                    raise TypeError(
                        f"{type(actor).__name__}.handle_batch returned {len(outcomes)} "
                        f"outcomes for {len(batch)} messages"
                    )
            except Exception as exc:
                self.processed += len(batch)
                for item in batch:
                    if type(item) is _Ask:
                        item.deliver(outcome.Error(exc))
                raise
            except BaseException:
                for item in batch:
                    if type(item) is _Ask:
                        item.deliver(outcome.Error(self._stopped_error()))
                raise
            self.processed += len(batch)
            for item, result in zip(batch, outcomes, strict=True):
                if type(item) is _Ask:
                    item.deliver(outcome.Value(None) if result is _REPLY_NONE else result)
                elif isinstance(result, outcome.Error):
                    log.error("actor %r: told message %r failed: %r", self.name, item, result.error)

    def _stopped_error(self) -> ActorStopped:
        return ActorStopped(f"actor {self.name!r} stopped while handling the message")

    # -- stopping ---------------------------------------------------------------

    def request_stop(self) -> None:
        """Make the running incarnation leave after its current message."""
        self.stop_requested = True
        scope = self.scope
        if scope is None:
            return
        if self.idle:
            scope.cancel()
        else:  # handling a message: it gets the shutdown timeout to finish
            deadline = trio.current_time() + self.system.shutdown_timeout
            scope.deadline = min(scope.deadline, deadline)

    async def stop_for_good(self) -> None:
        if self.gone.is_set():
            await trio.lowlevel.checkpoint()
            return
        self.final = True
        if self.task is not None and self.task is trio.lowlevel.current_task():
            self.stop_requested = True  # leave after the current message
            await trio.lowlevel.checkpoint()
            return
        if self.running:
            self.request_stop()
        else:
            self.parent._forget(self)
            self.finalize(None)
        await self.gone.wait()

    def finalize(self, reason: BaseException | None) -> None:
        """Stopped for good: dead-letter what waits, close the mailbox, tell watchers."""
        if self.gone.is_set():
            return
        self.final = True
        while True:
            try:
                item = self.receive.receive_nowait()
            except (trio.WouldBlock, trio.ClosedResourceError, trio.EndOfChannel):
                break
            if type(item) is _Ask:
                item.deliver(outcome.Error(self.dead_letter(item.message)))
            else:
                self.dead_letter(item)
        self.receive.close()
        self.gone.set()
        self.system._actor_gone(self, reason)


def _channel_internals(receive: Any) -> tuple[Any, Any]:
    """The buffer deque and blocked-senders map of a trio memory channel, or (None, None).

    The mailbox loop pops from the buffer directly while no sender is blocked (exactly
    what ``receive_nowait`` does then), because a method call and a raised
    WouldBlock per message cost more than handling a small message.  If this trio
    version keeps its channel state elsewhere, the loop falls back to the public API.
    """
    state = getattr(receive, "_state", None)
    buffered = getattr(state, "data", None)
    blocked_senders = getattr(state, "send_tasks", None)
    if not isinstance(buffered, collections.deque) or blocked_senders is None:
        return None, None
    return buffered, blocked_senders


def check_spawn_args(name: str | None, mailbox_size: Any, restart: str) -> None:
    """Reject bad ``spawn`` arguments with a message naming the argument."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"actor name must be a non-empty string, got {name!r}")
    if restart not in RESTART_TYPES:
        raise ValueError(f"restart must be one of {RESTART_TYPES}, got {restart!r}")
    if mailbox_size != math.inf and (
        not isinstance(mailbox_size, int) or isinstance(mailbox_size, bool) or mailbox_size < 0
    ):
        raise ValueError(f"mailbox_size must be an int >= 0 (or math.inf), got {mailbox_size!r}")
