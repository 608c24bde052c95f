"""Crash consistency: SIGKILL a process mid-stream of acknowledged transitions, many
times, and check that every acknowledged transition is in the database, that the file
is intact, and that the next open recovers what the dead process held."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

from hive_actors.store import messages
from hive_actors.store._engine import Engine

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ROUNDS = int(os.environ.get("HIVE_CRASH_ROUNDS", "10"))
BUDGET = 25.0  # seconds; later rounds are skipped past it (at least 3 always run)


def run_child_and_kill(db, log, delay):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if os.path.exists(log):
        os.unlink(log)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "crash_child.py"), db, log],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(log) and os.path.getsize(log) > 0):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "child never became ready"
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    with open(log) as f:
        return [line.split() for line in f.read().splitlines()]


def check_acknowledged(db, acks, context):
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", context
        status = dict(conn.execute("SELECT id, status FROM tasks"))
        tokens = dict(conn.execute("SELECT id, fencing_token FROM tasks"))
        done_events = dict(conn.execute(
            "SELECT task_id, count(*) FROM events WHERE type = 'task.done' GROUP BY task_id"
        ))
    finally:
        conn.close()
    finished = {int(a[1]): a[0] for a in acks if a[0] in ("done", "failed")}
    for ack in acks:
        kind = ack[0]
        if kind == "submitted":
            assert int(ack[1]) in status, (context, ack)
        elif kind == "claimed":
            task_id, token = int(ack[1]), int(ack[2])
            assert tokens[task_id] >= token, (context, ack)
            assert status[task_id] in ("running", "done", "failed"), (context, ack)
        elif kind in ("done", "failed"):
            assert status[int(ack[1])] == kind, (context, ack)
    for task_id, kind in finished.items():
        if kind == "done":
            assert done_events.get(task_id) == 1, (context, task_id)
    assert all(n == 1 for n in done_events.values()), context


def test_sigkill_never_loses_an_acknowledged_transition(tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    db = str(tmp_path / "crash.db")
    log = str(tmp_path / "acks.log")
    started = time.monotonic()
    total_acks = 0
    rounds = 0
    last_hive = None
    while rounds < ROUNDS and (rounds < 3 or time.monotonic() - started < BUDGET):
        delay = rng.uniform(0.02, 0.6)
        acks = run_child_and_kill(db, log, delay)
        context = f"seed={seed} round={rounds} delay={delay:.3f}"
        assert acks and acks[0][0] == "ready", context
        last_hive = acks[0][1]
        check_acknowledged(db, acks, context)
        total_acks += len(acks)
        rounds += 1
    assert total_acks > rounds * 10  # the children really did work before dying

    # The next open finds the last child dead and recovers what it held.
    conn = sqlite3.connect(db)
    held = [r[0] for r in conn.execute(
        "SELECT id FROM tasks WHERE status = 'running' AND lease_hive = ?", (last_hive,)
    )]
    conn.close()
    engine, report, events = Engine.open(db, clock=time.time)
    try:
        assert last_hive in report.dead_hives
        assert sorted(report.requeued + report.failed) == sorted(held)
        assert [e.task_id for e in events if e.type == "task.recovered"] == sorted(held)
        (left,), _ = engine.execute([messages.ListTasks(status="running")])
        assert left.unwrap() == []
    finally:
        engine.close()
