"""The Hive with command-line agents (fake ones from tests/agents): no shell, ever."""

import json
import os
from pathlib import Path

import trio

from hive_actors.hive import HiveConfig, KindConfig, RoleConfig, open_hive
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
