"""Every example runs as a user would run it, so none of them rots."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", ["counter.py"])
def test_counter_example(name):
    assert "counter = 15" in run_example(name)


def test_supervision_example():
    out = run_example("supervision.py")
    assert out.count("started (fresh state)") == 3
    assert "restarts so far: 2" in out


def test_embed_in_nursery_example():
    out = run_example("embed_in_nursery.py")
    assert out.count(") done -> {'words'") == 3
    assert "idle: 3 done" in out
    assert "the program's own ticker kept running: True" in out


def test_custom_actor_example():
    out = run_example("custom_actor.py")
    assert "tally: {'echo': 3, 'shout': 1}" in out
    assert "the asker sees the crash" in out and "restarts so far: 1" in out
    assert out.count("started with a fresh tally") == 2
    assert "tally right after the restart: {}" in out
    assert "tally after the restart: {'echo': 1}" in out


def test_asyncio_backend_example():
    out = run_example("asyncio_backend.py")
    assert "done: olleh oicnysa dlrow" in out
    assert "asyncio client calls: 3" in out
