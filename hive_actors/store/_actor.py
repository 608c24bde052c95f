"""The DB actor: drains its mailbox into one group commit per batch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ..actors import Actor
from ._engine import Engine
from ._model import Event
from ._thread import SqliteThread

log = logging.getLogger("hive_actors.store")


class StoreActor(Actor):
    """Owns the store's engine. Every batch of waiting messages becomes one
    transaction, and only after COMMIT are the callers answered and the events
    published on the system bus (topic = event type, payload = ``Event``).

    ``runner`` is the :class:`SqliteThread` the engine waits and does its I/O on, or
    ``None`` to run batches wholly inline on the trio thread. With a runner, the
    operations themselves (Python code and page-cache work) run on the trio thread,
    where they do not fight the trio side for the GIL (measured: a batch wholly on the
    thread cost ~40% more CPU per task in the hive, the threads trading the GIL at
    every SQLite call); what can block for long goes to the thread: waiting for a
    write lock held by another process, and the COMMIT when it waits for the disk
    (``synchronous=FULL``). So: no thread hop per batch with ``NORMAL``, one with
    ``FULL``, one more when another process holds the lock.
    """

    def __init__(self, engine: Engine, runner: SqliteThread | None,
                 watchers: list[Callable[[list[Event]], None]]) -> None:
        self._engine = engine
        self._runner = runner
        self._watchers = watchers  # see Store.watch; shared, so it outlives a restart

    async def handle_batch(self, messages: list[Any]) -> list[outcome.Outcome]:
        engine, runner = self._engine, self._runner
        await trio.lowlevel.checkpoint()
        if runner is None:
            results, events = engine.execute(messages)
        else:
            results, events = await self._split(engine, runner, messages)
        if events:
            publish = self.system.bus.publish_nowait
            for event in events:
                publish(event.type, event)
            for watcher in self._watchers:
                try:
                    watcher(events)
                except Exception:
                    log.exception("store watcher %r failed", watcher)
        return results

    @staticmethod
    async def _split(
        engine: Engine, runner: SqliteThread, messages: list[Any]
    ) -> tuple[list[outcome.Outcome], list[Any]]:
        try:
            if not engine.begin(wait=False):
                await runner.run(engine.begin, True)
        except engine.Error as exc:
            return engine.failed(messages, exc)
        results, events = engine.run_begun(messages)
        if not engine.in_transaction:
            return results, events  # the transaction failed as a whole
        if not engine.commit_syncs:
            # No fsync at COMMIT (WAL, synchronous=NORMAL): a hop would cost more than
            # it frees, as the thread would have to win the GIL back from the trio side.
            return engine.commit(messages, results, events)
        return await runner.run(engine.commit, messages, results, events)

    async def handle(self, message: Any) -> Any:
        (result,) = await self.handle_batch([message])
        return result.unwrap()
