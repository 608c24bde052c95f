"""The public test kit's fixtures (``hive_factory``, ``autojump_hive``) for these tests."""

from hive_actors.testing import autojump_hive, hive_factory  # noqa: F401
