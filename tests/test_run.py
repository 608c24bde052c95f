"""``python -m hive_actors.run``, run as a user runs it: a subprocess, no terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from hive_actors.actors import open_actor_system
from hive_actors.store import open_store
from tests.test_cli import (
    FAIL_AGENT,
    HANG_AGENT,
    LIMIT,
    OK_AGENT,
    hive,
    hive_json,
    recorded_pgid,
    wait_for,
    write_agent,
    write_config,
)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hive_actors.run ARGS`` to the end (the demo's agents pacing
    themselves faster than for a person watching)."""
    return subprocess.run([sys.executable, "-m", "hive_actors.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=LIMIT,
                          env={**os.environ, "HIVE_DEMO_PACE": "0.2"})


def start(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m hive_actors.run ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-m", "hive_actors.run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for a background run (killing it if it overstays) and return its outcome."""
    try:
        out, err = proc.communicate(timeout=LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_demo_runs_without_a_terminal():
    done = run("--demo")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    db = Path(re.search(r"^database: (.+)$", out, re.M).group(1).strip())
    assert db.is_file()
    assert f"hive --db {db} status" in out
    assert "the planner stored 6 subtasks" in out
    assert "rejected by the reviewer" in out and "TODO" in out
    assert "failed" in out and "retried" in out
    assert re.search(r"^hive: .*done=7 failed=0", out, re.M)  # plain status lines
    tasks = hive_json("list", db=db)
    assert [t["status"] for t in tasks] == ["done"] * 7
    plan, subtasks = tasks[0], tasks[1:]
    assert plan["kind"] == "plan" and all(t["parent_id"] == plan["id"] for t in subtasks)
    assert any(t["depends_on"] for t in subtasks)
    reworked = [t for t in subtasks if t["feedback"]]
    assert len(reworked) == 1 and reworked[0]["attempts"] == 2
    assert reworked[0]["result"]["addressed"] == reworked[0]["feedback"]
    retried = [t for t in subtasks if t["attempts"] == 2 and not t["feedback"]]
    assert len(retried) == 1
    workspaces = db.parent / "workspaces"
    written = {path.name for path in workspaces.glob("*/*") if not path.name.endswith(".log")}
    assert {"models.py", "storage.py", "cli.py", "api.py", "test_api.py", "README.md"} <= written
    api = next(workspaces.glob("*/api.py")).read_text()
    assert "TODO" not in api
    events = [json.loads(line) for line in
              hive("events", "--json", db=db).stdout.splitlines()]
    types = {event["type"] for event in events}
    assert {"plan.stored", "task.rejected", "task.retrying", "task.approved"} <= types


def test_until_idle_exits_0_when_all_is_done(tmp_path):
    agent = write_agent(tmp_path, "ok.py", OK_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]})
    db = tmp_path / "hive.db"
    for title in ("one", "two"):
        hive("submit", "--kind", "code", "--title", title, db=db)
    done = run("--config", str(config), "--until-idle")
    assert done.returncode == 0, done.stderr
    assert "Summary" in done.stdout and f"database: {db}" in done.stdout
    assert [t["result"] for t in hive_json("list", db=db)] == [{"ok": True}] * 2


def test_until_idle_exits_1_naming_the_failed_tasks(tmp_path):
    ok = write_agent(tmp_path, "ok.py", OK_AGENT)
    bad = write_agent(tmp_path, "bad.py", FAIL_AGENT)
    config = write_config(tmp_path, {"good": [sys.executable, str(ok)],
                                     "bad": [sys.executable, str(bad)]},
                          max_attempts=1)
    db = tmp_path / "hive.db"
    hive("--config", str(config), "submit", "--kind", "good", "--title", "fine")
    failing = hive_json("--config", str(config), "submit", "--kind", "bad", "--title",
                        "doomed", db=db)
    done = run("--config", str(config), "--until-idle")
    assert done.returncode == 1
    assert re.search(rf"1 task\(s\) failed: {failing['id']} \(doomed: exit code 3",
                     done.stderr), done.stderr


def test_db_option_overrides_the_config(tmp_path):
    agent = write_agent(tmp_path, "ok.py", OK_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]}, db="config.db")
    other = tmp_path / "other.db"
    hive("submit", "--kind", "code", "--title", "t", db=other)
    done = run("--config", str(config), "--db", str(other), "--until-idle")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "config.db").exists()
    assert hive_json("show", "1", db=other)["status"] == "done"


def test_bad_config_exits_2_with_one_line(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text('[hive]\nlease_seconds = -1\n[kinds.code]\ncommand = "claude -p"\n')
    done = run("--config", str(config), "--until-idle")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "broken.toml" in done.stderr
    assert "hive.lease_seconds" in done.stderr and "kinds.code.command" in done.stderr
    missing = run("--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "absent.toml" in missing.stderr
    nothing = run(cwd=tmp_path)  # no --config, and no hive.toml here
    assert nothing.returncode == 2 and "--config" in nothing.stderr


def test_bad_database_exits_2_with_one_line(tmp_path):
    agent = write_agent(tmp_path, "ok.py", OK_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]}, db="junk.db")
    (tmp_path / "junk.db").write_bytes(b"\x00garbage, not SQLite" * 200)
    done = run("--config", str(config), "--until-idle")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "junk.db" in done.stderr
    assert (tmp_path / "junk.db").read_bytes() == b"\x00garbage, not SQLite" * 200


def test_log_json_is_one_object_per_line(tmp_path):
    agent = write_agent(tmp_path, "ok.py", OK_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]})
    hive("--config", str(config), "submit", "--kind", "code", "--title", "t")
    done = run("--config", str(config), "--until-idle", "--log-level", "info", "--log-json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any("serving code" in r["message"] for r in records)
    bad = run("--config", str(tmp_path / "nope.toml"), "--log-json")
    assert bad.returncode == 2 and json.loads(bad.stderr)["level"] == "ERROR"


def test_sigterm_stops_gracefully_and_requeues_running_work(tmp_path):
    agent = write_agent(tmp_path, "hang.py", HANG_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]})
    db = tmp_path / "hive.db"
    task = hive_json("submit", "--kind", "code", "--title", "slow", db=db)
    proc = start("--config", str(config), "--grace", "0.2", "--plain", "--log-json")
    wait_for(lambda: recorded_pgid(db, task["id"]), "the agent to start")
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 0, err
    messages = [json.loads(line)["message"] for line in err.splitlines()]  # all JSON
    assert any(m.startswith("SIGTERM: stopping gracefully") for m in messages)
    assert any(m.startswith("stopped; unfinished tasks wait in") for m in messages)
    after = hive_json("show", str(task["id"]), db=db)
    assert after["status"] == "queued"  # never lost: it runs again on the next start


def test_second_signal_forces_exit(tmp_path):
    agent = write_agent(tmp_path, "hang.py", HANG_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]})
    db = tmp_path / "hive.db"
    task = hive_json("submit", "--kind", "code", "--title", "slow", db=db)
    proc = start("--config", str(config), "--grace", "600", "--until-idle", "--plain")
    wait_for(lambda: recorded_pgid(db, task["id"]), "the agent to start")
    proc.send_signal(signal.SIGINT)
    for line in proc.stderr:  # wait until the first signal has landed
        if "stopping gracefully" in line:
            break
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGINT
    assert "forced exit" in err
    # looking at the database takes nothing over; the next hive to open it re-queues
    # the task the forced exit left running
    assert hive_json("show", str(task["id"]), db=db)["status"] == "running"
    assert trio.run(status_after_reopen, db, task["id"]) == "queued"


async def status_after_reopen(db: Path, task_id: int) -> str:
    """The task's status once a hive process has opened the database (and recovered)."""
    async with open_actor_system() as system, open_store(system, str(db)) as store:
        return (await store.get(task_id)).status


def test_live_view_on_a_terminal(tmp_path):
    agent = write_agent(tmp_path, "ok.py", OK_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]})
    hive("--config", str(config), "submit", "--kind", "code", "--title", "watched")
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hive_actors.run", "--config", str(config), "--until-idle"],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
        env={**os.environ, "COLUMNS": "120", "LINES": "50", "TERM": "xterm"},
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal closed with the process
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert proc.wait(timeout=LIMIT) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control codes
    for part in ("Tasks by status", "Workers", "Recent events", "done/min", "Summary"):
        assert part in text


async def test_the_view_shows_escalations_waiting_for_a_person(tmp_path):
    from rich.console import Console

    from hive_actors import _view
    from hive_actors.hive import HiveConfig, KindConfig, Verdict, open_hive

    async def work(task):
        return {"draft": task.prompt}

    async def unsure(task):
        return Verdict(escalate=True, feedback="a person should look at this")

    config = HiveConfig(kinds={"code": KindConfig(backend=work)}, reviewer=unsure)
    async with open_hive(tmp_path / "hive.db", config) as hive:
        task = await hive.submit(kind="code", title="risky [change]", prompt="p")
        await hive.wait_idle(timeout=30)  # escalated tasks do not hold it
        snapshot = await _view.Monitor(hive, from_start=True).snapshot()
    assert [t.id for t in snapshot.escalated] == [task.id]
    assert f"waiting for a person: {task.id}" in _view.status_line(snapshot)
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(_view.render(snapshot, "hive.db"))
    screen = console.export_text()
    assert "Escalated: waiting for a person" in screen and "risky [change]" in screen
    assert "a person should look at this" in screen
    assert "task.escalated" in screen
