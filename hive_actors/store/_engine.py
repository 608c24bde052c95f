"""The synchronous core of the store: one sqlite3 connection and the task state machine.

Everything here is blocking and runs in the DB actor's dedicated thread. The actor
calls :meth:`Engine.execute` with a whole batch of operation messages; the batch runs
in one transaction with a savepoint per operation, so one failing operation changes
nothing and does not disturb the others. The events of the operations that succeeded
are returned, to be published only after COMMIT.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import random
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import outcome

from . import messages as m
from ._errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DependencyError,
    IllegalTransition,
    InvalidPlan,
    StaleLease,
    StoreError,
    TaskNotFound,
)
from ._model import (
    CANCELLED,
    DONE,
    ESCALATED,
    FAILED,
    QUEUED,
    REVIEW,
    RUNNING,
    STATUSES,
    TERMINAL,
    Event,
    PlannedTask,
    RecoveryReport,
    Run,
    StoredPlan,
    Task,
)
from ._schema import classify, inspect, migrate, precheck

#: Retries never wait longer than this (seconds).
MAX_BACKOFF = 300.0
#: Runs keep at most this many bytes of output (the tail).
OUTPUT_TAIL_BYTES = 64 * 1024

_COLS = (
    "id, kind, title, prompt, status, priority, attempts, result, feedback, error, "
    "parent_id, created_at, updated_at, max_attempts, retry_delay, fencing_token, "
    "lease_owner, lease_expires_at, not_before, metadata, attempts_base, lease_hive, NULL"
)
# The same with the dependencies (comma-separated, '' for none), for bulk reads.
_COLS_DEPS = _COLS[: -len("NULL")] + (
    "coalesce((SELECT group_concat(depends_on) FROM task_deps "
    "WHERE task_deps.task_id = tasks.id), '')"
)
#: Dependencies never change once stored; this many are cached in memory at most.
_DEPS_CACHE_SIZE = 100_000
#: At most this many rows of leased tasks are kept in memory (see ``Engine._rows_cache``).
_ROW_CACHE_SIZE = 50_000
_Row = collections.namedtuple(
    "_Row",
    "id kind title prompt status priority attempts result feedback error parent_id "
    "created_at updated_at max_attempts retry_delay fencing_token lease_owner "
    "lease_expires_at not_before metadata attempts_base lease_hive deps",
)
_ROW_INDEX = {name: i for i, name in enumerate(_Row._fields)}
_UPDATED_AT = _ROW_INDEX["updated_at"]
_make_row = _Row._make
_ACTIVE = (QUEUED, RUNNING, REVIEW, ESCALATED)
_SELECT_ONE = f"SELECT {_COLS} FROM tasks WHERE id = ?"
_CLAIM = (
    f"SELECT {_COLS} FROM tasks WHERE status = 'queued' AND pending_deps = 0 AND kind = ? "
    "AND not_before <= ? ORDER BY priority DESC, id LIMIT ?"
)
_CLAIM_UPDATE = (
    "UPDATE tasks SET status = 'running', attempts = ?, fencing_token = ?, lease_owner = ?, "
    "lease_hive = ?, lease_expires_at = ?, updated_at = ? WHERE id = ?"
)
_INSERT_RUN = (
    "INSERT INTO runs (task_id, attempt, fencing_token, worker, hive_id, started_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
# A review claim's run: the attempt under review, the review lease's token.
_INSERT_REVIEW_RUN = (
    "INSERT INTO runs (task_id, attempt, fencing_token, worker, hive_id, started_at, review) "
    "VALUES (?, ?, ?, ?, ?, ?, 1)"
)
_INSERT_TASK = (
    "INSERT INTO tasks (kind, title, prompt, status, priority, max_attempts, retry_delay, "
    "not_before, pending_deps, error, cancel_cause, parent_id, metadata, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Event rows are buffered and written with one executemany per batch; their ``seq`` is
# assigned here, continuing from the largest ever given (AUTOINCREMENT's counter),
# which nothing else can move while this connection holds the write lock.
_INSERT_EVENTS = (
    "INSERT INTO events (seq, ts, type, task_id, actor, correlation_id, payload) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_LAST_SEQ = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), "
    "coalesce((SELECT max(seq) FROM events), 0))"
)
_DEPENDENTS_READY = (
    "UPDATE tasks SET pending_deps = pending_deps - 1 "
    "WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ?)"
)
_CLOSE_RUN = (
    "UPDATE runs SET ended_at = ?, duration = ? - started_at, "
    "exit_code = coalesce(?, exit_code), output_tail = coalesce(?, output_tail), "
    "outcome = ? WHERE task_id = ? AND fencing_token = ? AND ended_at IS NULL"
)
_CLOSE_RUN_PGID = _CLOSE_RUN + " RETURNING pgid"
_PLAN_FIELDS = frozenset(attrs.fields_dict(PlannedTask))


def backoff_delay(retry_delay: float, failures: int, rng: random.Random) -> float:
    """Delay before the next attempt after ``failures`` failed attempts in a row.

    ``retry_delay`` doubled per failure, times a jitter factor in [0.75, 1.25],
    capped at :data:`MAX_BACKOFF`.
    """
    base = retry_delay * 2.0 ** max(failures - 1, 0)
    return min(MAX_BACKOFF, min(MAX_BACKOFF, base) * rng.uniform(0.75, 1.25))


def tail(output: str | bytes | None) -> str | None:
    """The last 64 KiB of ``output`` as text (bytes are decoded as UTF-8)."""
    if output is None:
        return None
    data = output.encode("utf-8", "surrogateescape") if isinstance(output, str) else output
    if len(data) > OUTPUT_TAIL_BYTES:
        data = data[-OUTPUT_TAIL_BYTES:]
    return data.decode("utf-8", "replace")


def _json(value: Any) -> str | None:
    """``json.dumps(value)``, None for None; a circular value raises ValueError."""
    if value is None:
        return None
    try:
        return _dump_payload(value)
    except RecursionError:  # the fast encoder does not track cycles: let json name it
        return json.dumps(value)


def _payload_encoder() -> Callable[[Any], str]:
    """``json.dumps`` (same output) without building a new encoder per call, for event
    payloads and results. It does not track cycles: a circular value ends in
    RecursionError (see ``_json``)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.dumps
    default = json.JSONEncoder().default
    encode = make(None, default, json.encoder.encode_basestring_ascii, None,
                  ": ", ", ", False, False, True)
    join = "".join

    def dumps(value: Any) -> str:
        return join(encode(value, 0))

    return dumps


_dump_payload = _payload_encoder()
_UNSET: Any = object()


def _task(row: _Row, deps: tuple[int, ...], result_value: Any = _UNSET) -> Task:
    (id_, kind, title, prompt, status, priority, attempts, result, feedback, error,
     parent_id, created_at, updated_at, max_attempts, retry_delay, fencing_token,
     lease_owner, lease_expires_at, not_before, metadata, _, _, _) = row
    if result_value is _UNSET:
        result_value = None if result is None else _loads(result)
    return Task(
        id_, kind, title, prompt, status, priority, attempts, result_value,
        feedback, error, deps, parent_id, created_at, updated_at, max_attempts,
        float(retry_delay), fencing_token, lease_owner, lease_expires_at,
        float(not_before), None if metadata is None else json.loads(metadata),
    )


def _loads(text: str) -> Any:
    return _SCALARS[text] if text in _SCALARS else json.loads(text)


def _decoded(value: Any, text: str | None) -> Any:
    """What ``_loads(text)`` returns for ``text = _json(value)``, without parsing when
    ``value`` is a scalar or a flat dict or list of scalars (a fresh copy, so the
    Task never shares a mutable object with the caller); parsed otherwise."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if kind is dict:
        if all(type(k) is str and type(x) in _JSON_SCALARS for k, x in value.items()):
            return dict(value)
    elif kind is list and all(type(x) in _JSON_SCALARS for x in value):
        return list(value)
    return _loads(text)  # type: ignore[arg-type]


# Types whose values come back from a JSON round trip equal and of the same type.
_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


# JSON texts decoded without the parser (immutable values only: they are shared).
_SCALARS: dict[str, Any] = {"null": None, "true": True, "false": False}


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux: clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields and fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def _process_alive(pid: int, proc_start: str | None) -> bool:
    if os.path.isdir("/proc/self"):
        current = _proc_start(pid)
        return current is not None and (proc_start is None or current == proc_start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _BatchLost(Exception):
    """SQLite rolled back the whole transaction on its own (disk full, I/O error)."""


class Engine:
    """Owns one sqlite3 connection; runs batches of operations in one transaction.

    Not thread-safe: every call must come from one thread at a time (the DB actor's).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        hive_id: str,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._conn = conn
        self.path = path
        self.hive_id = hive_id
        self._clock = clock
        self._rng = rng
        self._events: list[Event] = []
        # Event rows of the open transaction not yet written, and the last seq given.
        self._rows: list[tuple[Any, ...]] = []
        self._seq: int | None = None
        self._update_sql: dict[tuple[str, ...], str] = {}
        # The current row of every task this engine has seen running or in review (the
        # ones a worker or reviewer will act on next), so acting on them needs no read.
        # Kept exact: every write to a task goes through it, it is dropped when a
        # transaction or savepoint rolls back, and when another connection committed
        # since (``PRAGMA data_version`` moved).
        self._rows_cache: dict[int, _Row] = {}
        self._data_version: int | None = None
        self._busy_ms = 5000
        self._no_wait = False
        self._checkpointer: sqlite3.Connection | None = None
        #: True when a COMMIT waits for the disk (fsync): synchronous FULL or EXTRA.
        self.commit_syncs = False
        self._payloads: dict[tuple[str, str], str] = {}
        #: Transactions run by :meth:`execute`, and operations in them (observability).
        self.batches = 0
        self.operations = 0
        self._deps_cache: dict[int, tuple[int, ...]] = {}
        self._inserted: list[int] = []  # task ids inserted by the open transaction
        self._handlers: dict[type, Callable[[Any, float], Any]] = {
            m.Submit: self._submit,
            m.Claim: self._claim,
            m.ClaimReview: self._claim_review,
            m.Heartbeat: self._heartbeat,
            m.RecordRun: self._record_run,
            m.Succeed: self._succeed,
            m.Fail: self._fail,
            m.Release: self._release,
            m.StorePlan: self._store_plan,
            m.Approve: self._approve,
            m.Reject: self._reject,
            m.Escalate: self._escalate,
            m.Decide: self._decide,
            m.Cancel: self._cancel,
            m.Retry: self._retry,
            m.SweepLeases: self._sweep,
            m.Get: self._get,
            m.ListTasks: self._list,
            m.Counts: self._counts,
            m.EventsSince: self._events_since,
            m.GetRuns: self._get_runs,
            m.TouchHive: self._touch_hive,
        }
        self._read_only = frozenset(self._handlers[t] for t in m.READ_ONLY)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        hive_stale_after: float = 60.0,
        integrity_check: bool = False,
        register: bool = True,
    ) -> tuple[Engine, RecoveryReport, list[Event]]:
        """Open (creating if needed) the database at ``path``, migrate it, register
        this hive process and recover the leases of hive processes that are gone
        (with ``register=False``, as admin tools do, neither: no lease can be taken).

        Raises a :class:`DatabaseError` subclass, having written nothing, when the
        file cannot be used.
        """
        if synchronous.upper() not in ("NORMAL", "FULL", "OFF", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        path = os.fspath(path)
        precheck(path)
        try:
            conn = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise classify(path, exc) from exc
        try:
            try:
                version = inspect(conn, path)
                if integrity_check and version:
                    bad = conn.execute("PRAGMA quick_check").fetchone()[0]
                    if bad != "ok":
                        raise DatabaseCorrupt(
                            path, f"the integrity check failed ({bad})",
                            "Restore it from a backup",
                        )
                conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal" and path != ":memory:":
                    raise DatabaseError(path, f"cannot switch to WAL journal mode (got {mode})")
                conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    version = inspect(conn, path)  # may have changed while we waited
                    migrate(conn, version)
                    engine = cls(conn, path, uuid.uuid4().hex, clock, rng or random.Random())
                    engine._busy_ms = int(busy_timeout * 1000)
                    engine.commit_syncs = synchronous.upper() in ("FULL", "EXTRA")
                    if register:
                        report = engine._register_and_recover(hive_stale_after)
                    else:
                        report = RecoveryReport(hive_id=engine.hive_id)
                    engine._flush()
                    events = engine._events
                    engine._events = []
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise classify(path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return engine, report, events

    def close(self) -> None:
        """Mark this hive process stopped and close the connection."""
        try:
            if self._no_wait:
                self._conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            self._conn.execute(
                "UPDATE hives SET stopped_at = ? WHERE id = ?", (self._clock(), self.hive_id)
            )
        except sqlite3.Error:
            # The hive row stays "alive"; the next open finds the process gone and
            # recovers its leases the same way. Closing must still happen.
            pass
        finally:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._conn.close()

    def _register_and_recover(self, stale_after: float) -> RecoveryReport:
        conn = self._conn
        now = self._clock()
        pid = os.getpid()
        host = socket.gethostname()
        conn.execute(
            "INSERT INTO hives (id, pid, hostname, proc_start, started_at, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.hive_id, pid, host, _proc_start(pid), now, now),
        )
        alive = [self.hive_id]
        dead = []
        others = conn.execute(
            "SELECT id, pid, hostname, proc_start, heartbeat_at FROM hives "
            "WHERE stopped_at IS NULL AND id != ?",
            (self.hive_id,),
        ).fetchall()
        for hive_id, hpid, hhost, hstart, heartbeat_at in others:
            if hhost == host:
                is_alive = _process_alive(hpid, hstart)
            else:
                is_alive = heartbeat_at >= now - stale_after
            if is_alive:
                alive.append(hive_id)
            else:
                dead.append(hive_id)
                conn.execute("UPDATE hives SET stopped_at = ? WHERE id = ?", (now, hive_id))
        marks = ",".join("?" * len(alive))
        rows = conn.execute(
            f"SELECT {_COLS} FROM tasks WHERE status IN ('running', 'review') "
            f"AND lease_expires_at IS NOT NULL "
            f"AND (lease_hive IS NULL OR lease_hive NOT IN ({marks})) ORDER BY id",
            alive,
        ).fetchall()
        requeued, failed, pgids = [], [], []
        op = m.SweepLeases(actor="recovery")
        for raw in rows:
            row = _Row._make(raw)
            pgid = self._close_run(row, now, "recovered", pgid=True)
            if pgid is not None:
                pgids.append(pgid)
            if row.status == REVIEW:
                # Stays in review, for the next reviewer; the dead hive's reviewer
                # command (its pgid above) is killed before that.
                self._update(row, now, lease_owner=None, lease_hive=None,
                             lease_expires_at=None, fencing_token=row.fencing_token + 1)
                continue
            reason = f"hive process {row.lease_hive} that held the lease is gone"
            if row.attempts - row.attempts_base < row.max_attempts:
                new = self._update(row, now, status=QUEUED, not_before=now, error=reason,
                                   **_NO_LEASE)
                requeued.append(row.id)
            else:
                new = self._update(row, now, status=FAILED, error=reason, **_NO_LEASE)
                failed.append(row.id)
            self._emit(op, now, "task.recovered", new,
                       {"reason": reason, "attempt": row.attempts, "pgid": pgid})
            if new.status == FAILED:
                self._cascade(row.id, now, op)
        return RecoveryReport(
            hive_id=self.hive_id,
            requeued=tuple(requeued),
            failed=tuple(failed),
            pgids=tuple(pgids),
            dead_hives=tuple(dead),
        )

    # ----------------------------------------------------------------- batches

    def execute(self, ops: Sequence[Any]) -> tuple[list[outcome.Outcome], list[Event]]:
        """Run ``ops`` in one transaction and COMMIT once.

        Returns one outcome per op, in order (a value, or the error that op raised:
        that op changed nothing), and the events to publish, in commit order. If
        SQLite fails the transaction as a whole, every op gets a ``DatabaseError``
        and nothing is committed or published.

        The same as :meth:`begin` (waiting for the write lock), :meth:`run_begun`
        and :meth:`commit`, which the DB actor calls apart to run the waits and the
        I/O on its SQLite thread and the rest on the trio thread.
        """
        try:
            self.begin(wait=True)
        except sqlite3.Error as exc:
            return self.failed(ops, exc)
        results, events = self.run_begun(ops)
        if not self.in_transaction:
            return results, events  # the transaction failed as a whole
        return self.commit(ops, results, events)

    def begin(self, wait: bool) -> bool:
        """BEGIN IMMEDIATE. Without ``wait`` on an engine set to :meth:`no_wait`,
        returns False at once (nothing begun) when another connection holds the
        write lock; with it, waits up to ``busy_timeout`` (raising if still locked)."""
        if wait and self._no_wait:
            conn = self._conn
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute("PRAGMA busy_timeout = 0")
            return True
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if wait or not isinstance(classify(self.path, exc), DatabaseLocked):
                raise
            return False
        return True

    #: What :meth:`begin` raises when SQLite fails.
    Error = sqlite3.Error

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open (between :meth:`begin` and its end)."""
        return self._conn.in_transaction

    def no_wait(self) -> None:
        """Make :meth:`begin` without ``wait`` fail at once instead of waiting for a
        lock held by another connection, and COMMIT never run a checkpoint (its disk
        I/O): the caller then waits elsewhere and calls :meth:`checkpoint` from
        another thread."""
        self._conn.execute("PRAGMA busy_timeout = 0")
        if self.path != ":memory:":
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._no_wait = True

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file, with a connection of its
        own (PASSIVE: never waits for nor blocks the engine's connection), so it may
        run on another thread while the engine works. Errors are left to the next
        call (the WAL just grows meanwhile)."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    def run_begun(self, ops: Sequence[Any]) -> tuple[list[outcome.Outcome], list[Event]]:
        """Run ``ops`` in the transaction :meth:`begin` opened, without committing.

        The batch first runs without savepoints. If an operation that writes raises,
        its changes are rolled back and the batch runs again with a savepoint around
        each operation, so the failing one is undone alone. (Most batches fail
        nothing, and a savepoint costs two statements per operation.) If SQLite
        fails the transaction as a whole, it is rolled back and every op gets a
        ``DatabaseError``.
        """
        conn = self._conn
        now = float(self._clock())
        self.batches += 1
        self.operations += len(ops)
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version != self._data_version:
                self._rows_cache.clear()  # another connection wrote
                self._data_version = version
            conn.execute("SAVEPOINT batch")
            done = self._run(ops, now, savepoints=False)
            if done is None:
                conn.execute("ROLLBACK TO batch")  # keeps the write lock
                self._forget_inserted()
                self._rows.clear()
                self._seq = None
                done = self._run(ops, now, savepoints=True)
                assert done is not None
            return done
        except (sqlite3.Error, _BatchLost) as exc:
            return self.failed(ops, exc)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._forget_inserted()
            raise
        finally:
            self._events = []
            self._rows.clear()
            self._seq = None

    def commit(
        self, ops: Sequence[Any], results: list[outcome.Outcome], events: list[Event]
    ) -> tuple[list[outcome.Outcome], list[Event]]:
        """COMMIT the transaction of :meth:`run_begun`; returns its results and
        events, or errors for every op and no events if the COMMIT failed."""
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self.failed(ops, exc)
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._forget_inserted()
            raise
        self._inserted.clear()
        return results, events

    def failed(
        self, ops: Sequence[Any], exc: BaseException
    ) -> tuple[list[outcome.Outcome], list[Event]]:
        """Roll back after SQLite failed the transaction as a whole: an error for
        every op, no events."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._forget_inserted()
        cause = exc.__cause__ if isinstance(exc, _BatchLost) else exc
        if isinstance(cause, sqlite3.Error):
            err: Exception = classify(self.path, cause)
        else:
            err = DatabaseError(self.path, f"the transaction was lost ({cause!r})")
        err.__cause__ = cause
        return [outcome.Error(err) for _ in ops], []

    def _run(
        self, ops: Sequence[Any], now: float, savepoints: bool
    ) -> tuple[list[outcome.Outcome], list[Event]] | None:
        """One pass over the batch inside the open transaction. Without savepoints,
        returns None as soon as a writing operation raises (the caller rolls back)."""
        conn = self._conn
        handlers = self._handlers
        results: list[outcome.Outcome] = []
        append = results.append
        value_of = outcome.Value
        read_only = self._read_only
        rows = self._rows
        published = self._events = []  # _emit appends here
        claim = m.Claim
        i, count = 0, len(ops)
        while i < count:
            op = ops[i]
            i += 1
            handler = handlers.get(type(op))
            if handler is None:
                append(outcome.Error(TypeError(f"not a store operation: {op!r}")))
                continue
            if handler in read_only:
                if rows:
                    self._flush()  # a read sees every event written before it
                append(outcome.capture(handler, op, now))
                continue
            if not savepoints:
                try:
                    if type(op) is claim and i < count and type(ops[i]) is claim:
                        group = [op]
                        while i < count and type(ops[i]) is claim and ops[i].kind == op.kind:
                            group.append(ops[i])
                            i += 1
                        results.extend(map(value_of, self._claim_group(group, now)))
                    else:
                        append(value_of(handler(op, now)))
                except Exception as exc:  # the batch runs again, with savepoints
                    if not conn.in_transaction:
                        raise _BatchLost() from exc
                    return None
                continue
            mark = len(self._inserted)
            rows_mark, seq_mark, events_mark = len(rows), self._seq, len(published)
            conn.execute("SAVEPOINT op")
            try:
                value = handler(op, now)
            except Exception as exc:  # recorded as this op's outcome
                if not conn.in_transaction:
                    raise _BatchLost() from exc
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                del rows[rows_mark:]
                del published[events_mark:]
                self._seq = seq_mark
                self._forget_inserted(mark)
                if isinstance(exc, sqlite3.Error):
                    err = classify(self.path, exc)
                    err.__cause__ = exc
                    exc = err
                append(outcome.Error(exc))
            else:
                conn.execute("RELEASE op")
                append(value_of(value))
        if rows:
            self._flush()
        return results, published

    def _flush(self) -> None:
        """Write the buffered event rows (one statement for all)."""
        if self._rows:
            self._conn.executemany(_INSERT_EVENTS, self._rows)
            self._rows.clear()

    # ----------------------------------------------------------------- helpers

    def _task(self, row: _Row, result_value: Any = _UNSET) -> Task:
        if row.deps is not None:
            deps = tuple(sorted(int(d) for d in row.deps.split(","))) if row.deps else ()
            return _task(row, deps, result_value)
        deps = self._deps_cache.get(row.id)
        return _task(row, self._deps(row.id) if deps is None else deps, result_value)

    def _deps(self, task_id: int) -> tuple[int, ...]:
        deps = self._deps_cache.get(task_id)
        if deps is None:
            deps = tuple(r[0] for r in self._conn.execute(
                "SELECT depends_on FROM task_deps WHERE task_id = ? ORDER BY depends_on",
                (task_id,),
            ))
            self._remember_deps(task_id, deps)
        return deps

    def _remember_deps(self, task_id: int, deps: tuple[int, ...]) -> None:
        if len(self._deps_cache) >= _DEPS_CACHE_SIZE:
            self._deps_cache.clear()
        self._deps_cache[task_id] = deps

    def _forget_inserted(self, mark: int = 0) -> None:
        """Changes since ``mark`` were rolled back: forget the rows cached, and the
        tasks inserted since (their ids may be reused)."""
        self._rows_cache.clear()
        for task_id in self._inserted[mark:]:
            self._deps_cache.pop(task_id, None)
        del self._inserted[mark:]

    def _load(self, task_id: int, fresh: bool = False) -> _Row:
        """The task's current row (from the cache unless ``fresh``)."""
        if not fresh:
            row = self._rows_cache.get(task_id)
            if row is not None:
                return row
        raw = self._conn.execute(_SELECT_ONE, (task_id,)).fetchone()
        if raw is None:
            raise TaskNotFound(task_id)
        return _Row._make(raw)

    def _remember(self, row: _Row) -> None:
        """``row`` is now the task's stored state: cache it if it is leased or in
        review, else drop it from the cache."""
        cache = self._rows_cache
        if row.status == RUNNING or row.status == REVIEW:
            if len(cache) >= _ROW_CACHE_SIZE:
                cache.clear()
            cache[row.id] = row
        else:
            cache.pop(row.id, None)

    def _update(self, row: _Row, now: float, **fields: Any) -> _Row:
        """Set ``fields`` (and ``updated_at``) on the task of ``row``, which must be
        its current state; returns the row as it is now stored."""
        return self._set(row, now, tuple(fields), tuple(fields.values()))

    def _set(
        self, row: _Row, now: float, names: tuple[str, ...], values: tuple[Any, ...]
    ) -> _Row:
        """:meth:`_update` with the column names and their values apart."""
        entry = self._update_sql.get(names)
        if entry is None:
            sets = "".join(f"{name} = ?, " for name in names)
            entry = self._update_sql[names] = (
                f"UPDATE tasks SET {sets}updated_at = ? WHERE id = ?",
                # Where each value goes in the row (pending_deps and cancel_cause,
                # which only the SQL reads, are not in it).
                tuple((_ROW_INDEX[n], i) for i, n in enumerate(names) if n in _ROW_INDEX),
            )
        sql, positions = entry
        self._conn.execute(sql, (*values, now, row.id))
        new = list(row)
        for at, i in positions:
            new[at] = values[i]
        new[_UPDATED_AT] = now
        stored = _make_row(new)
        self._remember(stored)
        return stored

    def _emit(
        self,
        op: Any,
        now: float,
        type_: str,
        row: _Row,
        extra: Mapping[str, Any] | None = None,
        persist: bool = True,
    ) -> None:
        kind, status = row.kind, row.status
        payload = {"kind": kind, "status": status}
        seq = None
        if extra:
            payload.update(extra)
            if persist:
                text = _dump_payload(payload)
        elif persist:
            key = (kind, status)
            text = self._payloads.get(key)  # type: ignore[assignment]
            if text is None:
                if len(self._payloads) > 1000:
                    self._payloads.clear()
                text = self._payloads[key] = _dump_payload(payload)
        if persist:
            seq = self._seq
            if seq is None:
                seq = self._conn.execute(_LAST_SEQ).fetchone()[0]
            seq = self._seq = seq + 1
            self._rows.append((seq, now, type_, row.id, op.actor, op.correlation_id, text))
        self._events.append(Event(seq, now, type_, row.id, op.actor, op.correlation_id, payload))

    def _leased(self, task_id: int, token: int | None, statuses: tuple[str, ...]) -> _Row:
        """The task's row if ``token`` holds its lease in one of ``statuses``. A task
        in review that no reviewer has claimed has no lease: the token it still
        carries is the finished attempt's."""
        row = self._load(task_id)
        if (row.status not in statuses or row.fencing_token != token
                or (row.status == REVIEW and row.lease_owner is None)):
            raise StaleLease(task_id, token, row.fencing_token, row.status)
        return row

    def _close_run(
        self,
        row: _Row,
        now: float,
        result: str,
        exit_code: int | None = None,
        output: str | bytes | None = None,
        pgid: bool = False,
    ) -> int | None:
        """Close the open run (attempt or review) of ``row``'s fencing token, if there
        is one; with ``pgid``, return the process group id it recorded."""
        args = (now, now, exit_code, None if output is None else tail(output), result,
                row.id, row.fencing_token)
        if not pgid:
            self._conn.execute(_CLOSE_RUN, args)
            return None
        found = self._conn.execute(_CLOSE_RUN_PGID, args).fetchone()
        return found[0] if found else None

    def _done(
        self, op: Any, now: float, row: _Row, first: str, extra: Mapping[str, Any],
        names: tuple[str, ...] = (), values: tuple[Any, ...] = (),
    ) -> _Row:
        new = self._set(row, now, _DONE_NAMES + names, _DONE_VALUES + values)
        self._emit(op, now, first, new, extra)
        self._emit(op, now, "task.done", new)
        self._conn.execute(_DEPENDENTS_READY, (row.id,))
        return new

    def _failed_attempt(
        self,
        op: Any,
        now: float,
        row: _Row,
        error: str,
        retry: bool,
        delay: float | None,
        extra: Mapping[str, Any] | None = None,
    ) -> _Row:
        used = row.attempts - row.attempts_base
        info = {"error": error, "attempt": row.attempts, **(extra or {})}
        if retry and used < row.max_attempts:
            if delay is None:
                delay = backoff_delay(row.retry_delay, used, self._rng)
            new = self._update(row, now, status=QUEUED, not_before=now + delay, error=error,
                               **_NO_LEASE)
            self._emit(op, now, "task.retrying", new,
                       {**info, "delay": delay, "not_before": now + delay})
            return new
        new = self._update(row, now, status=FAILED, error=error, **_NO_LEASE)
        self._emit(op, now, "task.failed", new, info)
        self._cascade(row.id, now, op)
        return new

    def _cancel_row(self, op: Any, now: float, row: _Row, reason: str, cause: int | None) -> _Row:
        """Cancel ``row``: by a person (``cause`` None), or by the cascade because
        dependency ``cause`` ended (recorded in ``cancel_cause``, which a retry of a
        dependency looks for)."""
        fields: dict[str, Any] = {"status": CANCELLED, "error": reason,
                                  "cancel_cause": cause, **_NO_LEASE}
        pgid = None
        if row.status in (RUNNING, REVIEW):
            # The running attempt's, or the review's (none when no reviewer holds it).
            pgid = self._close_run(row, now, "cancelled", pgid=True)
            fields["fencing_token"] = row.fencing_token + 1
        new = self._update(row, now, **fields)
        extra: dict[str, Any] = {"reason": reason, "previous": row.status}
        if cause is not None:
            extra["cause"] = cause
        if pgid is not None:
            extra["pgid"] = pgid
        self._emit(op, now, "task.cancelled", new, extra)
        return new

    def _cascade(self, task_id: int, now: float, op: Any) -> None:
        """Cancel, transitively, every unfinished task waiting for ``task_id``."""
        stack = [task_id]
        while stack:
            cause = stack.pop()
            status = self._conn.execute(
                "SELECT status FROM tasks WHERE id = ?", (cause,)
            ).fetchone()[0]
            waiting = self._conn.execute(
                f"SELECT {_COLS} FROM tasks WHERE id IN "
                "(SELECT task_id FROM task_deps WHERE depends_on = ?) "
                "AND status IN ('queued', 'running', 'review', 'escalated') ORDER BY id",
                (cause,),
            ).fetchall()
            for raw in waiting:
                row = _Row._make(raw)
                self._cancel_row(op, now, row, f"dependency {cause} {status}", cause)
                stack.append(row.id)

    def _insert_task(
        self,
        op: Any,
        now: float,
        *,
        kind: str,
        title: str,
        prompt: str,
        priority: int,
        deps: Sequence[int],
        dep_status: Mapping[int, str],
        max_attempts: int,
        retry_delay: float,
        metadata: Any,
        parent_id: int | None,
        not_before: float,
        extra: Mapping[str, Any] | None = None,
    ) -> _Row:
        broken = [d for d in deps if dep_status[d] in (FAILED, CANCELLED)]
        pending = sum(1 for d in deps if dep_status[d] != DONE)
        status, error, cause = QUEUED, None, None
        if broken:
            cause = broken[0]
            status, error = CANCELLED, f"dependency {cause} {dep_status[cause]}"
        meta = _json(metadata)
        retry_delay, not_before = float(retry_delay), float(not_before)
        task_id = self._conn.execute(_INSERT_TASK, (
            kind, title, prompt, status, priority, max_attempts, retry_delay, not_before,
            pending, error, cause, parent_id, meta, now, now,
        )).lastrowid
        row = _Row(task_id, kind, title, prompt, status, priority, 0, None, None, error,
                   parent_id, now, now, max_attempts, retry_delay, 0, None, None, not_before,
                   meta, 0, None, None)
        if deps:
            self._conn.executemany(
                "INSERT INTO task_deps (task_id, depends_on) VALUES (?, ?)",
                [(row.id, d) for d in deps],
            )
        self._inserted.append(row.id)
        self._remember_deps(row.id, tuple(deps))
        if broken:
            self._emit(op, now, "task.cancelled", row,
                       {"reason": error, "previous": None, "cause": cause, **(extra or {})})
        else:
            self._emit(op, now, "task.queued", row, extra)
        return row

    def _statuses(self, ids: Iterable[int]) -> dict[int, str]:
        ids = list(ids)
        found: dict[int, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(self._conn.execute(
                f"SELECT id, status FROM tasks WHERE id IN ({marks})", chunk
            ).fetchall())
        return found

    # ------------------------------------------------------------- operations

    def _submit(self, op: m.Submit, now: float) -> Task:
        deps = sorted(set(op.depends_on))
        found = self._statuses(deps) if deps else {}
        missing = tuple(d for d in deps if d not in found)
        if missing:
            raise DependencyError(
                f"unknown dependencies: {', '.join(map(str, missing))}", missing
            )
        if op.parent_id is not None and not self._statuses([op.parent_id]):
            raise DependencyError(f"unknown parent task {op.parent_id}", (op.parent_id,))
        row = self._insert_task(
            op, now, kind=op.kind, title=op.title, prompt=op.prompt, priority=op.priority,
            deps=deps, dep_status=found, max_attempts=op.max_attempts,
            retry_delay=op.retry_delay, metadata=op.metadata, parent_id=op.parent_id,
            not_before=now + op.delay,
        )
        return self._task(row)

    def _claim(self, op: m.Claim, now: float) -> list[Task]:
        return self._claim_group([op], now)[0]

    def _claim_group(self, ops: list[m.Claim], now: float) -> list[list[Task]]:
        """Claims of one kind that follow each other in a batch, with one read and
        one write of each table: the first gets the best ``n`` ready tasks, the next
        the best ``n`` of the rest... exactly what running them one after the other
        in the transaction gives (nothing else happens in between)."""
        conn = self._conn
        found = conn.execute(_CLAIM, (ops[0].kind, now, sum(op.n for op in ops))).fetchall()
        if not found:
            return [[] for _ in ops]
        hive = self.hive_id
        # The rows as the UPDATE below leaves them (see _COLS for the positions), with
        # the claim each one goes to.
        rows: list[tuple[m.Claim, float, _Row]] = []
        start = 0
        for op in ops:
            expires = now + op.lease_seconds
            workers = op.workers or itertools.repeat(op.worker)
            for raw, worker in zip(found[start : start + op.n], workers, strict=False):  # fewer found
                rows.append((op, expires, _make_row(
                    raw[:4] + (RUNNING, raw[5], raw[6] + 1) + raw[7:12]
                    + (now, raw[13], raw[14], raw[15] + 1, worker, expires) + raw[18:21]
                    + (hive, None)
                )))
            start += op.n
        if len(rows) == 1:
            _, expires, row = rows[0]
            conn.execute(_CLAIM_UPDATE, (row.attempts, row.fencing_token, row.lease_owner,
                                         hive, expires, now, row.id))
            conn.execute(_INSERT_RUN, (row.id, row.attempts, row.fencing_token,
                                       row.lease_owner, hive, now))
        else:
            conn.executemany(_CLAIM_UPDATE, [
                (r.attempts, r.fencing_token, r.lease_owner, hive, expires, now, r.id)
                for _, expires, r in rows
            ])
            conn.executemany(_INSERT_RUN, [
                (r.id, r.attempts, r.fencing_token, r.lease_owner, hive, now)
                for _, _, r in rows
            ])
        claimed: dict[int, list[Task]] = {id(op): [] for op in ops}
        cache = self._rows_cache
        if len(cache) + len(rows) > _ROW_CACHE_SIZE:
            cache.clear()
        for op, expires, row in rows:
            cache[row.id] = row
            self._emit(op, now, "task.started", row, {
                "attempt": row.attempts, "token": row.fencing_token, "worker": row.lease_owner,
                "lease_expires_at": expires,
            })
            claimed[id(op)].append(self._task(row))
        return [claimed[id(op)] for op in ops]

    def _claim_review(self, op: m.ClaimReview, now: float) -> list[Task]:
        sql = (
            f"SELECT {_COLS} FROM tasks WHERE status = 'review' "
            "AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
        )
        args: list[Any] = [now]
        if op.kinds is not None:
            sql += f" AND kind IN ({','.join('?' * len(op.kinds))})"
            args.extend(op.kinds)
        sql += " ORDER BY priority DESC, id LIMIT ?"
        args.append(op.n)
        claimed = []
        workers = op.workers or itertools.repeat(op.worker)
        found = self._conn.execute(sql, args).fetchall()
        for raw, worker in zip(found, workers, strict=False):  # fewer found
            row = _Row._make(raw)
            if row.lease_expires_at is not None:
                # A review lease that ran out and was not swept yet: its run ends here.
                self._close_run(row, now, "expired")
            new = self._update(row, now, fencing_token=row.fencing_token + 1,
                               lease_owner=worker, lease_hive=self.hive_id,
                               lease_expires_at=now + op.lease_seconds)
            self._conn.execute(_INSERT_REVIEW_RUN, (new.id, new.attempts, new.fencing_token,
                                                    worker, self.hive_id, now))
            claimed.append(self._task(new))
        return claimed

    def _heartbeat(self, op: m.Heartbeat, now: float) -> float:
        row = self._leased(op.task_id, op.token, (RUNNING, REVIEW))
        expires = now + op.lease_seconds
        self._conn.execute(
            "UPDATE tasks SET lease_expires_at = ? WHERE id = ?", (expires, op.task_id)
        )
        self._remember(row._replace(lease_expires_at=expires))
        self._emit(op, now, "task.heartbeat", row,
                   {"token": op.token, "lease_expires_at": expires}, persist=False)
        return expires

    def _record_run(self, op: m.RecordRun, now: float) -> None:
        row = self._leased(op.task_id, op.token, (RUNNING, REVIEW))
        self._conn.execute(
            "UPDATE runs SET pgid = coalesce(?, pgid), exit_code = coalesce(?, exit_code), "
            "output_tail = coalesce(?, output_tail) WHERE task_id = ? AND fencing_token = ?",
            (op.pgid, op.exit_code, tail(op.output_tail), row.id, row.fencing_token),
        )

    def _succeed(self, op: m.Succeed, now: float) -> Task:
        row = self._leased(op.task_id, op.token, (RUNNING,))
        self._close_run(row, now, "succeeded", op.exit_code, op.output_tail)
        result = _json(op.result)
        info = {"attempt": row.attempts}
        if op.review:
            new = self._update(row, now, status=REVIEW, result=result, error=None,
                               **_NO_LEASE)
            self._emit(op, now, "task.succeeded", new, info)
            self._emit(op, now, "task.review", new)
        else:
            new = self._done(op, now, row, "task.succeeded", info,
                             ("result", "error"), (result, None))
        return self._task(new, _decoded(op.result, result))

    def _fail(self, op: m.Fail, now: float) -> Task:
        row = self._leased(op.task_id, op.token, (RUNNING,))
        self._close_run(row, now, "failed", op.exit_code, op.output_tail)
        return self._task(self._failed_attempt(op, now, row, op.error, op.retry, op.delay))

    def _release(self, op: m.Release, now: float) -> Task:
        row = self._leased(op.task_id, op.token, (RUNNING, REVIEW))
        self._close_run(row, now, "released")
        if row.status == REVIEW:  # a review given back: the task waits for a reviewer
            return self._task(self._update(row, now, fencing_token=row.fencing_token + 1,
                                           **_NO_LEASE))
        new = self._update(row, now, status=QUEUED, not_before=now,
                           attempts_base=row.attempts_base + 1, **_NO_LEASE)
        self._emit(op, now, "task.retrying", new,
                   {"reason": op.reason, "attempt": row.attempts, "delay": 0.0,
                    "not_before": now})
        return self._task(new)

    def _review_row(self, task_id: int, token: int | None, operation: str,
                    statuses: tuple[str, ...] = (REVIEW,)) -> _Row:
        if token is not None:
            return self._leased(task_id, token, statuses)
        row = self._load(task_id)
        if row.status not in statuses:
            raise IllegalTransition(task_id, row.status, operation)
        return row

    def _approve(self, op: m.Approve, now: float) -> Task:
        row = self._review_row(op.task_id, op.token, "approve")
        self._close_run(row, now, _verdict("approved", op.token))
        return self._task(self._done(op, now, row, "task.approved", {}))

    def _rework(self, op: Any, now: float, row: _Row, feedback: str, bounded: bool) -> _Row:
        used = row.attempts - row.attempts_base
        if bounded and used >= row.max_attempts:
            error = f"rejected after {used} attempts: {feedback}"
            new = self._update(row, now, status=FAILED, feedback=feedback, error=error,
                               **_NO_LEASE)
            self._emit(op, now, "task.rejected", new, {"feedback": feedback})
            self._emit(op, now, "task.failed", new, {"error": error, "attempt": row.attempts})
            self._cascade(row.id, now, op)
            return new
        new = self._update(row, now, status=QUEUED, feedback=feedback, not_before=now,
                           **_NO_LEASE)
        self._emit(op, now, "task.rejected", new, {"feedback": feedback})
        self._emit(op, now, "task.queued", new, {"rework": True})
        return new

    def _reject(self, op: m.Reject, now: float) -> Task:
        row = self._review_row(op.task_id, op.token, "reject")
        self._close_run(row, now, _verdict("rejected", op.token))
        return self._task(self._rework(op, now, row, op.feedback, bounded=True))

    def _escalate(self, op: m.Escalate, now: float) -> Task:
        row = self._review_row(op.task_id, op.token, "escalate")
        self._close_run(row, now, _verdict("escalated", op.token))
        new = self._update(row, now, status=ESCALATED, **_NO_LEASE)
        self._emit(op, now, "task.escalated", new, {"reason": op.reason})
        return self._task(new)

    def _decide(self, op: m.Decide, now: float) -> Task:
        row = self._review_row(op.task_id, None, "decide", (ESCALATED, REVIEW))
        self._close_run(row, now, "decided")  # a review under way, cut short
        if op.approve:
            return self._task(self._done(op, now, row, "task.approved", {"decided": True}))
        return self._task(self._rework(op, now, row, op.feedback or "", bounded=False))

    def _cancel(self, op: m.Cancel, now: float) -> Task:
        row = self._load(op.task_id)
        if row.status in TERMINAL:
            raise IllegalTransition(row.id, row.status, "cancel")
        new = self._cancel_row(op, now, row, op.reason, None)
        self._cascade(row.id, now, op)
        return self._task(new)

    def _retry(self, op: m.Retry, now: float) -> Task:
        row = self._load(op.task_id)
        if row.status not in (FAILED, CANCELLED):
            raise IllegalTransition(row.id, row.status, "retry", "only failed or cancelled")
        deps = list(self._deps(row.id))
        found = self._statuses(deps)
        broken = tuple(sorted(d for d, s in found.items() if s in (FAILED, CANCELLED)))
        if broken:
            raise DependencyError(
                f"cannot retry task {row.id}: its dependencies "
                f"{', '.join(map(str, broken))} failed or were cancelled; retry them first",
                broken,
            )
        new = self._requeue(op, now, row, found, {"retry": True})
        self._revive_dependents(op, now, row.id)
        return self._task(new)

    def _requeue(self, op: Any, now: float, row: _Row, dep_status: Mapping[int, str],
                 extra: Mapping[str, Any]) -> _Row:
        """Queue a failed or cancelled task again, with a fresh attempt budget (and
        no ``cancel_cause``: it is no longer cancelled)."""
        pending = sum(1 for s in dep_status.values() if s != DONE)
        new = self._update(row, now, status=QUEUED, attempts_base=row.attempts,
                           not_before=now, error=None, pending_deps=pending,
                           cancel_cause=None, **_NO_LEASE)
        self._emit(op, now, "task.queued", new, extra)
        return new

    def _revive_dependents(self, op: Any, now: float, task_id: int) -> None:
        """After a retry of ``task_id``: queue again, transitively, the dependents that
        a cascade cancelled (their ``cancel_cause`` is set; a person's cancellation,
        whatever its reason, stays), once none of their dependencies is failed or
        cancelled any more. Every task that comes back has its cascade-cancelled
        dependents looked at, whichever dependency's end cancelled them, so the result
        does not depend on the order of retries."""
        stack = [task_id]
        while stack:
            back = stack.pop()
            cancelled = self._conn.execute(
                f"SELECT {_COLS} FROM tasks WHERE id IN "
                "(SELECT task_id FROM task_deps WHERE depends_on = ?) "
                "AND status = 'cancelled' AND cancel_cause IS NOT NULL ORDER BY id",
                (back,),
            ).fetchall()
            for raw in cancelled:
                row = _Row._make(raw)
                found = self._statuses(self._deps(row.id))
                if any(s in (FAILED, CANCELLED) for s in found.values()):
                    continue
                self._requeue(op, now, row, found, {"retry": True, "cause": back})
                stack.append(row.id)

    def _sweep(self, op: m.SweepLeases, now: float) -> list[Task]:
        rows = self._conn.execute(
            f"SELECT {_COLS} FROM tasks WHERE lease_expires_at IS NOT NULL "
            "AND lease_expires_at < ? ORDER BY id",
            (now,),
        ).fetchall()
        changed = []
        for raw in rows:
            row = _Row._make(raw)
            if row.status == RUNNING:
                self._close_run(row, now, "expired")
                error = f"lease of {row.lease_owner} expired"
                changed.append(self._task(self._failed_attempt(
                    op, now, row, error, True, None, {"expired": True}
                )))
            else:
                self._close_run(row, now, "expired")
                new = self._update(row, now, fencing_token=row.fencing_token + 1,
                                   **_NO_LEASE)
                changed.append(self._task(new))
        return changed

    def _store_plan(self, op: m.StorePlan, now: float) -> StoredPlan:
        plan = self._leased(op.task_id, op.token, (RUNNING,))
        entries = [_planned(i, entry) for i, entry in enumerate(op.subtasks)]
        by_key: dict[str, PlannedTask] = {}
        for entry in entries:
            if entry.key in by_key:
                raise InvalidPlan(f"duplicate key {entry.key!r} in the plan")
            by_key[entry.key] = entry
        existing = sorted({d for e in entries for d in e.depends_on if isinstance(d, int)})
        found = self._statuses(existing)
        for entry in entries:
            for dep in entry.depends_on:
                if isinstance(dep, str) and dep not in by_key:
                    raise InvalidPlan(f"entry {entry.key!r} depends on unknown key {dep!r}")
                if isinstance(dep, int) and dep not in found:
                    raise InvalidPlan(f"entry {entry.key!r} depends on unknown task {dep}")
                if dep == entry.key:
                    raise InvalidPlan(f"entry {entry.key!r} depends on itself")
        order = _topological(entries)
        ids: dict[str, int] = {}
        rows: dict[str, _Row] = {}
        statuses = dict(found)  # task id -> status, for every possible dependency so far
        for entry in order:
            deps = sorted({ids[d] if isinstance(d, str) else d for d in entry.depends_on})
            row = self._insert_task(
                op, now, kind=entry.kind, title=entry.title, prompt=entry.prompt,
                priority=entry.priority, deps=deps, dep_status=statuses,
                max_attempts=entry.max_attempts, retry_delay=entry.retry_delay,
                metadata=entry.metadata, parent_id=plan.id, not_before=now,
                extra={"plan": plan.id, "key": entry.key},
            )
            ids[entry.key] = row.id
            rows[entry.key] = row
            statuses[row.id] = row.status
        keyed = {e.key: ids[e.key] for e in entries}
        self._close_run(plan, now, "succeeded")
        result = op.result if op.result is not None else {"tasks": keyed}
        plan = self._update(plan, now, result=_json(result), error=None)
        self._emit(op, now, "plan.stored", plan, {"tasks": keyed})
        if op.review:
            new = self._update(plan, now, status=REVIEW, **_NO_LEASE)
            self._emit(op, now, "task.succeeded", new, {"attempt": plan.attempts})
            self._emit(op, now, "task.review", new)
        else:
            new = self._done(op, now, plan, "task.succeeded", {"attempt": plan.attempts})
        tasks = {e.key: self._task(rows[e.key]) for e in entries}
        return StoredPlan(plan=self._task(new), tasks=tasks)

    # ------------------------------------------------------------------- reads

    def _get(self, op: m.Get, now: float) -> Task:
        return self._task(self._load(op.task_id, fresh=True))

    def _list(self, op: m.ListTasks, now: float) -> list[Task]:
        sql = f"SELECT {_COLS_DEPS} FROM tasks WHERE id > ?"
        args: list[Any] = [op.after_id]
        if op.status is not None:
            wanted = (op.status,) if isinstance(op.status, str) else tuple(op.status)
            unknown = [s for s in wanted if s not in STATUSES]
            if unknown:
                raise ValueError(f"unknown status {unknown[0]!r}; expected one of {STATUSES}")
            sql += f" AND status IN ({','.join('?' * len(wanted))})"
            args.extend(wanted)
        if op.kind is not None:
            sql += " AND kind = ?"
            args.append(op.kind)
        if op.parent_id is not None:
            sql += " AND parent_id = ?"
            args.append(op.parent_id)
        sql += " ORDER BY id"
        if op.limit is not None:
            sql += " LIMIT ?"
            args.append(op.limit)
        return [self._task(_Row._make(r)) for r in self._conn.execute(sql, args)]

    def _counts(self, op: m.Counts, now: float) -> dict[str, Any]:
        statuses = STATUSES if op.statuses is None else op.statuses
        sql, args = "SELECT kind, status, count(*) FROM tasks ", ()
        if op.statuses is not None:  # a range read of the (status, kind) index
            sql += f"WHERE status IN ({','.join('?' * len(statuses))}) "
            args = statuses
        counts = dict.fromkeys(statuses, 0)
        kinds: dict[str, dict[str, int]] = {}
        for kind, status, n in self._conn.execute(sql + "GROUP BY kind, status", args):
            counts[status] += n
            kinds.setdefault(kind, dict.fromkeys(statuses, 0))[status] = n
        return {"counts": counts, "kinds": kinds}

    def _events_since(self, op: m.EventsSince, now: float) -> list[Event]:
        sql = "SELECT seq, ts, type, task_id, actor, correlation_id, payload FROM events "
        if op.task_id is None:
            rows = self._conn.execute(sql + "WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (op.since, op.limit))
        else:
            rows = self._conn.execute(
                sql + "WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (op.task_id, op.since, op.limit),
            )
        return [Event(s, ts, t, tid, a, c, json.loads(p)) for s, ts, t, tid, a, c, p in rows]

    def _get_runs(self, op: m.GetRuns, now: float) -> list[Run]:
        self._load(op.task_id)
        rows = self._conn.execute(
            "SELECT id, task_id, attempt, fencing_token, worker, hive_id, started_at, "
            "ended_at, exit_code, duration, output_tail, pgid, outcome, review FROM runs "
            "WHERE task_id = ? ORDER BY id",
            (op.task_id,),
        )
        return [Run(*r) for r in rows]

    def _touch_hive(self, op: m.TouchHive, now: float) -> None:
        self._conn.execute(
            "UPDATE hives SET heartbeat_at = ? WHERE id = ?", (now, self.hive_id)
        )


_NO_LEASE: dict[str, Any] = {"lease_owner": None, "lease_hive": None, "lease_expires_at": None}
_DONE_NAMES = ("status", *_NO_LEASE)
_DONE_VALUES = (DONE, *_NO_LEASE.values())


def _verdict(outcome: str, token: int | None) -> str:
    """How a verdict closes the review's run: by the reviewer holding the lease
    (``token``), or ``"decided"`` when a person gave it (no token)."""
    return outcome if token is not None else "decided"


def _planned(index: int, entry: Any) -> PlannedTask:
    if isinstance(entry, PlannedTask):
        item = entry
    elif isinstance(entry, Mapping):
        unknown = sorted(set(entry) - _PLAN_FIELDS)
        if unknown:
            raise InvalidPlan(f"entry {index} has unknown fields: {', '.join(unknown)}")
        for field in ("key", "title", "kind"):
            if field not in entry:
                raise InvalidPlan(f"entry {index} has no {field!r}")
        try:
            item = PlannedTask(**{k: v for k, v in entry.items() if v is not None})
        except (TypeError, ValueError) as exc:
            raise InvalidPlan(f"entry {index} is malformed: {exc}") from exc
    else:
        raise InvalidPlan(f"entry {index} is not an object: {entry!r}")
    where = f"entry {index} ({item.key!r})" if isinstance(item.key, str) else f"entry {index}"
    for field in ("key", "title", "kind"):
        value = getattr(item, field)
        if not isinstance(value, str) or not value:
            raise InvalidPlan(f"{where}: {field} must be a non-empty string, got {value!r}")
    if not isinstance(item.prompt, str):
        raise InvalidPlan(f"{where}: prompt must be a string")
    if not isinstance(item.priority, int) or isinstance(item.priority, bool):
        raise InvalidPlan(f"{where}: priority must be an integer")
    if not isinstance(item.max_attempts, int) or item.max_attempts < 1:
        raise InvalidPlan(f"{where}: max_attempts must be an integer >= 1")
    if not isinstance(item.retry_delay, int | float) or item.retry_delay < 0:
        raise InvalidPlan(f"{where}: retry_delay must be a number >= 0")
    for dep in item.depends_on:
        if isinstance(dep, bool) or not isinstance(dep, str | int):
            raise InvalidPlan(f"{where}: depends_on must hold keys or task ids, got {dep!r}")
    return item


def _topological(entries: list[PlannedTask]) -> list[PlannedTask]:
    """Entries in an order where every key comes after its dependencies, or
    ``InvalidPlan`` naming a cycle."""
    by_key = {e.key: e for e in entries}
    state: dict[str, int] = {}  # 1 = in progress, 2 = done
    order: list[PlannedTask] = []
    for root in entries:
        if root.key in state:
            continue
        stack: list[tuple[str, int]] = [(root.key, 0)]
        path: list[str] = []
        while stack:
            key, i = stack.pop()
            if i == 0:
                state[key] = 1
                path.append(key)
            deps = [d for d in by_key[key].depends_on if isinstance(d, str)]
            if i < len(deps):
                stack.append((key, i + 1))
                dep = deps[i]
                if state.get(dep) == 1:
                    cycle = path[path.index(dep):] + [dep]
                    raise InvalidPlan(f"the plan has a cycle: {' -> '.join(cycle)}")
                if dep not in state:
                    stack.append((dep, 0))
            else:
                state[key] = 2
                path.pop()
                order.append(by_key[key])
    return order


__all__ = ["Engine", "backoff_delay", "tail", "MAX_BACKOFF", "OUTPUT_TAIL_BYTES", "StoreError"]
