"""Chaos, as separate processes: SIGKILL ``python -m hive_actors.run`` at random
moments while command agents run, restart it each time, then finish with
``--until-idle``; nothing may be lost, duplicated or left running.

Each test prints its seed; ``HIVE_CHAOS_SEED=N`` replays the same kill moments
(process timing still varies), ``HIVE_CHAOS_KILLS`` changes the number of kills.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hive_actors.hive import HiveConfig, KindConfig
from hive_actors.store import open_store
from hive_actors.testing import check_invariants, open_test_hive
from tests.agents import AGENTS_DIR

KILLS = int(os.environ.get("HIVE_CHAOS_KILLS", "20"))
LIMIT = 120.0  # bound on one --until-idle run; never a timing expectation

SLOW_AGENT = """\
import json, random, sys, time
time.sleep(random.uniform(0.1, 0.8))
print(json.dumps({"slow": True}))
"""
BROKEN_AGENT = """\
import sys
print("this agent always fails", file=sys.stderr)
sys.exit(3)
"""
SLOW_REVIEWER = """\
import random, time
time.sleep(random.uniform(0.1, 0.5))
print("looks good")
"""


def write_setup(tmp_path: Path, kinds: dict[str, dict], reviewer: str | None = None) -> Path:
    """Copy the fake agents below ``tmp_path`` (so /proc can tell ours apart) and
    write the hive's config (with ``reviewer``, the agent script reviewing the kinds
    whose ``review`` is true); returns the config path."""
    agents = tmp_path / "agents"
    shutil.copytree(AGENTS_DIR, agents, ignore=shutil.ignore_patterns("__pycache__"))
    (agents / "slow.py").write_text(SLOW_AGENT)
    (agents / "broken.py").write_text(BROKEN_AGENT)
    (agents / "slow_reviewer.py").write_text(SLOW_REVIEWER)
    lines = ["[hive]", 'db = "hive.db"', "lease_seconds = 30", 'workspaces = "ws"', ""]
    if reviewer is not None:
        argv = [sys.executable, str(agents / reviewer)]
        lines += ["[reviewer]", f"command = {json.dumps(argv)}", "concurrency = 2", ""]
    for name, options in kinds.items():
        options = dict(options)
        script, *args = options.pop("agent")
        argv = [sys.executable, str(agents / script), *args]
        lines += [f"[kinds.{name}]", f"command = {json.dumps(argv)}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
        lines.append("")
    config = tmp_path / "hive.toml"
    config.write_text("\n".join(lines))
    return config


def submit(db: Path, tasks: list[tuple[str, int]]) -> list[int]:
    """Submit ``(kind, max_attempts)`` tasks straight through the store."""

    async def main() -> list[int]:
        import hive_actors

        async with hive_actors.open_actor_system() as system:
            async with open_store(system, str(db), hive_heartbeat=None) as store:
                return [
                    (await store.submit(kind, f"{kind}-{i}", f"prompt {i} $(rm -rf /) ;|&",
                                        max_attempts=attempts, retry_delay=0.1)).id
                    for i, (kind, attempts) in enumerate(tasks)
                ]

    return trio.run(main)


def start_hive(config: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hive_actors.run", "--config", str(config), "--plain",
         "--grace", "2", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def our_live_processes(marker: str) -> list[tuple[int, str]]:
    """Processes (not zombies: PID 1 here does not reap them) whose command line
    mentions ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                "utf-8", "replace")
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2:].split()[0]
        if marker in cmdline and state not in (b"Z", b"X"):
            found.append((int(entry), cmdline))
    return found


def wait_no_orphans(marker: str) -> list[tuple[int, str]]:
    deadline = time.monotonic() + 10
    left = our_live_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = our_live_processes(marker)
    return left


def kill_repeatedly(config: Path, rng: random.Random, kills: int, marker: str) -> int:
    """Start the hive and SIGKILL it at a random moment, ``kills`` times."""
    survived = 0
    for round_ in range(kills):
        proc = start_hive(config)
        time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is not None:  # it must not exit on its own
            err = proc.stderr.read().decode(errors="replace")
            raise AssertionError(f"round {round_}: the hive exited {proc.returncode}: {err}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        survived += 1
        # The agents die with the hive (PR_SET_PDEATHSIG); none may outlive it for long.
        left = wait_no_orphans(marker)
        assert not left, f"round {round_}: agents outlived the killed hive: {left}"
    return survived


def finish(config: Path) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [sys.executable, "-m", "hive_actors.run", "--config", str(config), "--plain",
         "--until-idle"], capture_output=True, timeout=LIMIT,
    )
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    return done


def check_database(db: Path) -> dict[int, tuple[str, str]]:
    """Integrity, the state machine's invariants, and ``task.done`` exactly once per
    done task; returns ``{id: (kind, status)}``."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tasks = {tid: (kind, status) for tid, kind, status in
                 conn.execute("SELECT id, kind, status FROM tasks")}
        done_events = dict(conn.execute(
            "SELECT task_id, count(*) FROM events WHERE type = 'task.done' GROUP BY task_id"))
    finally:
        conn.close()
    for tid, (_kind, status) in tasks.items():
        assert status in ("done", "failed"), (tid, status)
        assert done_events.get(tid, 0) == (1 if status == "done" else 0), tid

    async def invariants() -> None:
        async def unused(task):  # a kind nobody submits: the checker needs a hive
            return None

        config = HiveConfig(kinds={"checker-only": KindConfig(backend=unused)})
        async with open_test_hive(config, db) as hive:
            await check_invariants(hive)

    trio.run(invariants)
    return tasks


def run_chaos(tmp_path: Path, kinds: dict[str, dict], tasks: list[tuple[str, int]],
              kills: int, reviewer: str | None = None) -> dict[int, tuple[str, str]]:
    seed = int(os.environ.get("HIVE_CHAOS_SEED", random.randrange(1 << 30)))
    print(f"chaos seed {seed} ({kills} kills)")
    rng = random.Random(seed)
    config = write_setup(tmp_path, kinds, reviewer)
    db = tmp_path / "hive.db"
    ids = submit(db, tasks)
    marker = str(tmp_path / "agents")
    survived = kill_repeatedly(config, rng, kills, marker)
    assert survived == kills
    finish(config)
    assert not wait_no_orphans(marker)
    final = check_database(db)
    assert sorted(final) == sorted(ids)  # nothing lost, nothing invented
    conn = sqlite3.connect(db)
    try:
        recovered = conn.execute(
            "SELECT count(*) FROM events WHERE type = 'task.recovered'").fetchone()[0]
        killed_runs = conn.execute(
            "SELECT count(*) FROM runs WHERE outcome = 'recovered' AND NOT review").fetchone()[0]
        killed_reviews = conn.execute(
            "SELECT count(*) FROM runs WHERE outcome = 'recovered' AND review").fetchone()[0]
    finally:
        conn.close()
    print(f"chaos: {kills} kills survived, {recovered} attempts recovered, "
          f"{killed_runs} agent runs and {killed_reviews} reviews cut short")
    assert recovered >= 1  # the kills did land while agents ran
    return final


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_while_slow_and_failing_agents_run(tmp_path):
    # The slow kind's work is reviewed too (by a slow command that approves): kills
    # land on reviews as well, whose runs must be closed and agents gone like any.
    kinds = {
        "fast": {"agent": ["succeed.py"], "concurrency": 4, "max_attempts": 25,
                 "review": False},
        "slow": {"agent": ["slow.py"], "concurrency": 3, "max_attempts": 25, "review": True},
        "flaky": {"agent": ["fail_n.py", "2"], "concurrency": 2, "max_attempts": 25,
                  "retry_delay": 0.1, "review": False},
        "broken": {"agent": ["broken.py"], "concurrency": 2, "max_attempts": 2,
                   "retry_delay": 0.1, "review": False},
    }
    tasks = ([("fast", 25)] * 12 + [("slow", 25)] * 12 + [("flaky", 25)] * 6
             + [("broken", 2)] * 4)
    final = run_chaos(tmp_path, kinds, tasks, KILLS, reviewer="slow_reviewer.py")
    for tid, (kind, status) in final.items():
        # Kills are recovered attempts; 25 attempts outlast 20 kills, so only the
        # always-failing agent may fail.
        assert status == ("failed" if kind == "broken" else "done"), (tid, kind, status)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_while_agents_hang_past_their_timeout_and_print_megabytes(tmp_path):
    kinds = {
        "hang": {"agent": ["hang.py", "--ignore-term"], "concurrency": 2, "timeout": 0.5,
                 "max_attempts": 2, "retry_delay": 0.1},
        "spew": {"agent": ["spew.py", "8"], "concurrency": 2, "max_attempts": 25},
        "slow": {"agent": ["slow.py"], "concurrency": 2, "max_attempts": 25},
    }
    tasks = [("hang", 2)] * 4 + [("spew", 25)] * 6 + [("slow", 25)] * 6
    final = run_chaos(tmp_path, kinds, tasks, KILLS)
    for tid, (kind, status) in final.items():
        assert status == ("failed" if kind == "hang" else "done"), (tid, kind, status)
    # The whole output of a spewing agent reached its attempt log.
    logs = sorted((tmp_path / "ws").glob("*/attempt-*.log"))
    assert any(path.stat().st_size >= 8 * 1024 * 1024 for path in logs)
