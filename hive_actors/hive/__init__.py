"""The Hive: Queen, Workers, Planner and Reviewer actors on the store; open_hive()."""

from ..store import Event, Task
from ._config import ConfigError, HiveConfig, KindConfig, Phase, RoleConfig
from ._hive import Hive, open_hive
from ._model import Verdict

__all__ = [
    "ConfigError",
    "Event",
    "Hive",
    "HiveConfig",
    "KindConfig",
    "Phase",
    "RoleConfig",
    "Task",
    "Verdict",
    "open_hive",
]
