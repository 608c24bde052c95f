"""One long-lived thread that runs blocking SQLite calls for the trio side."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

_STOP = object()


class SqliteThread:
    """A dedicated thread: ``await run(fn, *args)`` runs ``fn`` there and returns its
    result (or raises its exception), costing one thread hop per call.

    Calls run one at a time, in order. A call that has started is never abandoned:
    cancelling the caller waits for it to finish (a transaction is never left half
    way). The thread is always the same one, so a sqlite3 connection used only
    through it stays on one thread for its whole life.
    """

    def __init__(self, name: str = "hive-store-sqlite") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._closed = False

    def _main(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            fn, args, token, task = item
            result = outcome.capture(fn, *args)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                # The trio run that asked is gone; nobody is waiting for the result.
                continue

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the thread; a checkpoint that cannot be cancelled
        once the call is queued."""
        if self._closed:
            raise RuntimeError("the SQLite thread is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        self._queue.put((fn, args, trio.lowlevel.current_trio_token(), task))

        def abort(_: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def close(self) -> None:
        """Let the thread exit after the calls already queued; returns at once."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
