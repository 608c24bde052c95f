"""The durable store: the DB actor that owns the SQLite file.

Open it with :func:`open_store` inside an actor system; use the :class:`Store` facade
it yields. Every change is one transition of the task state machine, written with
its event row in one transaction (grouped with whatever else waits in the DB
actor's mailbox), answered and published only after COMMIT.
"""

from . import messages
from ._engine import MAX_BACKOFF, OUTPUT_TAIL_BYTES, backoff_delay
from ._errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseReadOnly,
    DependencyError,
    ForeignDatabase,
    IllegalTransition,
    InvalidPlan,
    NotADatabase,
    SchemaTooNew,
    StaleLease,
    StoreError,
    TaskNotFound,
)
from ._model import (
    CANCELLED,
    DONE,
    ESCALATED,
    EVENT_TYPES,
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
from ._schema import SCHEMA_VERSION
from ._store import Store, open_store

__all__ = [
    "CANCELLED",
    "DONE",
    "ESCALATED",
    "EVENT_TYPES",
    "FAILED",
    "MAX_BACKOFF",
    "OUTPUT_TAIL_BYTES",
    "QUEUED",
    "REVIEW",
    "RUNNING",
    "SCHEMA_VERSION",
    "STATUSES",
    "TERMINAL",
    "DatabaseCorrupt",
    "DatabaseError",
    "DatabaseLocked",
    "DatabaseReadOnly",
    "DependencyError",
    "Event",
    "ForeignDatabase",
    "IllegalTransition",
    "InvalidPlan",
    "NotADatabase",
    "PlannedTask",
    "RecoveryReport",
    "Run",
    "SchemaTooNew",
    "StaleLease",
    "Store",
    "StoreError",
    "StoredPlan",
    "Task",
    "TaskNotFound",
    "backoff_delay",
    "messages",
    "open_store",
]
