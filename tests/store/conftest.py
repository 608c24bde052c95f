import random

import pytest

import hive_actors
from hive_actors.store import open_store


class FakeClock:
    """Wall-clock stand-in the tests move by hand (leases, backoff, timestamps)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "hive.db")


@pytest.fixture
async def system():
    async with hive_actors.open_actor_system() as system:
        yield system


@pytest.fixture
async def store(system, db_path, clock):
    async with open_store(system, db_path, clock=clock, rng=random.Random(1)) as store:
        yield store
