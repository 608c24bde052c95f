"""Schema, migrations and the checks made before a database file is touched."""

from __future__ import annotations

import os
import sqlite3

from ._errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseReadOnly,
    ForeignDatabase,
    NotADatabase,
    SchemaTooNew,
)

#: ``PRAGMA application_id`` of a hive database: "HIVE" in ASCII.
APPLICATION_ID = 0x48495645

_SQLITE_MAGIC = b"SQLite format 3\x00"

# Each entry moves the schema from version i to i + 1 (``PRAGMA user_version``).
# Never edit a released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE hives (
        id            TEXT PRIMARY KEY,
        pid           INTEGER NOT NULL,
        hostname      TEXT NOT NULL,
        proc_start    TEXT,
        started_at    REAL NOT NULL,
        heartbeat_at  REAL NOT NULL,
        stopped_at    REAL
    );
    CREATE TABLE tasks (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,
        kind              TEXT NOT NULL,
        title             TEXT NOT NULL,
        prompt            TEXT NOT NULL,
        status            TEXT NOT NULL CHECK (status IN
                            ('queued','running','review','escalated','done','failed','cancelled')),
        priority          INTEGER NOT NULL DEFAULT 0,
        attempts          INTEGER NOT NULL DEFAULT 0,
        attempts_base     INTEGER NOT NULL DEFAULT 0,
        max_attempts      INTEGER NOT NULL,
        retry_delay       REAL NOT NULL,
        not_before        REAL NOT NULL DEFAULT 0,
        pending_deps      INTEGER NOT NULL DEFAULT 0,
        lease_owner       TEXT,
        lease_hive        TEXT,
        lease_expires_at  REAL,
        fencing_token     INTEGER NOT NULL DEFAULT 0,
        result            TEXT,
        feedback          TEXT,
        error             TEXT,
        parent_id         INTEGER REFERENCES tasks(id),
        metadata          TEXT,
        created_at        REAL NOT NULL,
        updated_at        REAL NOT NULL
    );
    -- The claim is one search of this index: ready rows of a kind, priority then age.
    CREATE INDEX tasks_ready ON tasks (kind, priority DESC, id)
        WHERE status = 'queued' AND pending_deps = 0;
    CREATE INDEX tasks_review ON tasks (priority DESC, id) WHERE status = 'review';
    CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX tasks_status_kind ON tasks (status, kind);
    CREATE INDEX tasks_parent ON tasks (parent_id) WHERE parent_id IS NOT NULL;
    -- The one canonical place of dependencies: task_id waits for depends_on.
    CREATE TABLE task_deps (
        task_id     INTEGER NOT NULL REFERENCES tasks(id),
        depends_on  INTEGER NOT NULL REFERENCES tasks(id),
        PRIMARY KEY (task_id, depends_on)
    ) WITHOUT ROWID;
    CREATE INDEX task_deps_reverse ON task_deps (depends_on, task_id);
    CREATE TABLE runs (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id        INTEGER NOT NULL REFERENCES tasks(id),
        attempt        INTEGER NOT NULL,
        fencing_token  INTEGER NOT NULL,
        worker         TEXT NOT NULL,
        hive_id        TEXT,
        started_at     REAL NOT NULL,
        ended_at       REAL,
        exit_code      INTEGER,
        duration       REAL,
        output_tail    TEXT,
        pgid           INTEGER,
        outcome        TEXT
    );
    CREATE INDEX runs_task ON runs (task_id, fencing_token);
    CREATE TABLE events (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        ts              REAL NOT NULL,
        type            TEXT NOT NULL,
        task_id         INTEGER,
        actor           TEXT,
        correlation_id  TEXT,
        payload         TEXT NOT NULL
    );
    CREATE INDEX events_task ON events (task_id, seq);
    """,
    # 2: why the cascade cancelled a task is a fact of the row, not its error text.
    """
    -- The id of the dependency whose end (failed or cancelled) cancelled this task;
    -- NULL for a task a person cancelled, and for every task not cancelled.
    ALTER TABLE tasks ADD COLUMN cancel_cause INTEGER;
    -- Version 1 told a cascade cancellation by its error alone, exactly
    -- 'dependency N failed' or 'dependency N cancelled' (a person could not give such
    -- a reason): those rows get their N.
    UPDATE tasks
        SET cancel_cause = CAST(substr(error, 12, instr(substr(error, 12), ' ') - 1) AS INTEGER)
        WHERE status = 'cancelled'
        AND error GLOB 'dependency [0-9]* *'
        AND substr(error, 12, instr(substr(error, 12), ' ') - 1) NOT GLOB '*[^0-9]*'
        AND substr(error, 12 + instr(substr(error, 12), ' ')) IN ('failed', 'cancelled');
    """,
    # 3: a review claim has a run row too (who reviewed, how long, the reviewer
    # command's process group, the verdict): runs.review tells it from the attempt's
    # own run. Every earlier row is an attempt's (reviews had none).
    """
    ALTER TABLE runs ADD COLUMN review INTEGER NOT NULL DEFAULT 0;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

_HINT_MOVE = "Check the path, or move the file away to start a new hive database there"


def classify(path: str, exc: sqlite3.Error) -> DatabaseError:
    """Turn a sqlite3 error met on ``path`` into the matching :class:`DatabaseError`."""
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return DatabaseLocked(
            path,
            f"the database is locked by another process ({text})",
            "Stop the other program using it, or raise busy_timeout",
        )
    if "readonly" in low or "read-only" in low or "attempt to write" in low:
        return DatabaseReadOnly(
            path,
            f"the database cannot be written ({text})",
            "Make the file and its directory writable by this user",
        )
    if "not a database" in low:
        return NotADatabase(path, f"the file is not a SQLite database ({text})", _HINT_MOVE)
    if "malformed" in low or "corrupt" in low:
        return DatabaseCorrupt(
            path,
            f"the database is damaged ({text})",
            "Restore it from a backup, or move it away to start a new hive database",
        )
    if "unable to open" in low:
        return DatabaseError(
            path,
            f"the database cannot be opened ({text})",
            "Check that the directory exists and is writable",
        )
    return DatabaseError(path, f"SQLite error: {text}")


def precheck(path: str) -> bool:
    """Check ``path`` before SQLite opens it, without writing anything.

    Returns True if the file exists (and looks like SQLite), False if it does not
    exist yet. Raises a :class:`DatabaseError` for a directory that is missing or not
    writable, a file that is not SQLite, or a file that cannot be written.
    """
    if path == ":memory:":
        return False
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DatabaseError(
            path, f"the directory {directory} does not exist", "Create it first"
        )
    if not os.path.exists(path):
        if not os.access(directory, os.W_OK):
            raise DatabaseReadOnly(
                path,
                f"the directory {directory} is not writable",
                "Choose another path or make the directory writable",
            )
        return False
    if os.path.isdir(path):
        raise NotADatabase(path, "the path is a directory, not a database file", _HINT_MOVE)
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise DatabaseError(path, f"the file cannot be read ({exc})") from exc
    if header and not header.startswith(_SQLITE_MAGIC):
        raise NotADatabase(
            path, f"the file is not a SQLite database (it starts with {header[:16]!r})",
            _HINT_MOVE,
        )
    if header and len(header) < 100:
        raise DatabaseCorrupt(
            path, "the SQLite header is truncated",
            "Restore it from a backup, or move it away to start a new hive database",
        )
    if not os.access(path, os.W_OK) or not os.access(directory, os.W_OK):
        raise DatabaseReadOnly(
            path,
            "the database file or its directory is not writable",
            "Make both writable by this user (SQLite writes -wal and -shm files beside it)",
        )
    return bool(header)


def inspect(conn: sqlite3.Connection, path: str) -> int:
    """Read the file's identity without writing; return its schema version.

    0 means an empty database, ready to be initialised. Raises ``ForeignDatabase``
    for another application's database and ``SchemaTooNew`` for a newer schema.
    """
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        )]
        if names or version:
            shown = ", ".join(sorted(names)[:5]) or f"user_version {version}"
            raise ForeignDatabase(
                path,
                f"the file is a SQLite database of another application (it has {shown})",
                "Point the hive at its own database file",
            )
        return 0
    if app_id != APPLICATION_ID:
        raise ForeignDatabase(
            path,
            f"the file is a SQLite database of another application "
            f"(application_id {app_id:#x})",
            "Point the hive at its own database file",
        )
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            path,
            f"the database has schema version {version}, newer than the {SCHEMA_VERSION} "
            "this hive_actors understands",
            "Upgrade hive_actors to open it; nothing was changed",
        )
    return version


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Apply every migration after ``version``, inside the caller's transaction."""
    for number in range(version, SCHEMA_VERSION):
        for statement in _split(MIGRATIONS[number]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {number + 1}")
    if version == 0:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _split(script: str) -> list[str]:
    lines = [ln for ln in script.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
