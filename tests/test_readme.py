"""Every command in README.md is run, so the README never lies.

Conventions in README.md:

- a fenced block marked ``sh`` holds commands, one per line (``#`` comments are
  skipped; ``A && B`` is two commands). They run in order, without a shell, in one
  temporary directory shared by the whole README, with this interpreter's ``bin``
  directory first on ``PATH``; each must exit 0.
- ``<!-- file: NAME -->`` right before a fenced block writes that block to ``NAME`` in
  the directory, so the commands after it can use it.
- the few commands that cannot run inside the test suite are in ``ELSEWHERE``, each
  with where it is run; benchmark scripts are smoke-run with small sizes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# Commands run elsewhere: the set-up commands by CI (.ci/run installs the package with
# its test extras and runs exactly `pytest`), the bare demo by tests/test_run.py.
ELSEWHERE = {
    "pip install -e .": ".ci/run",
    'pip install -e ".[test]"': ".ci/run",
    'pip install -e ".[bench]"': "by hand (the benchmark extras)",
    "pytest": ".ci/run",
    "python -m hive_actors.run --demo": "tests/test_run.py::test_demo_runs_without_a_terminal",
    "python examples/embed_in_nursery.py": "tests/test_examples.py",
    "python examples/custom_actor.py": "tests/test_examples.py",
    "python examples/asyncio_backend.py": "tests/test_examples.py",
}
# Benchmark scripts, run from the repository's root with small sizes instead of the
# README's (a smoke run of the same script).
SMOKE = {
    "benchmarks/actors_bench.py": ["--n", "2000", "--repeats", "1"],
    "benchmarks/store_bench.py": ["--tasks", "60", "--seed-tasks", "30", "--callers", "5",
                                  "--repeats", "1", "--latency-n", "20"],
    "benchmarks/hive_bench.py": None,  # needs the bench extras and ~15 s: run by hand
}

_FENCE = re.compile(r"(?:<!-- file: (?P<file>\S+) -->\n)?```(?P<info>[^\n`]*)\n(?P<body>.*?)```",
                    re.S)


def readme_steps() -> list[tuple[str, str]]:
    """The README's steps in order: ("file", NAME\\0CONTENT) or ("cmd", COMMAND)."""
    steps = []
    for match in _FENCE.finditer(README.read_text(encoding="utf-8")):
        if match["file"]:
            steps.append(("file", f"{match['file']}\0{match['body']}"))
        if match["info"].strip() == "sh":
            for line in match["body"].splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                steps += [("cmd", part.strip()) for part in line.split("&&")]
    return steps


def test_readme_has_the_set_up_commands_first():
    commands = [value for kind, value in readme_steps() if kind == "cmd"]
    assert commands[:4] == ["pip install -e .", "python -m hive_actors.run --demo",
                            'pip install -e ".[test]"', "pytest"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in ci and re.search(r"^pytest$", ci, re.M)


def test_every_readme_command_runs(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "120", "HIVE_DEMO_PACE": "0.2"}  # the demo's agents think faster
    ran = []
    for kind, value in readme_steps():
        if kind == "file":
            name, content = value.split("\0", 1)
            (tmp_path / name).write_text(content, encoding="utf-8")
            continue
        if value in ELSEWHERE:
            continue
        argv = shlex.split(value)
        cwd = tmp_path
        if len(argv) > 1 and argv[1] in SMOKE:
            if SMOKE[argv[1]] is None:
                continue
            argv, cwd = argv[:2] + SMOKE[argv[1]], ROOT
        if argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{value!r} exited {done.returncode}:\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ran.append((value, done.stdout))
    outputs = dict(ran)
    # the tour explores the demo's database: the reworked task is task 5
    assert "Write the public API" in outputs["hive --db demo.db show 5"]
    assert "still has a TODO" in outputs["hive --db demo.db show 5"]
    assert "counter = 15" in outputs["python counter.py"]
    assert "'done': 1" in outputs["python embed.py"]
    assert '{"echo": "hello"}' in outputs["hive --config hive.toml show 1"]
    assert "2 passed" in outputs["python -m pytest -q -p no:cacheprovider test_mine.py"]
    assert len(ran) >= 10


def test_readme_benchmark_scripts_exist():
    for script in SMOKE:
        assert (ROOT / script).is_file(), script
