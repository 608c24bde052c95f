"""Fault injection for tests: crash, delay or stall chosen actors' messages.

Off unless a test adds a fault; while no fault is registered, an actor's loop pays one
boolean test per message.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import trio


class InjectedCrash(RuntimeError):
    """The exception an injected crash raises (unless the fault names another)."""


class Fault:
    """One registered fault; ``remove()`` takes it out, ``hits`` counts its firings."""

    def __init__(
        self,
        faults: FaultInjector,
        pattern: str,
        action: str,
        *,
        nth: int | None,
        when: Callable[[Any], bool] | None,
        times: int | None,
        seconds: float = 0.0,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        if nth is not None and (not isinstance(nth, int) or nth < 1):
            raise ValueError(f"nth must be an int >= 1, got {nth!r}")
        self._faults = faults
        self.pattern = pattern
        self.action = action
        self.nth = nth
        self.when = when
        self.times = times
        self.seconds = seconds
        self.error = error
        self.hits = 0
        self.seen: dict[str, int] = {}  # per actor name: matching messages seen
        self.gate = trio.Event()

    def _matches(self, name: str, message: Any) -> bool:
        if not fnmatch.fnmatchcase(name, self.pattern):
            return False
        if self.when is not None and not self.when(message):
            return False
        count = self.seen[name] = self.seen.get(name, 0) + 1
        if self.nth is not None and count != self.nth:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True

    def release(self) -> None:
        """Let messages held by a ``stall`` fault go on (and stop stalling)."""
        self.gate.set()
        self.remove()

    def remove(self) -> None:
        """Unregister the fault."""
        self._faults._remove(self)


class FaultInjector:
    """``system.faults``: make chosen actors crash, slow down or stall.

    ``name`` is a glob over actor names.  A fault fires before the actor's handler
    sees the message, so an injected crash looks to the runtime (and to the asker)
    exactly like a crash of the handler.
    """

    def __init__(self) -> None:
        self.active = False
        self._faults: list[Fault] = []

    def crash(
        self,
        name: str,
        *,
        nth: int | None = None,
        when: Callable[[Any], bool] | None = None,
        times: int | None = 1,
        error: Callable[[], BaseException] | None = None,
    ) -> Fault:
        """Crash the actor on its ``nth`` matching message (default: the first),
        or on messages for which ``when(message)`` is true, at most ``times`` times."""
        return self._add(Fault(self, name, "crash", nth=nth, when=when, times=times, error=error))

    def delay(
        self,
        name: str,
        seconds: float,
        *,
        when: Callable[[Any], bool] | None = None,
        times: int | None = None,
    ) -> Fault:
        """Sleep ``seconds`` before the actor handles each matching message."""
        return self._add(Fault(self, name, "delay", nth=None, when=when, times=times, seconds=seconds))

    def stall(self, name: str, *, when: Callable[[Any], bool] | None = None) -> Fault:
        """Hold matching messages until ``fault.release()``: the mailbox backs up."""
        return self._add(Fault(self, name, "stall", nth=None, when=when, times=None))

    def clear(self) -> None:
        """Remove every fault (stalled messages are released)."""
        for fault in list(self._faults):
            fault.gate.set()
        self._faults.clear()
        self.active = False

    def _add(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        self.active = True
        return fault

    def _remove(self, fault: Fault) -> None:
        if fault in self._faults:
            self._faults.remove(fault)
        self.active = bool(self._faults)

    async def before(self, name: str, message: Any) -> None:
        """Apply the faults matching this message (called by the actor loop)."""
        for fault in list(self._faults):
            if not fault._matches(name, message):
                continue
            if fault.action == "crash":
                raise fault.error() if fault.error else InjectedCrash(
                    f"injected crash of actor {name!r} on {message!r:.200}"
                )
            if fault.action == "delay":
                await trio.sleep(fault.seconds)
            else:
                await fault.gate.wait()
