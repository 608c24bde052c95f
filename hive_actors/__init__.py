"""hive_actors: a durable trio actor runtime that runs many AI coding agents at once.

The generic actor runtime is re-exported here; the durable store lives in
``hive_actors.store`` and the Hive (Queen, Workers, Planner, Reviewer) in
``hive_actors.hive``.
"""

from . import actors
from .actors import *  # noqa: F403 - the runtime's public names, listed in actors.__all__

__version__ = "0.1.0"

__all__ = list(actors.__all__)
