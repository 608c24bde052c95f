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
