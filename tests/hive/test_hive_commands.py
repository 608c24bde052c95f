"""The Hive with command-line agents (fake ones from tests/agents): no shell, ever."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hive_actors.hive import HiveConfig, KindConfig, RoleConfig, Verdict, open_hive
from tests.agents import agent, group_alive

HOSTILE = "it's \"quoted\" $(touch pwned) `touch pwned2`; rm -rf / && echo hi\nline two\t\u00e9\U0001f41d"


def config(tmp_path, **kinds):
    return HiveConfig(kinds=kinds, workspaces=tmp_path / "ws", lease_seconds=30)


async def test_hostile_prompt_reaches_the_agent_verbatim(tmp_path):
    kinds = {"echo": KindConfig(command=agent("echo.py", "{prompt}", "--title={title}"))}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="echo", title="t $(x)", prompt=HOSTILE)
        done = await hive.wait(t.id, timeout=30)
    assert done.status == "done", done.error
    seen = done.result
    assert seen["argv"] == [HOSTILE, "--title=t $(x)"]  # one element each, untouched
    assert seen["stdin"] == HOSTILE
    assert seen["task"]["prompt"] == HOSTILE
    assert seen["env"]["HIVE_TASK_ID"] == str(t.id)
    workspace = Path(seen["cwd"])
    assert workspace == tmp_path / "ws" / str(t.id)
    assert not list(tmp_path.rglob("pwned*")) and not Path("pwned").exists()
    assert (workspace / "attempt-1.log").exists()


async def test_failures_retry_and_workspace_is_kept(tmp_path):
    kinds = {"flaky": KindConfig(command=agent("fail_n.py", "2"), retry_delay=0.01, max_attempts=3)}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="flaky", title="fails twice")
        done = await hive.wait(t.id, timeout=30)
        runs = await hive.store.runs(t.id)
    assert done.status == "done" and done.attempts == 3
    assert done.result["runs"] == 3  # the counter file survived across attempts
    assert [r.exit_code for r in runs] == [1, 1, 0]
    assert all(r.output_tail is not None for r in runs)


async def test_timeout_kills_the_agent_and_its_group(tmp_path):
    kinds = {"slow": KindConfig(command=agent("grandchild.py", "pid.txt", "--then", "hang"), timeout=1,
                                max_attempts=1)}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="slow", title="hangs")
        done = await hive.wait(t.id, timeout=30)
        runs = await hive.store.runs(t.id)
    assert done.status == "failed" and "timed out" in done.error
    pgid = runs[-1].pgid
    assert pgid is not None
    assert not group_alive(pgid)


async def test_cancelling_a_running_command_kills_it_within_a_second(tmp_path):
    kinds = {"hang": KindConfig(command=agent("hang.py"))}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="hang", title="forever")
        with trio.fail_after(30):
            while not (runs := await hive.store.runs(t.id)) or runs[-1].pgid is None:
                await trio.sleep(0.05)
        pgid = runs[-1].pgid
        with trio.fail_after(1):
            await hive.cancel(t.id)
            while group_alive(pgid):
                await trio.sleep(0.02)
        assert (await hive.get(t.id)).status == "cancelled"


async def test_megabytes_of_output_do_not_stall(tmp_path):
    kinds = {"spew": KindConfig(command=agent("spew.py", "20"))}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="spew", title="loud")
        done = await hive.wait(t.id, timeout=60)
        runs = await hive.store.runs(t.id)
    assert done.status == "done", done.error
    log = tmp_path / "ws" / str(t.id) / "attempt-1.log"
    assert log.stat().st_size >= 20 * 1024 * 1024
    assert len(runs[-1].output_tail.encode()) <= 64 * 1024


async def test_bad_json_last_line_is_plain_output(tmp_path):
    kinds = {"bad": KindConfig(command=agent("bad_json.py", "array"))}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="bad", title="garbage")
        done = await hive.wait(t.id, timeout=30)
    assert done.status == "done"
    assert set(done.result) == {"exit_code", "stdout"} and done.result["exit_code"] == 0


async def test_command_reviewer_rejects_then_approves_with_feedback(tmp_path):
    # the reviewer approves once the worker has written feedback.txt (second attempt)
    reviewer = RoleConfig(command=[
        os.sys.executable, "-c",
        "import os,sys,json; p=os.path.join(os.environ['HIVE_WORKSPACE'],'feedback.txt');"
        "ok=os.path.exists(p) and 'add tests' in open(p).read();"
        "print(json.dumps(dict(approved=ok, feedback='add tests')))",
    ])
    kinds = {"code": KindConfig(command=agent("write_files.py", "main.py=print(1)"))}
    cfg = HiveConfig(kinds=kinds, reviewer=reviewer, workspaces=tmp_path / "ws")
    async with open_hive(tmp_path / "hive.db", cfg) as hive:
        t = await hive.submit(kind="code", title="write code")
        done = await hive.wait(t.id, timeout=30)
    assert done.status == "done" and done.attempts == 2
    workspace = tmp_path / "ws" / str(t.id)
    assert (workspace / "main.py").read_text() == "print(1)"
    assert "add tests" in (workspace / "feedback.txt").read_text()


async def test_command_planner(tmp_path):
    plan = {"tasks": [
        {"key": "a", "title": "A", "kind": "code", "prompt": "first"},
        {"key": "b", "title": "B", "kind": "code", "depends_on": ["a"]},
    ]}
    planner = RoleConfig(command=agent("succeed.py", "--result", literal(json.dumps(plan))))
    kinds = {"code": KindConfig(command=agent("succeed.py"))}
    cfg = HiveConfig(kinds=kinds, planner=planner, workspaces=tmp_path / "ws")
    async with open_hive(tmp_path / "hive.db", cfg) as hive:
        p = await hive.plan(title="plan it")
        await hive.wait_idle(timeout=30)
        tasks = await hive.list()
    assert [t.status for t in tasks] == ["done", "done", "done"]
    assert [t.parent_id for t in tasks[1:]] == [p.id, p.id]
    assert tasks[2].depends_on == (tasks[1].id,)


def literal(text: str) -> str:
    """``text`` as an argv template element with no placeholders."""
    return text.replace("{", "{{").replace("}", "}}")




async def test_phases_run_in_order_and_the_failing_phase_is_named(tmp_path):
    phases = [
        ("apply", agent("write_files.py", "out.txt=applied")),
        ("test", agent("succeed.py", "--exit-code", "4")),
    ]
    kinds = {"staged": KindConfig(phases=phases, max_attempts=1)}
    async with open_hive(tmp_path / "hive.db", config(tmp_path, **kinds)) as hive:
        t = await hive.submit(kind="staged", title="two phases")
        done = await hive.wait(t.id, timeout=30)
    assert done.status == "failed"
    assert "phase 'test'" in done.error
    assert (tmp_path / "ws" / str(t.id) / "out.txt").read_text() == "applied"


async def test_each_command_review_is_a_run_with_its_process_group_and_exit_code(tmp_path):
    # rejects attempt 1 (exit 1, its stdout is the feedback), approves attempt 2
    reviewer = RoleConfig(command=[
        sys.executable, "-c",
        "import os, sys; a = os.environ['HIVE_ATTEMPT']; print('reviewed attempt', a);"
        "sys.exit(a != '2')",
    ])
    kinds = {"code": KindConfig(command=agent("succeed.py"))}
    cfg = HiveConfig(kinds=kinds, reviewer=reviewer, workspaces=tmp_path / "ws")
    async with open_hive(tmp_path / "hive.db", cfg) as hive:
        t = await hive.submit(kind="code", title="reviewed twice")
        done = await hive.wait(t.id, timeout=30)
        runs = await hive.store.runs(t.id)
    assert done.status == "done" and done.feedback == "reviewed attempt 1"
    assert [(r.attempt, r.review, r.worker, r.outcome, r.exit_code) for r in runs] == [
        (1, False, "code-0", "succeeded", 0), (1, True, "review-0", "rejected", 1),
        (2, False, "code-0", "succeeded", 0), (2, True, "review-0", "approved", 0),
    ]
    reviews = [r for r in runs if r.review]
    assert [r.output_tail.strip() for r in reviews] == ["reviewed attempt 1", "reviewed attempt 2"]
    assert all(r.pgid is not None and not group_alive(r.pgid) for r in reviews)
    assert len({r.pgid for r in runs}) == 4  # a process group of its own each


async def _review_under_way(hive, task_id):
    """The open review run of ``task_id`` once its reviewer command's pgid is recorded."""
    with trio.fail_after(30):
        while True:
            runs = await hive.store.runs(task_id)
            if runs and runs[-1].review and runs[-1].pgid is not None:
                return runs[-1]
            await trio.sleep(0.05)


async def test_cancelling_a_task_under_review_kills_its_reviewer_command(tmp_path):
    reviewer = RoleConfig(command=agent("grandchild.py", "reviewer-child.pid", "--then", "hang"))
    kinds = {"code": KindConfig(command=agent("succeed.py"))}
    cfg = HiveConfig(kinds=kinds, reviewer=reviewer, workspaces=tmp_path / "ws")
    async with open_hive(tmp_path / "hive.db", cfg) as hive:
        t = await hive.submit(kind="code", title="reviewed for ever")
        review = await _review_under_way(hive, t.id)
        assert (review.worker, review.outcome) == ("review-0", None)
        pid_file = trio.Path(tmp_path / "ws" / str(t.id) / "reviewer-child.pid")
        with trio.fail_after(30):  # its grandchild runs too, in the same group
            while not (await pid_file.exists() and await pid_file.read_text()):
                await trio.sleep(0.05)
        assert group_alive(review.pgid)
        with trio.fail_after(1):
            await hive.cancel(t.id)
            while group_alive(review.pgid):
                await trio.sleep(0.02)
        [event] = [e for e in await hive.store.events_since(0, task_id=t.id)
                   if e.type == "task.cancelled"]
        assert (event.payload["previous"], event.payload["pgid"]) == ("review", review.pgid)
        assert (await hive.store.runs(t.id))[-1].outcome == "cancelled"


async def test_a_review_cut_short_by_a_graceful_stop_is_given_back(tmp_path):
    # Its reviewer command is killed by the stopping hive: the next one must find no
    # process group left to kill (its id may belong to someone else by then).
    reviewer = RoleConfig(command=agent("hang.py"))
    kinds = {"code": KindConfig(command=agent("succeed.py"))}
    cfg = HiveConfig(kinds=kinds, reviewer=reviewer, workspaces=tmp_path / "ws")
    async with open_hive(tmp_path / "hive.db", cfg, grace=0.1) as hive:
        t = await hive.submit(kind="code", title="reviewed when the hive stops")
        review = await _review_under_way(hive, t.id)
    assert not group_alive(review.pgid)

    async def approve(task):
        return Verdict(approved=True)

    cfg = HiveConfig(kinds=kinds, reviewer=approve, workspaces=tmp_path / "ws")
    async with open_hive(tmp_path / "hive.db", cfg) as hive:
        assert hive.store.recovery.pgids == ()
        assert (await hive.wait(t.id, timeout=30)).status == "done"
        runs = await hive.store.runs(t.id)
    assert [(r.review, r.worker, r.outcome) for r in runs] == [
        (False, "code-0", "succeeded"), (True, "review-0", "released"),
        (True, "review-0", "approved")]


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` is a live process (not a zombie: PID 1 here may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


def _review_pgid(db: Path, task_id: int) -> int | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT pgid FROM runs WHERE task_id = ? AND review = 1 "
                           "ORDER BY id DESC LIMIT 1", (task_id,)).fetchone()
    return row[0] if row else None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_dead_hives_reviewer_command_is_killed_before_the_task_is_reviewed_again(tmp_path):
    # The death signal reaches only the reviewer command itself: what it started in
    # its group lives on after a SIGKILL of the hive, until the next hive kills it.
    config = tmp_path / "hive.toml"
    config.write_text("\n".join([
        "[hive]", 'db = "hive.db"', 'workspaces = "ws"',
        "[kinds.code]", f"command = {json.dumps(agent('succeed.py'))}",
        "[reviewer]",
        f"command = {json.dumps(agent('grandchild.py', 'reviewer-child.pid', '--then', 'hang'))}",
        "",
    ]))
    db = tmp_path / "hive.db"
    submitted = subprocess.run(
        [sys.executable, "-m", "hive_actors", "--config", str(config), "submit", "--kind", "code",
         "--title", "reviewed when the hive dies", "--json"],
        capture_output=True, text=True, timeout=60, check=True)
    task_id = json.loads(submitted.stdout)["id"]
    pid_file = tmp_path / "ws" / str(task_id) / "reviewer-child.pid"
    first = subprocess.Popen([sys.executable, "-m", "hive_actors.run", "--config", str(config),
                              "--plain"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grandchild = None
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) or _review_pgid(db, task_id) is None:
            assert time.monotonic() < deadline, "the reviewer never started (or its pgid was not recorded)"
            assert first.poll() is None, f"the hive exited {first.returncode}"
            time.sleep(0.05)
        grandchild = int(pid_file.read_text())
        pgid = _review_pgid(db, task_id)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        time.sleep(0.5)
        assert _pid_alive(grandchild)  # outlived its hive, as the death signal allows

        async def approve(task):
            return Verdict(approved=True)

        async def second_hive():
            cfg = HiveConfig(kinds={"code": KindConfig(command=agent("succeed.py"))},
                             reviewer=approve, workspaces=tmp_path / "ws")
            async with open_hive(db, cfg) as hive:
                assert hive.store.recovery.pgids == (pgid,)
                done = await hive.wait(task_id, timeout=30)
                return done, await hive.store.runs(task_id)

        done, runs = trio.run(second_hive)
        deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
        while _pid_alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _pid_alive(grandchild) and not group_alive(pgid)
        assert done.status == "done"
        assert [(r.review, r.worker, r.outcome) for r in runs] == [
            (False, "code-0", "succeeded"), (True, "review-0", "recovered"),
            (True, "review-0", "approved")]
        assert runs[1].pgid == pgid
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if grandchild is not None and _pid_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
