"""Messages the runtime itself delivers to actors, and the records of ``stats()``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class Published:
    """A bus message matching one of the receiver's subscriptions."""

    topic: str
    payload: Any


@attrs.frozen
class Missed:
    """``count`` bus messages were dropped because the subscriber's buffer was full.

    Delivered in place, between the messages published before and after the drops.
    """

    count: int


@attrs.frozen(eq=False)
class Terminated:
    """The watched actor ``ref`` stopped for good.

    ``reason`` is ``None`` when it was asked to stop, or the exception that ended it
    (a crash of a ``temporary`` actor, a supervisor that gave up, ...).
    """

    ref: Any
    reason: BaseException | None


@attrs.frozen
class ActorStats:
    """A snapshot of one actor: messages ``mailbox``-waiting, ``processed``, ``restarts``."""

    mailbox: int
    processed: int
    restarts: int


@attrs.frozen
class SystemStats:
    """A snapshot of the system: per-actor ``actors`` (name -> ActorStats), ``dead_letters``."""

    actors: Mapping[str, ActorStats]
    dead_letters: int
