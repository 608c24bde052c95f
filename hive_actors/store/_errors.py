"""The store's errors: one named hierarchy under :class:`StoreError`."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the durable store raises on purpose.

    An operation that raises a ``StoreError`` changed nothing: its savepoint was rolled
    back and no event was written or published.
    """


class TaskNotFound(StoreError, LookupError):
    """No task has this id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} does not exist")
        self.task_id = task_id


class IllegalTransition(StoreError):
    """The operation is not allowed from the task's current status."""

    def __init__(self, task_id: int, status: str, operation: str, detail: str = "") -> None:
        message = f"cannot {operation} task {task_id}: it is {status}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)
        self.task_id = task_id
        self.status = status
        self.operation = operation


class StaleLease(StoreError):
    """The caller's lease is no longer valid: its fencing token is not the current one.

    The task was re-claimed after the lease expired, cancelled, or finished. The
    caller's result must be discarded; nothing was changed.
    """

    def __init__(self, task_id: int, token: int | None, current_token: int, status: str) -> None:
        super().__init__(
            f"stale lease on task {task_id}: token {token} is not the current token "
            f"{current_token} (task is {status}); the result is discarded"
        )
        self.task_id = task_id
        self.token = token
        self.current_token = current_token
        self.status = status


class DependencyError(StoreError, ValueError):
    """A submitted task names dependencies (or a parent) that do not exist, or a retry
    is blocked by a dependency that failed or was cancelled."""

    def __init__(self, message: str, task_ids: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.task_ids = task_ids


class InvalidPlan(StoreError, ValueError):
    """A plan has a cycle, an unknown dependency or a malformed entry; nothing was stored."""


class DatabaseError(StoreError):
    """The database file cannot be used. The message names the file and what to do.

    Raised when opening (nothing has been written to the file then) or when SQLite
    itself fails during a transaction (which is rolled back). Subclasses say why.
    """

    def __init__(self, path: str, problem: str, hint: str = "") -> None:
        message = f"{path}: {problem}"
        if hint:
            message += f". {hint}"
        super().__init__(message)
        self.path = path
        self.problem = problem
        self.hint = hint


class NotADatabase(DatabaseError):
    """The file is not a SQLite database (or its header is damaged)."""


class DatabaseCorrupt(DatabaseError):
    """The file is a SQLite database but its contents are damaged."""


class ForeignDatabase(DatabaseError):
    """The file is a SQLite database of another application."""


class SchemaTooNew(DatabaseError):
    """The database was written by a newer version of hive_actors."""


class DatabaseReadOnly(DatabaseError):
    """The database (or its directory) cannot be written."""


class DatabaseLocked(DatabaseError):
    """Another process holds a lock on the database longer than the busy timeout."""
