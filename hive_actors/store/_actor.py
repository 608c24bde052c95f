"""The DB actor: drains its mailbox into one group commit per batch."""

from __future__ import annotations

from typing import Any

import outcome
import trio

from ..actors import Actor
from ._engine import Engine
from ._thread import SqliteThread


class StoreActor(Actor):
    """Owns the store's engine. Every batch of waiting messages becomes one
    transaction (one thread hop), and only after COMMIT are the callers answered and
    the events published on the system bus (topic = event type, payload = ``Event``).

    ``runner`` is the :class:`SqliteThread` the engine lives on, or ``None`` to run
    batches inline on the trio thread.
    """

    def __init__(self, engine: Engine, runner: SqliteThread | None) -> None:
        self._engine = engine
        self._runner = runner

    async def handle_batch(self, messages: list[Any]) -> list[outcome.Outcome]:
        if self._runner is None:
            await trio.lowlevel.checkpoint()
            results, events = self._engine.execute(messages)
        else:
            results, events = await self._runner.run(self._engine.execute, messages)
        publish = self.system.bus.publish_nowait
        for event in events:
            publish(event.type, event)
        return results

    async def handle(self, message: Any) -> Any:
        (result,) = await self.handle_batch([message])
        return result.unwrap()
