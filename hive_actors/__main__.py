"""``python -m hive_actors``: the ``hive`` admin command (see :mod:`hive_actors.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
