"""Shared test configuration: hypothesis profiles.

HYPOTHESIS_PROFILE selects one: ``ci`` (default; a fixed, modest example budget so the
suite stays within minutes on 2 cores), ``dev`` (fewer examples, for quick local
runs) or ``stress`` (long local runs hunting rare interleavings).
"""

import os

from hypothesis import HealthCheck, settings

# The public test kit's fixtures (hive_factory, autojump_hive), used as users would.
pytest_plugins = ["hive_actors.testing"]

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "stress", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
