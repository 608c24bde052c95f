"""What a person sees of a hive: the live view, plain status lines and rich tables.

The live view (a :class:`rich.live.Live` redrawn a few times a second) is used when
stdout is a terminal; otherwise :func:`watch` prints one plain status line whenever
the counts change (at most every ``line_interval`` seconds, and at least once a
minute), which reads well in CI logs. The table builders are shared with the
``hive`` command.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .store import STATUSES, Event, Run, Task

#: Status → rich style, used wherever a status is shown.
STATUS_STYLES: Mapping[str, str] = {
    "queued": "cyan",
    "running": "yellow",
    "review": "magenta",
    "escalated": "bold red",
    "done": "green",
    "failed": "red",
    "cancelled": "dim",
}

log = logging.getLogger("hive_actors.view")

_EVENT_PAGE = 1000
_SLOT_SUFFIX = re.compile(r"-\d{5,}$")  # open_hive appends id(runtime) to slot names


def styled_status(status: str) -> Text:
    """The status as coloured text."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def shorten(value: Any, width: int = 60) -> str:
    """``value`` on one line (JSON for non-strings), cut to ``width`` characters."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                            default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def clock_time(ts: float) -> str:
    """A wall-clock timestamp as local ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(ts))


def slot_label(name: str) -> str:
    """A worker slot's actor name without the per-hive suffix (``code-0``)."""
    return _SLOT_SUFFIX.sub("", name)


def event_detail(event: Event) -> str:
    """The interesting part of an event's payload, on one line."""
    payload = dict(event.payload or {})
    for key in ("feedback", "error", "reason"):
        if payload.get(key):
            return shorten(payload[key], 70)
    for key in ("kind", "status", "token", "lease_expires_at", "not_before"):
        payload.pop(key, None)
    return shorten(payload, 70) if payload else ""


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- tables


def counts_table(status: Mapping[str, Any], title: str | None = "Tasks by status") -> Table:
    """One row per kind and a total row, one column per status (``status()``'s dict)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("kind")
    for name in STATUSES:
        table.add_column(name, justify="right", style=STATUS_STYLES[name])
    for kind, counts in sorted(status.get("kinds", {}).items()):
        table.add_row(Text(kind), *(str(counts.get(name, 0) or "·") for name in STATUSES))
    totals = status.get("counts", {})
    table.add_row(Text("total", style="bold"),
                  *(Text(str(totals.get(name, 0)), style="bold") for name in STATUSES),
                  end_section=True)
    return table


def tasks_table(tasks: Iterable[Task], title: str | None = None) -> Table:
    """One row per task: id, kind, status, attempts, title, dependencies, outcome."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("kind")
    table.add_column("status")
    table.add_column("tries", justify="right")
    table.add_column("title", overflow="fold")
    table.add_column("after")
    table.add_column("result / error", overflow="fold")
    for task in tasks:
        outcome = task.error if task.status in ("failed", "cancelled") else task.result
        if task.status == "escalated":
            outcome = task.feedback or task.error
        table.add_row(
            str(task.id), Text(task.kind), styled_status(task.status), str(task.attempts),
            Text(task.title), ",".join(map(str, task.depends_on)), Text(shorten(outcome, 50)),
        )
    return table


def events_table(events: Iterable[Event], title: str | None = None) -> Table:
    """One row per event: seq, time, type, task, actor, detail."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("seq", justify="right")
    table.add_column("time")
    table.add_column("type")
    table.add_column("task", justify="right")
    table.add_column("by")
    table.add_column("detail", overflow="fold")
    for event in events:
        status = (event.payload or {}).get("status", "")
        table.add_row(
            str(event.seq), clock_time(event.ts), Text(event.type, style=STATUS_STYLES.get(
                status, "")), "" if event.task_id is None else str(event.task_id),
            Text(slot_label(event.actor or "")), Text(event_detail(event)),
        )
    return table


def task_panel(task: Task, runs: Sequence[Run]) -> Group:
    """Everything about one task: its fields, then one row per attempt and one per
    review (``#`` says ``N review`` for a review of attempt N; its outcome is the
    verdict)."""
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column(overflow="fold")
    for name in attrs.fields_dict(Task):
        value = getattr(task, name)
        if name == "status":
            value = styled_status(value)
        elif name in ("created_at", "updated_at", "lease_expires_at", "not_before") and value:
            value = f"{value:.3f} ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(value))})"
        elif not isinstance(value, str):
            value = "" if value is None else json.dumps(value, default=str, ensure_ascii=False)
        fields.add_row(name, Text(value) if isinstance(value, str) else value)
    attempts = Table(title="Attempts and reviews", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("#", "worker", "started", "seconds", "exit", "pgid", "outcome", "output"):
        attempts.add_column(column, overflow="fold")
    for run in runs:
        attempts.add_row(
            f"{run.attempt} review" if run.review else str(run.attempt),
            slot_label(run.worker), clock_time(run.started_at),
            "" if run.duration is None else f"{run.duration:.2f}",
            "" if run.exit_code is None else str(run.exit_code),
            "" if run.pgid is None else str(run.pgid), run.outcome or "running",
            Text(shorten(_last_line(run.output_tail), 50)),
        )
    return Group(Panel(fields, title=f"task {task.id}", title_align="left"), attempts)


# --------------------------------------------------------------------------- snapshots


@attrs.frozen
class Working:
    """One attempt in progress: who runs it, which task, for how long."""

    worker: str
    task: Task
    elapsed: float


@attrs.frozen
class Snapshot:
    """What the view shows at one moment."""

    status: Mapping[str, Any]
    working: tuple[Working, ...]
    escalated: tuple[Task, ...]
    recent: tuple[Event, ...]
    per_minute: float
    uptime: float


class Monitor:
    """Reads a running hive's state for the view, a few queries per refresh.

    It follows the events table from where it stood when the monitor was created
    (``from_start=True``: from the first event), keeping the last ``recent`` events
    and the times of recent ``task.done`` events for the throughput.
    """

    def __init__(self, hive: Any, *, recent: int = 8, from_start: bool = False) -> None:
        self.hive = hive
        self.store = hive.store
        self.seq = 0
        self.recent: deque[Event] = deque(maxlen=recent)
        self.done_times: deque[float] = deque()
        self.started = time.time()
        self._caught_up = from_start

    async def _read_events(self) -> None:
        while True:
            page = await self.store.events_since(self.seq, limit=_EVENT_PAGE)
            for event in page:
                self.seq = event.seq
                self.recent.append(event)
                if event.type == "task.done" and self._caught_up:
                    self.done_times.append(event.ts)
            if len(page) < _EVENT_PAGE:
                break
        self._caught_up = True

    async def snapshot(self) -> Snapshot:
        """Query the store and return what the view shows now."""
        await self._read_events()
        now = time.time()
        while self.done_times and self.done_times[0] < now - 60:
            self.done_times.popleft()
        window = max(1.0, min(60.0, now - self.started))
        status = await self.store.counts()
        here = self.hive.running()
        working = []
        for task in await self.store.list(("running", "review")):
            if task.status == "review" and task.id not in here:
                continue  # waiting for a reviewer, not being reviewed
            worker = slot_label(here[task.id]) if task.id in here else "(another process)"
            working.append(Working(worker, task, max(0.0, now - task.updated_at)))
        escalated = await self.store.list("escalated")
        return Snapshot(
            status=status,
            working=tuple(working),
            escalated=tuple(escalated),
            recent=tuple(self.recent),
            per_minute=len(self.done_times) * 60.0 / window,
            uptime=now - self.started,
        )


def render(snapshot: Snapshot, db: str) -> RenderableType:
    """The live view for one snapshot."""
    header = Text.assemble(
        ("hive", "bold"), f"  {db}  ·  up {snapshot.uptime:.0f}s  ·  ",
        (f"{snapshot.per_minute:.1f} done/min", "green"),
    )
    working = Table(title="Workers", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("worker", "task", "kind", "status", "title", "elapsed"):
        working.add_column(column, justify="right" if column in ("task", "elapsed") else "left")
    for item in sorted(snapshot.working, key=lambda w: w.worker):
        working.add_row(item.worker, str(item.task.id), Text(item.task.kind),
                        styled_status(item.task.status), Text(shorten(item.task.title, 40)),
                        f"{item.elapsed:.1f}s")
    if not snapshot.working:
        working.add_row("(idle)", "", "", "", "", "")
    parts: list[RenderableType] = [header, counts_table(snapshot.status), working]
    if snapshot.escalated:
        parts.append(tasks_table(snapshot.escalated,
                                 title="Escalated: waiting for a person (hive review ID)"))
    parts.append(events_table(snapshot.recent, title="Recent events"))
    return Group(*parts)


def status_line(snapshot: Snapshot) -> str:
    """One plain line: uptime, count per status, throughput, escalations waiting."""
    counts = snapshot.status.get("counts", {})
    parts = " ".join(f"{name}={counts.get(name, 0)}" for name in STATUSES)
    line = f"hive: {snapshot.uptime:5.1f}s {parts} | {snapshot.per_minute:.1f} done/min"
    if snapshot.escalated:
        ids = ",".join(str(task.id) for task in snapshot.escalated)
        line += f" | waiting for a person: {ids}"
    return line


async def watch(
    hive: Any,
    console: Console,
    *,
    live: bool,
    refresh: float = 0.25,
    line_interval: float = 2.0,
    from_start: bool = False,
) -> None:
    """Show the hive until cancelled: a live view when ``live``, else status lines.

    On cancellation it draws (or prints) one last, up-to-date frame.
    """
    monitor = Monitor(hive, from_start=from_start)
    db = str(hive.path)
    if live:
        with Live(console=console, auto_refresh=False, redirect_stdout=False,
                  redirect_stderr=True) as display:
            try:
                while True:
                    display.update(render(await monitor.snapshot(), db), refresh=True)
                    await trio.sleep(refresh)
            finally:
                final = await _last_snapshot(monitor)
                if final is not None:
                    display.update(render(final, db), refresh=True)
        return
    last_key: tuple[int, ...] = ()
    last_time = -float("inf")
    try:
        while True:
            snapshot = await monitor.snapshot()
            key = _counts_key(snapshot)
            now = time.monotonic()
            if (key != last_key and now - last_time >= line_interval) or now - last_time >= 60:
                console.print(status_line(snapshot), highlight=False, soft_wrap=True)
                last_key, last_time = key, now
            await trio.sleep(refresh)
    finally:
        final = await _last_snapshot(monitor)
        if final is not None and _counts_key(final) != last_key:
            console.print(status_line(final), highlight=False, soft_wrap=True)


async def _last_snapshot(monitor: Monitor) -> Snapshot | None:
    """A final snapshot, even while cancelled; ``None`` if it cannot be had quickly
    (the store is gone or busy): the last frame then stays as it was."""
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            return await monitor.snapshot()
        except Exception as exc:  # the view must never mask how the hive ended
            log.debug("no final snapshot for the view: %r", exc)
    return None


def _counts_key(snapshot: Snapshot) -> tuple[int, ...]:
    counts = snapshot.status.get("counts", {})
    return tuple(counts.get(name, 0) for name in STATUSES)
