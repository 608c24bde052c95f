"""``python -m hive_actors.run``: start a hive and run it.

Usage::

    python -m hive_actors.run --config hive.toml            # until Ctrl-C / SIGTERM
    python -m hive_actors.run --config hive.toml --until-idle
    python -m hive_actors.run --demo                        # the bundled demo

SIGINT or SIGTERM stops gracefully: no new claims, running agents get ``--grace``
seconds to finish, then they are killed and their tasks re-queued (never lost); a
second signal exits at once (the agents die with the process, and the next hive on
the database re-queues their tasks).

Exit status: 0 when all went well; 1 when ``--until-idle`` (or ``--demo``) ends with
failed tasks (they are named on stderr); 2 for a bad configuration or database (one
line on stderr naming the file and the problem); 128 + the signal number when a
signal interrupts ``--until-idle`` before the hive was idle.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
from rich.console import Console

from . import _view
from .hive import ConfigError, HiveConfig, open_hive
from .store import DatabaseError

log = logging.getLogger("hive_actors.run")

#: Exit status for failed tasks in ``--until-idle`` mode.
EXIT_FAILED = 1
#: Exit status for a bad configuration or database.
EXIT_BAD_INPUT = 2
#: At most this many tasks (the latest) are listed in the final summary table.
SUMMARY_ROWS = 50

_stderr_json = False  # set by configure_logging(): notices as JSON lines too

_HINT = "explore it: hive --db {db} status   (also list, show ID, events)"


# --------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stderr``, so log
    lines go through the live view's redirection instead of tearing it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, message (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        data: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(level: str = "WARNING", as_json: bool = False) -> None:
    """Send ``hive_actors`` logs to stderr at ``level``: one JSON object per line
    with ``as_json``, else ``time level logger: message`` lines. Notices follow."""
    global _stderr_json
    _stderr_json = as_json
    handler = _StderrHandler()
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# --------------------------------------------------------------------------- errors


def find_error(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of ``types`` in ``exc`` or, recursively, in the
    exception groups (and causes) it carries; ``None`` if there is none."""
    if isinstance(exc, types):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, types)
            if found is not None:
                return found
    return None


def error_line(exc: BaseException) -> str:
    """One line for a user: a ``ConfigError`` with every problem joined by ``; ``
    after the file's name, or a ``DatabaseError`` (which names its file)."""
    if isinstance(exc, ConfigError):
        where = f"{exc.source}: " if exc.source else ""
        problems = [p.removeprefix(f"{exc.source}: ") if exc.source else p
                    for p in exc.problems]
        return f"{where}invalid configuration: " + "; ".join(problems)
    return " ".join(str(exc).split())


def notice(message: str, level: str = "WARNING", *, as_json: bool | None = None) -> None:
    """Tell the person running the hive, on stderr, whatever the log level: a
    ``hive: message`` line, or a JSON object like the logs' with ``--log-json``
    (``as_json=None`` follows :func:`configure_logging`)."""
    if as_json if as_json is not None else _stderr_json:
        line = json.dumps({"ts": round(time.time(), 6), "level": level,
                           "logger": "hive_actors.run", "message": message},
                          ensure_ascii=False)
    else:
        line = f"hive: {'error: ' if level == 'ERROR' else ''}{message}"
    print(line, file=sys.stderr, flush=True)


def report_error(message: str, as_json: bool | None = None) -> None:
    """Write one error line to stderr (a JSON object with ``--log-json``)."""
    notice(message, "ERROR", as_json=as_json)


def load_config(path: str | os.PathLike[str]) -> HiveConfig:
    """Read a TOML configuration; its database defaults to ``hive.db`` beside it."""
    config = HiveConfig.from_toml(path)
    if config.db is None:
        config = attrs.evolve(config, db=Path(path).absolute().parent / "hive.db")
    return config


def make_console(file: Any = None) -> Console:
    """A rich console on stdout (or ``file``); 120 columns when it is not a terminal
    and ``COLUMNS`` is unset, so tables in logs are not squeezed."""
    console = Console(file=file, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(file=file, highlight=False, width=120)
    return console


# --------------------------------------------------------------------------- running


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hive_actors.run``."""
    parser = argparse.ArgumentParser(
        prog="python -m hive_actors.run",
        description="Run a hive: a Queen handing tasks to agent workers, a reviewer and "
                    "a planner, all durable in one SQLite file.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE",
                        help="the hive's TOML configuration (default: ./hive.toml)")
    source.add_argument("--demo", action="store_true",
                        help="run the bundled demo in a temporary directory, then exit")
    parser.add_argument("--db", metavar="FILE",
                        help="the database file (overrides the configuration's [hive] db)")
    parser.add_argument("--until-idle", action="store_true",
                        help="exit once no task is queued, running or in review "
                             "(status 1 if any task failed)")
    parser.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                        help="on stop, how long running agents may finish before they "
                             "are killed and re-queued (default 10)")
    parser.add_argument("--plain", action="store_true",
                        help="print status lines even when stdout is a terminal")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="log level on stderr (default WARNING)")
    parser.add_argument("--log-json", action="store_true",
                        help="log one JSON object per line on stderr")
    return parser


class _Stop:
    """Signal state: the first signal asks for a graceful stop, the second forces."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.signum: int | None = None


async def _watch_signals(stop: _Stop, grace: float, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.requested.is_set():
                stop.signum = signum
                stop.requested.set()
                notice(f"{name}: stopping gracefully: no new work; running agents get up "
                       f"to {grace:g} s, then are re-queued (again to force)")
            else:
                notice(f"{name} again: forced exit; running tasks are re-queued when a hive "
                       "next opens the database", "ERROR")
                sys.stdout.flush()
                os._exit(128 + signum)


async def _idle_or_stopped(hive: Any, stop: _Stop) -> bool:
    """Wait until the hive is idle (True) or a stop was requested (False)."""
    idle = False
    async with trio.open_nursery() as nursery:

        async def until_idle() -> None:
            nonlocal idle
            await hive.wait_idle()
            idle = True
            nursery.cancel_scope.cancel()

        async def until_stopped() -> None:
            await stop.requested.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(until_idle)
        nursery.start_soon(until_stopped)
    return idle


async def _summary(hive: Any, console: Console, *, demo_dir: Path | None) -> list[Any]:
    """Print the final table; return the failed tasks of the kinds served here."""
    status = await hive.status()
    total = sum(status["counts"].values())
    tasks = await hive.store.list(after_id=max(0, total - SUMMARY_ROWS))  # the latest ones
    served = hive.served_kinds()
    console.print()
    if demo_dir is not None:
        await _story(hive, console)
    title = "Summary" if total <= len(tasks) else f"Summary: the last {len(tasks)} of {total} tasks"
    console.print(_view.tasks_table(tasks, title=title))
    console.print(_view.counts_table(status, title=None))
    escalated = await hive.list(status="escalated")
    if escalated:
        ids = " ".join(str(t.id) for t in escalated)
        console.print(f"waiting for a person: {ids} (decide with: hive --db {hive.path} "
                      "review ID --approve|--reject)", markup=False)
    console.print(f"database: {hive.path}", markup=False, soft_wrap=True)
    if demo_dir is not None:
        console.print(f"workspaces: {demo_dir / 'workspaces'} (one folder per task)",
                      markup=False, soft_wrap=True)
    console.print(_HINT.format(db=hive.path), markup=False, soft_wrap=True)
    return [t for t in await hive.list(status="failed") if t.kind in served]


_STORY = {
    "task.rejected": "rejected by the reviewer: {feedback}",
    "task.retrying": "attempt {attempt} failed ({error}); retried after {delay:.1f}s",
    "task.failed": "failed for good: {error}",
    "task.escalated": "escalated to a person: {reason}",
    "plan.stored": "the planner stored {count} subtasks: {keys}",
}


async def _story(hive: Any, console: Console) -> None:
    """The demo's notable moments: the plan, rejections, retries, failures."""
    titles = {task.id: task.title for task in await hive.list()}
    lines = []
    async for event in hive.events(0, follow=False):
        template = _STORY.get(event.type)
        if template is None:
            continue
        payload = dict(event.payload or {})
        subtasks = payload.get("tasks") if isinstance(payload.get("tasks"), dict) else {}
        payload["count"] = len(subtasks)
        payload["keys"] = ", ".join(f"{key}={task_id}" for key, task_id in subtasks.items())
        for key in ("feedback", "error", "reason"):
            payload[key] = _view.shorten(payload.get(key, ""), 90)
        payload.setdefault("attempt", "?")
        payload.setdefault("delay", 0.0)
        try:
            text = template.format(**payload)
        except (KeyError, ValueError, TypeError):
            text = event.type
        lines.append(f"  task {event.task_id} ({titles.get(event.task_id, '?')}): {text}")
    if lines:
        console.print("What happened:")
        for line in lines:
            console.print(line, soft_wrap=True, markup=False)


async def run_hive(
    config: HiveConfig,
    db: str | os.PathLike[str],
    *,
    until_idle: bool = False,
    grace: float = 10.0,
    console: Console | None = None,
    live: bool | None = None,
    demo_dir: Path | None = None,
    handle_signals: bool = True,
) -> int:
    """Run a hive on ``db`` with ``config`` and return the exit status.

    Runs until a signal (``handle_signals``) or, with ``until_idle``, until idle;
    shows the live view when ``live`` (default: when the console is a terminal),
    else plain status lines. With ``demo_dir`` it first submits the demo's plan
    request. Raises ``DatabaseError`` (possibly inside an exception group) when the
    database cannot be used.
    """
    console = console or make_console()
    live = console.is_terminal if live is None else live
    stop = _Stop()
    code = 0
    async with trio.open_nursery() as outer:
        if handle_signals:
            await outer.start(_watch_signals, stop, grace)
        try:
            async with open_hive(db, config, grace=grace) as hive:
                log.info("hive running on %s, serving %s", hive.path,
                         ", ".join(sorted(hive.served_kinds())))
                if demo_dir is not None:
                    from . import demo

                    plan = await hive.plan(title=demo.REQUEST_TITLE, prompt=demo.REQUEST_PROMPT)
                    log.info("demo: plan request %d submitted", plan.id)
                async with trio.open_nursery() as view:
                    view.start_soon(lambda: _view.watch(hive, console, live=live,
                                                        from_start=demo_dir is not None))
                    if until_idle:
                        idle = await _idle_or_stopped(hive, stop)
                    else:
                        await stop.requested.wait()
                        idle = False
                    view.cancel_scope.cancel()
                if until_idle and idle:
                    failed = await _summary(hive, console, demo_dir=demo_dir)
                    if failed:
                        names = ", ".join(f"{t.id} ({t.title}: {_view.shorten(t.error, 80)})"
                                          for t in failed[:20])
                        if len(failed) > 20:
                            names += f" and {len(failed) - 20} more (hive list --status failed)"
                        notice(f"{len(failed)} task(s) failed: {names}", "ERROR")
                        code = EXIT_FAILED
                elif until_idle:
                    code = 128 + (stop.signum or signal.SIGINT)
        finally:
            outer.cancel_scope.cancel()
    if stop.requested.is_set():
        notice(f"stopped; unfinished tasks wait in {db} (see: hive --db {db} status)")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m hive_actors.run``; returns the exit status."""
    opts = build_parser().parse_args(argv)
    configure_logging(opts.log_level, opts.log_json)
    demo_dir = None
    try:
        if opts.demo:
            from . import demo

            config_path = demo.prepare()
            demo_dir = config_path.parent
            print(f"hive demo in {demo_dir}", flush=True)
        elif opts.config is not None:
            config_path = Path(opts.config)
        elif Path("hive.toml").is_file():
            config_path = Path("hive.toml")
        else:
            report_error("no configuration: pass --config FILE (or run where a hive.toml "
                         "is), or try --demo")
            return EXIT_BAD_INPUT
        config = load_config(config_path)
        db = Path(opts.db) if opts.db else config.db
        return trio.run(lambda: run_hive(
            config, db, until_idle=opts.until_idle or opts.demo, grace=opts.grace,
            live=False if opts.plain else None, demo_dir=demo_dir,
        ))
    except KeyboardInterrupt:
        notice("interrupted")
        return 128 + signal.SIGINT
    except BaseException as exc:
        found = find_error(exc, (ConfigError, DatabaseError))
        if found is None:
            raise
        report_error(error_line(found))
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
