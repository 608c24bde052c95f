"""Publish/subscribe by glob pattern, where a slow subscriber never blocks a publisher."""

from __future__ import annotations

import collections
import fnmatch
import re
from typing import TYPE_CHECKING, Any

import trio

from ._actor import ActorRef
from ._errors import ActorStopped, MailboxFull
from ._messages import Missed, Published

if TYPE_CHECKING:
    from ._system import ActorSystem


class _MissedRun:
    """Placeholder in a subscriber's queue for a run of dropped messages."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


class Subscription:
    """One subscriber's pattern and bounded buffer; ``cancel()`` ends it.

    A message goes straight into the subscriber's mailbox when it has room and
    nothing published earlier is still waiting; otherwise up to ``buffer`` messages
    wait here for room (a forwarding task delivers them in order).  Beyond that they
    are dropped and counted, and the subscriber receives ``Missed(count)`` in their
    place, as soon as the messages before the drop have been delivered.
    """

    def __init__(self, bus: Bus, pattern: str, ref: ActorRef, buffer: int) -> None:
        self.pattern = pattern
        self.ref = ref
        self._bus = bus
        self._match = re.compile(fnmatch.translate(pattern)).match
        self._buffer = buffer
        self._queue: collections.deque[Any] = collections.deque()
        self._pending = 0  # Published messages in the queue (what the buffer bounds)
        self._lot = trio.lowlevel.ParkingLot()
        self._cancelled = False
        self._in_flight = False  # the forwarder holds a message it is delivering

    def _offer(self, message: Published) -> bool:
        if not self._queue and not self._in_flight:
            try:
                self.ref.tell_nowait(message)
                return True
            except MailboxFull:
                pass  # wait in the buffer for room, in order
            except ActorStopped:
                self.cancel()
                return False
        if self._pending >= self._buffer:
            if self._queue and isinstance(self._queue[-1], _MissedRun):
                self._queue[-1].count += 1
            else:
                self._queue.append(_MissedRun())
            return False
        self._queue.append(message)
        self._pending += 1
        self._lot.unpark()
        return True

    async def _forward(self) -> None:
        queue = self._queue
        while not self._cancelled:
            if not queue:
                await self._lot.park()
                continue
            item = queue.popleft()
            if isinstance(item, _MissedRun):
                item = Missed(item.count)
            else:
                self._pending -= 1
            self._in_flight = True
            try:
                await self.ref.tell(item)
            except ActorStopped:
                self.cancel()
            finally:
                self._in_flight = False

    def cancel(self) -> None:
        """Stop delivering to this subscriber; what is still buffered is dropped."""
        self._cancelled = True
        self._queue.clear()
        self._lot.unpark_all()
        if self in self._bus._subscriptions:
            self._bus._subscriptions.remove(self)
            self._bus._by_topic.clear()


class Bus:
    """The system's message bus: topics are strings, patterns are globs (``task.*``).

    ``publish`` never blocks on subscribers, so an actor may publish from inside its
    handler even to topics it subscribes to itself.
    """

    def __init__(self, system: ActorSystem) -> None:
        self._system = system
        self._subscriptions: list[Subscription] = []
        self._by_topic: dict[str, list[Subscription]] = {}  # topic -> matching, cached

    async def subscribe(self, pattern: str, ref: ActorRef, buffer: int = 256) -> Subscription:
        """Deliver ``Published(topic, payload)`` for every topic matching ``pattern`` to ``ref``."""
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a str, got {pattern!r}")
        if not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1, got {buffer!r}")
        if not isinstance(ref, ActorRef):
            raise TypeError(f"subscribe needs an ActorRef, got {ref!r}")
        subscription = Subscription(self, pattern, ref, buffer)
        self._subscriptions.append(subscription)
        self._by_topic.clear()
        self._system._start_service(subscription._forward)
        await trio.lowlevel.checkpoint()
        return subscription

    def publish_nowait(self, topic: str, payload: Any = None) -> int:
        """Publish without waiting; return how many subscribers got it buffered."""
        matching = self._by_topic.get(topic)
        if matching is None:
            matching = [sub for sub in self._subscriptions if sub._match(topic)]
            self._by_topic[topic] = matching
        if not matching:
            return 0
        message = Published(topic, payload)
        delivered = 0
        for subscription in matching:
            if subscription._offer(message):
                delivered += 1
        return delivered

    async def publish(self, topic: str, payload: Any = None) -> int:
        """Publish ``payload`` on ``topic`` (a trio checkpoint; never waits on subscribers).

        Returns how many subscribers got it buffered (the others count it as missed).
        """
        await trio.lowlevel.checkpoint()
        return self.publish_nowait(topic, payload)
