"""The ``hive`` command, run as a user runs it: a subprocess against a database file."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hive_actors.actors import open_actor_system
from hive_actors.store import open_store
from tests.agents import group_alive

OK_AGENT = 'import json; print(json.dumps({"ok": True}))'
FAIL_AGENT = 'import sys; print("boom: nothing works", file=sys.stderr); sys.exit(3)'
HANG_AGENT = "import os, time\nprint('started', os.getpid(), flush=True)\ntime.sleep(600)\n"
LIMIT = 60.0  # an upper bound for waits on a subprocess, never a timing expectation


# --------------------------------------------------------------------------- helpers


def hive(*args: str, db: Path | None = None, stdin: str | None = None,
         check: int | None = 0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hive_actors [--db DB] ARGS`` and return the finished process."""
    argv = [sys.executable, "-m", "hive_actors"]
    if db is not None:
        argv += ["--db", str(db)]
    done = subprocess.run(argv + list(args), capture_output=True, text=True, input=stdin,
                          timeout=LIMIT)
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
    return done


def hive_json(*args: str, db: Path) -> object:
    """Run a ``hive`` command with ``--json`` and parse its one document."""
    return json.loads(hive(*args, "--json", db=db).stdout)


def write_agent(directory: Path, name: str, source: str) -> Path:
    """Write a small agent script and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def write_config(directory: Path, kinds: dict[str, list[str]], *, db: str = "hive.db",
                 extra: str = "", **kind_options: object) -> Path:
    """Write a ``hive.toml`` with one ``[kinds.NAME]`` per entry of ``kinds``."""
    lines = ["[hive]", f"db = {json.dumps(db)}", "lease_seconds = 30", ""]
    for name, argv in kinds.items():
        lines += [f"[kinds.{name}]", f"command = {json.dumps(argv)}"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in kind_options.items()]
        lines.append("")
    path = directory / "hive.toml"
    path.write_text("\n".join(lines) + extra, encoding="utf-8")
    return path


def wait_for(predicate, what: str, limit: float = LIMIT):
    """Poll ``predicate`` until it returns something truthy (bounded by ``limit``)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


@contextlib.contextmanager
def background(argv: list[str], stop: signal.Signals) -> Iterator[subprocess.Popen[str]]:
    """``argv`` running in another process for the block; at its end the process is
    sent ``stop`` and must exit 0 (it is killed if the block fails)."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield process
        process.send_signal(stop)
        assert process.wait(timeout=LIMIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def running_hive(config: Path) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """``python -m hive_actors.run`` on ``config``; stopped with SIGTERM."""
    return background(
        [sys.executable, "-m", "hive_actors.run", "--config", str(config), "--plain"],
        signal.SIGTERM,
    )


def recorded_pgid(db: Path, task_id: int, *, review: bool = False) -> int | None:
    """The process group recorded for the task's latest attempt, or with ``review`` its
    latest review (read-only query)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT pgid FROM runs WHERE task_id = ? AND review = ? "
                           "ORDER BY id DESC LIMIT 1", (task_id, int(review))).fetchone()
    return row[0] if row else None




def escalate_one(db: Path, kind: str) -> int:
    """Store a task that went through work and review and now waits for a person."""

    async def setup() -> int:
        async with open_actor_system() as system, open_store(system, str(db)) as store:
            task = await store.submit(kind, "needs a person", "p")
            [claimed] = await store.claim(kind, 1, "w", 30)
            await store.succeed(task.id, claimed.fencing_token, {"x": 1}, review=True)
            [review] = await store.claim_review(1, "r", 30)
            await store.escalate(task.id, "not sure", token=review.fencing_token)
            return task.id

    return trio.run(setup)


# --------------------------------------------------------------------------- tests


def test_submit_list_show_status_json(tmp_path):
    db = tmp_path / "hive.db"
    first = hive_json("submit", "--kind", "code", "--title", "first", "--prompt", "do [it]",
                      db=db)
    assert first["status"] == "queued" and first["prompt"] == "do [it]"
    # --db and --json are accepted after the command too
    second = json.loads(hive("submit", "--kind", "docs", "--title", "second", "--priority", "5",
                             "--depends-on", str(first["id"]), "--db", str(db), "--json").stdout)
    assert second["depends_on"] == [first["id"]] and second["priority"] == 5
    assert set(second) >= {"id", "kind", "title", "prompt", "status", "priority", "attempts",
                           "result", "feedback", "error", "depends_on", "parent_id",
                           "created_at", "updated_at"}
    listed = hive_json("list", db=db)
    assert [task["id"] for task in listed] == [first["id"], second["id"]]
    assert [t["title"] for t in hive_json("list", "--kind", "docs", db=db)] == ["second"]
    assert hive_json("list", "--status", "done", db=db) == []
    shown = hive_json("show", str(second["id"]), db=db)
    assert shown == second
    status = hive_json("status", db=db)
    assert status["counts"]["queued"] == 2
    assert status["kinds"]["code"]["queued"] == 1 and status["kinds"]["docs"]["queued"] == 1


def test_human_output_is_tables(tmp_path):
    db = tmp_path / "hive.db"
    out = hive("submit", "--kind", "code", "--title", "write [the] docs", db=db).stdout
    assert "submitted task 1" in out and "write [the] docs" in out
    table = hive("list", db=db).stdout
    assert "write [the] docs" in table and "queued" in table
    assert "total" in hive("status", db=db).stdout
    assert "prompt" in hive("show", "1", db=db).stdout
    assert "task.queued" in hive("events", db=db).stdout


def test_prompt_from_stdin_and_plan(tmp_path):
    db = tmp_path / "hive.db"
    task = json.loads(hive("submit", "--kind", "code", "--title", "t", "--prompt", "-",
                           "--json", db=db, stdin="line one\nline two\n").stdout)
    assert task["prompt"] == "line one\nline two\n"
    plan = hive_json("plan", "--title", "big job", "--prompt", "split me", db=db)
    assert plan["kind"] == "plan" and plan["status"] == "queued"


def test_events_json_since(tmp_path):
    db = tmp_path / "hive.db"
    hive("submit", "--kind", "code", "--title", "a", db=db)
    hive("submit", "--kind", "code", "--title", "b", db=db)
    lines = hive("events", "--json", db=db).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert all(set(event) == {"seq", "type", "task_id", "ts", "payload"} for event in events)
    assert [e["type"] for e in events] == ["task.queued", "task.queued"]
    later = hive("events", "--since", str(events[0]["seq"]), "--json", db=db).stdout
    assert [json.loads(line)["task_id"] for line in later.splitlines()] == [events[1]["task_id"]]


def test_events_follow_streams_new_events(tmp_path):
    db = tmp_path / "hive.db"
    hive("submit", "--kind", "code", "--title", "before", db=db)
    follow = [sys.executable, "-m", "hive_actors", "--db", str(db), "events", "--follow", "--json"]
    with background(follow, signal.SIGINT) as follower:
        first = json.loads(follower.stdout.readline())
        assert first["type"] == "task.queued" and first["task_id"] == 1
        hive("submit", "--kind", "code", "--title", "after", db=db)
        second = json.loads(follower.stdout.readline())
        assert second["type"] == "task.queued" and second["task_id"] == 2


def test_cancel_and_retry(tmp_path):
    db = tmp_path / "hive.db"
    task = hive_json("submit", "--kind", "code", "--title", "t", db=db)
    cancelled = hive_json("cancel", str(task["id"]), db=db)
    assert cancelled["status"] == "cancelled"
    again = hive_json("retry", str(task["id"]), db=db)
    assert again["status"] == "queued"
    refused = hive("retry", str(task["id"]), db=db, check=1)
    assert refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("hive: error: ")


def test_review_of_an_escalated_task(tmp_path):
    db = tmp_path / "hive.db"
    task_id = escalate_one(db, "code")
    assert hive_json("show", str(task_id), db=db)["status"] == "escalated"
    assert "needs a person" in hive("status", db=db).stdout  # escalations are listed
    rejected = hive_json("review", str(task_id), "--reject", "--feedback", "add tests", db=db)
    assert rejected["status"] == "queued" and rejected["feedback"] == "add tests"
    other = escalate_one(db, "docs")
    out = hive("review", str(other), "--approve", db=db).stdout
    assert "approved" in out
    assert hive_json("show", str(other), db=db)["status"] == "done"
    # a decision needs --approve or --reject
    assert hive("review", str(other), db=db, check=2).stderr


def test_errors_are_one_line_with_an_exit_status(tmp_path):
    db = tmp_path / "hive.db"
    hive("submit", "--kind", "code", "--title", "t", db=db)
    missing = hive("show", "99", db=db, check=1)
    assert missing.stderr.strip() == "hive: error: task 99 does not exist"
    no_file = hive("status", db=tmp_path / "nope.db", check=2)
    assert "nope.db" in no_file.stderr and len(no_file.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope.db").exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    bad = hive("status", db=garbage, check=2)
    assert "garbage.db" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    config = tmp_path / "bad.toml"
    config.write_text('[kinds.code]\ncommand = ["x"]\nconcurency = 2\n')
    bad_config = hive("--config", str(config), "status", check=2)
    assert "bad.toml" in bad_config.stderr and "kinds.code.concurency" in bad_config.stderr
    assert len(bad_config.stderr.strip().splitlines()) == 1
    nothing = subprocess.run([sys.executable, "-m", "hive_actors", "status"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=LIMIT)
    assert nothing.returncode == 2 and "--db" in nothing.stderr


def test_config_names_the_database_and_the_kind_defaults(tmp_path):
    config = write_config(tmp_path, {"code": ["true"]}, db="data/my.db", max_attempts=7)
    (tmp_path / "data").mkdir()
    task = json.loads(hive("--config", str(config), "submit", "--kind", "code", "--title", "t",
                           "--json").stdout)
    assert task["max_attempts"] == 7
    assert (tmp_path / "data" / "my.db").exists()
    # a hive.toml in the current directory is found without --config
    found = subprocess.run([sys.executable, "-m", "hive_actors", "list", "--json"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT)
    assert found.returncode == 0 and json.loads(found.stdout)[0]["id"] == task["id"]


@pytest.mark.skipif(sys.platform != "linux", reason="agent process groups are Linux here")
def test_cancel_kills_an_agent_running_in_another_process(tmp_path):
    agent = write_agent(tmp_path, "hang.py", HANG_AGENT)
    config = write_config(tmp_path, {"code": [sys.executable, str(agent)]})
    db = tmp_path / "hive.db"
    task = hive_json("submit", "--kind", "code", "--title", "forever", db=db)
    with running_hive(config) as running:
        pgid = wait_for(lambda: recorded_pgid(db, task["id"]), "the agent to start")
        assert group_alive(pgid)
        out = hive("cancel", str(task["id"]), db=db).stdout
        assert f"killed its agent (process group {pgid})" in out
        wait_for(lambda: not group_alive(pgid), "the agent to die")
        assert hive_json("show", str(task["id"]), db=db)["status"] == "cancelled"
        assert running.poll() is None  # the hive itself carries on
    assert hive_json("show", str(task["id"]), db=db)["status"] == "cancelled"



@pytest.mark.skipif(sys.platform != "linux", reason="agent process groups are Linux here")
def test_cancel_kills_a_reviewer_running_in_another_process(tmp_path):
    ok = write_agent(tmp_path, "ok.py", OK_AGENT)
    hang = write_agent(tmp_path, "hang.py", HANG_AGENT)
    reviewer = json.dumps([sys.executable, str(hang)])
    config = write_config(tmp_path, {"code": [sys.executable, str(ok)]},
                          extra=f"\n[reviewer]\ncommand = {reviewer}\n")
    db = tmp_path / "hive.db"
    task = hive_json("submit", "--kind", "code", "--title", "reviewed for ever", db=db)
    with running_hive(config) as running:
        pgid = wait_for(lambda: recorded_pgid(db, task["id"], review=True), "the reviewer to start")
        assert group_alive(pgid)
        out = hive("cancel", str(task["id"]), db=db).stdout
        assert f"(was review); killed its reviewer (process group {pgid})" in out
        wait_for(lambda: not group_alive(pgid), "the reviewer to die")
        assert running.poll() is None  # the hive itself carries on
    assert hive_json("show", str(task["id"]), db=db)["status"] == "cancelled"
