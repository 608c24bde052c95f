"""``hive`` (also ``python -m hive_actors``): look at and steer a hive's database.

Every command opens the database itself (an actor system and the store's DB actor in
this process) and never talks to a running hive process, so it works while a hive
runs on the same file, and when none does::

    hive --db hive.db submit --kind code --title "Add a test" --prompt "..."
    hive --config hive.toml status
    hive --db hive.db events --since 10 --follow
    hive --db hive.db review 7 --reject --feedback "cover the error path too"

``--config FILE`` (the database is its ``[hive] db``), ``--db FILE`` and ``--json``
go before or after the command. With ``--json`` a command prints exactly one JSON
document (``events``: one JSON object per line). Errors are one line on stderr;
the exit status is 1 for a refused operation (no such task, not allowed in its
status) and 2 for a bad configuration or database.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from . import _view
from .actors import open_actor_system
from .hive import ConfigError, HiveConfig
from .run import EXIT_BAD_INPUT, error_line, find_error, load_config, make_console
from .store import DatabaseError, Event, StoreError, Task, open_store

#: Exit status for an operation the store refused (no such task, illegal transition).
EXIT_REFUSED = 1
#: Seconds between two reads of the events table with ``events --follow``.
FOLLOW_POLL = 0.25

_CREATING = ("submit", "plan")  # commands that may create the database file


class UsageError(Exception):
    """The command line does not say which database to use, or names a missing one."""


# --------------------------------------------------------------------------- parsing


def _common(suppress: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS
    parent.add_argument("--config", metavar="FILE", default=default if suppress else None,
                        help="the hive's TOML configuration (its [hive] db is used)")
    parent.add_argument("--db", metavar="FILE", default=default if suppress else None,
                        help="the database file (overrides --config's)")
    parent.add_argument("--json", action="store_true", default=default if suppress else False,
                        help="print one JSON document (events: one object per line)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hive``."""
    parser = argparse.ArgumentParser(
        prog="hive", parents=[_common(False)],
        description="Submit work to a hive and watch it, through its database.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common(True)]

    p = sub.add_parser("submit", parents=common, help="store a new task")
    p.add_argument("--kind", required=True, help="the task's kind (a [kinds.NAME] of the config)")
    p.add_argument("--title", required=True)
    p.add_argument("--prompt", default="", help="the prompt; '-' reads it from stdin")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--depends-on", type=int, action="append", default=[], metavar="ID",
                   help="a task that must be done first (repeat for several)")
    p.add_argument("--max-attempts", type=int, default=None, metavar="N",
                   help="attempts (work plus rework); default: the kind's, else 3")

    p = sub.add_parser("plan", parents=common, help="submit a planning request")
    p.add_argument("--title", required=True)
    p.add_argument("--prompt", default="", help="the request; '-' reads it from stdin")
    p.add_argument("--priority", type=int, default=0)

    sub.add_parser("status", parents=common, help="count tasks by status and kind")

    p = sub.add_parser("list", parents=common, help="list tasks")
    p.add_argument("--status", help="only tasks with this status")
    p.add_argument("--kind", help="only tasks of this kind")

    p = sub.add_parser("show", parents=common, help="one task with its attempts")
    p.add_argument("id", type=int)

    p = sub.add_parser("events", parents=common, help="print events (and follow new ones)")
    p.add_argument("--since", type=int, default=0, metavar="SEQ",
                   help="only events after this sequence number (default 0: all)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new events until interrupted")

    p = sub.add_parser("cancel", parents=common,
                       help="cancel a task and its dependents (a running agent or reviewer is killed)")
    p.add_argument("id", type=int)

    p = sub.add_parser("retry", parents=common, help="queue a failed or cancelled task again")
    p.add_argument("id", type=int)

    p = sub.add_parser("review", parents=common, help="decide an escalated task")
    p.add_argument("id", type=int)
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_true", help="accept the work: done")
    verdict.add_argument("--reject", action="store_true", help="send it back for rework")
    p.add_argument("--feedback", default=None, help="what to change (given to the agent)")
    return parser


# --------------------------------------------------------------------------- output


def task_json(task: Task) -> dict[str, Any]:
    """A task's fields (the ``Task`` attributes) as a JSON-able dict."""
    return attrs.asdict(task)


def event_json(event: Event) -> dict[str, Any]:
    """An event as ``events --json`` prints it: seq, type, task_id, ts, payload."""
    return {"seq": event.seq, "type": event.type, "task_id": event.task_id, "ts": event.ts,
            "payload": dict(event.payload or {})}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _event_line(event: Event) -> str:
    task = "" if event.task_id is None else f"task {event.task_id}"
    return (f"{event.seq:>6}  {_view.clock_time(event.ts)}  {event.type:<15} {task:<10} "
            f"{_view.event_detail(event)}").rstrip()


class _Output:
    """Where a command's answer goes: one JSON document, or rich text."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = make_console()

    def json(self, value: Any) -> None:
        """Print ``value`` as one JSON document."""
        print(_dumps(value), flush=True)

    def task(self, task: Task, message: Any) -> int:
        """Print the task's fields with ``--json``, else ``message``; return 0."""
        if self.as_json:
            self.json(task_json(task))
        else:
            self.show(message)
        return 0

    def show(self, renderable: Any) -> None:
        """Print text (never read as markup) or a rich renderable."""
        if isinstance(renderable, str):
            self.console.print(renderable, soft_wrap=True, markup=False)
        else:
            self.console.print(renderable)


# --------------------------------------------------------------------------- commands


def resolve(opts: argparse.Namespace) -> tuple[Path, HiveConfig | None]:
    """The database to open and the configuration, if one was given (or a
    ``hive.toml`` is in the current directory)."""
    config = None
    config_path = opts.config
    if config_path is None and opts.db is None and Path("hive.toml").is_file():
        config_path = "hive.toml"
    if config_path is not None:
        config = load_config(config_path)
    if opts.db is not None:
        db = Path(opts.db)
    elif config is not None and config.db is not None:
        db = Path(config.db)
    else:
        raise UsageError("no database given: pass --db FILE or --config FILE "
                         "(or run where a hive.toml is)")
    if opts.command not in _CREATING and not db.exists():
        raise UsageError(f"{db}: no such database file (a hive, or hive submit, creates it)")
    return db, config


def _prompt(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


async def _submit(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                  out: _Output) -> int:
    kind = config.kinds.get(opts.kind) if config is not None else None
    max_attempts = opts.max_attempts or (kind.max_attempts if kind is not None else 3)
    task = await store.submit(
        opts.kind, opts.title, _prompt(opts.prompt), priority=opts.priority,
        depends_on=opts.depends_on, max_attempts=max_attempts,
        retry_delay=kind.retry_delay if kind is not None else 1.0, actor="cli",
    )
    return out.task(task, f"submitted task {task.id} ({task.kind}: {task.title}), {task.status}")


async def _plan(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                out: _Output) -> int:
    task = await store.submit("plan", opts.title, _prompt(opts.prompt), priority=opts.priority,
                              actor="cli")
    return out.task(task, f"submitted plan request {task.id} ({task.title}); a hive with "
                          "a planner splits it into tasks")


async def _status(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                  out: _Output) -> int:
    status = await store.counts()
    if out.as_json:
        out.json(status)
        return 0
    out.show(_view.counts_table(status, title=f"Tasks in {store.path}"))
    escalated = await store.list("escalated")
    if escalated:
        out.show(_view.tasks_table(escalated, title="Escalated: waiting for a person "
                                                    "(hive review ID --approve|--reject)"))
    return 0


async def _list(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                out: _Output) -> int:
    tasks = await store.list(opts.status, opts.kind)
    if out.as_json:
        out.json([task_json(task) for task in tasks])
    else:
        out.show(_view.tasks_table(tasks))
    return 0


async def _show(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                out: _Output) -> int:
    task = await store.get(opts.id)
    return out.task(task, _view.task_panel(task, await store.runs(task.id)))


async def _events(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                  out: _Output) -> int:
    seq = opts.since
    if not opts.follow:
        events: list[Event] = []
        while True:
            page = await store.events_since(seq, limit=1000)
            events += page
            if len(page) < 1000:
                break
            seq = page[-1].seq
        if out.as_json:
            for event in events:
                print(_dumps(event_json(event)))
            sys.stdout.flush()
        else:
            out.show(_view.events_table(events))
        return 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        while True:
            page = await store.events_since(seq, limit=1000)
            for event in page:
                seq = event.seq
                print(_dumps(event_json(event)) if out.as_json else _event_line(event))
            sys.stdout.flush()
            if len(page) < 1000:
                await trio.sleep(FOLLOW_POLL)
    return 0


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _cancel(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                  out: _Output) -> int:
    before = await store.get(opts.id)
    task = await store.cancel(opts.id, actor="cli")
    killed: list[int] = []
    if before.status in ("running", "review"):
        # The agent (or the reviewer command) may run in another process: kill its
        # recorded process group now rather than let its hive notice at the next
        # heartbeat.
        pgids = [event.payload.get("pgid")
                 for event in await store.events_since(0, limit=1_000_000, task_id=opts.id)
                 if event.type == "task.cancelled"]
        if pgids and pgids[-1]:
            from .hive._command import kill_process_groups

            killed = kill_process_groups([pgids[-1]])
    who = "reviewer" if before.status == "review" else "agent"
    note = f"; killed its {who} (process group {killed[0]})" if killed else ""
    return out.task(task, f"cancelled task {task.id} (was {before.status}){note}")


async def _retry(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                 out: _Output) -> int:
    task = await store.retry(opts.id, actor="cli")
    return out.task(task, f"task {task.id} is {task.status} again, with a fresh attempt budget")


async def _review(store: Any, opts: argparse.Namespace, config: HiveConfig | None,
                  out: _Output) -> int:
    task = await store.decide(opts.id, approve=opts.approve, feedback=opts.feedback,
                              actor="person")
    verdict = "approved" if opts.approve else "rejected"
    return out.task(task, f"task {task.id} {verdict}: now {task.status}")


#: Each subcommand's implementation: ``(store, opts, config, out) -> exit status``.
COMMANDS: dict[str, Callable[..., Awaitable[int]]] = {
    "submit": _submit, "plan": _plan, "status": _status, "list": _list, "show": _show,
    "events": _events, "cancel": _cancel, "retry": _retry, "review": _review,
}


async def run_command(opts: argparse.Namespace, db: Path, config: HiveConfig | None) -> int:
    """Open the database and run the parsed command against it."""
    out = _Output(opts.json)
    # register=False: looking at a database must not recover (take over) the work of
    # a hive that died; the next hive to start does that, and kills its agents.
    async with open_actor_system() as system, open_store(system, str(db), register=False) as store:
        return await COMMANDS[opts.command](store, opts, config, out)


def _fail(message: str, code: int) -> int:
    print(f"hive: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hive`` / ``python -m hive_actors``; returns the exit status."""
    opts = build_parser().parse_args(argv)
    try:
        db, config = resolve(opts)
        return trio.run(run_command, opts, db, config)
    except UsageError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BaseException as exc:
        found = find_error(exc, (ConfigError, DatabaseError))
        if found is not None:
            return _fail(error_line(found), EXIT_BAD_INPUT)
        refused = find_error(exc, (StoreError,))
        if refused is not None:
            return _fail(str(refused), EXIT_REFUSED)
        raise


if __name__ == "__main__":
    sys.exit(main())
