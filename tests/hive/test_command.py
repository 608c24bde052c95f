"""The subprocess agent runner: argv/stdin/env delivery, results, output capture, and
the process-group lifecycle (timeouts, cancellation, grandchildren, no zombies)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from hive_actors.hive import _command
from hive_actors.hive._command import (
    OUTPUT_TAIL_LIMIT,
    AgentLauncher,
    CommandResult,
    kill_process_groups,
)
from hive_actors.store import Task
from tests.agents import SPEW_LINE, agent

LINUX = sys.platform.startswith("linux")

HOSTILE = (
    "He said \"hi\" and 'bye' $(touch pwned) `touch pwned` ; rm -rf pwned-dir ; "
    "&& echo $HOME | cat > pwned\n second line\ttab \\ backslash {prompt} {{x}} %s "
    "ünïcødé 🐝 日本語 -- --help\n"
)


def make_task(prompt: str = "do the thing", **overrides: object) -> Task:
    fields: dict[str, object] = dict(
        id=7,
        kind="code",
        title="a title",
        prompt=prompt,
        status="running",
        priority=0,
        attempts=1,
        result=None,
        feedback=None,
        error=None,
        depends_on=(3, 4),
        parent_id=None,
        created_at=1.0,
        updated_at=2.0,
    )
    fields.update(overrides)
    return Task(**fields)  # type: ignore[arg-type]


@pytest.fixture
def launcher():
    with AgentLauncher() as launcher:
        yield launcher


def _live_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (a killed grandchild may stay
    a zombie when PID 1 does not reap orphans, as in some containers)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


async def _eventually(predicate, seconds: float = 5.0) -> None:
    """Poll ``predicate`` (a cheap sync check) until true, failing after ``seconds``."""
    with trio.fail_after(seconds):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


async def _wait_until_dead(pgid: int) -> None:
    """SIGKILL is delivered asynchronously: allow the kernel a moment, bounded."""
    await _eventually(lambda: not _live_members(pgid))


def _read_json(path: str) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text else None


HAVE_PROC = os.path.isdir("/proc")
needs_proc = pytest.mark.skipif(not HAVE_PROC, reason="needs /proc")


# --------------------------------------------------------------------------- delivery


async def test_hostile_prompt_arrives_verbatim_as_one_argv_element(launcher, tmp_path):
    ws = tmp_path / "ws"
    task = make_task(HOSTILE, title="t $(touch pwned)", feedback="fb `touch pwned`")
    template = agent("echo.py", "{prompt}", "title={title}", "{feedback}", "{attempt}", "{task_id}")
    res = await launcher.run(template, task, workspace=ws, attempt=3, timeout=30)
    assert res.ok, res.output_tail
    report = res.result
    assert report["argv"] == [HOSTILE, "title=t $(touch pwned)", "fb `touch pwned`", "3", "7"]
    assert report["stdin"] == HOSTILE
    assert bytes.fromhex(report["stdin_hex"]) == HOSTILE.encode("utf-8")
    assert report["task"]["prompt"] == HOSTILE
    assert report["task"]["feedback"] == "fb `touch pwned`"
    assert res.argv[2] == HOSTILE
    for folder in (ws, tmp_path, Path.cwd()):
        assert not (folder / "pwned").exists()


async def test_environment_carries_the_task(launcher, tmp_path):
    task = make_task(metadata={"k": [1, 2]}, feedback="do better")
    res = await launcher.run(
        agent("echo.py"),
        task,
        workspace=tmp_path,
        attempt=2,
        timeout=30,
        extra_env={"MY_VAR": "x", "HIVE_TASK_ID": "overridden?"},
    )
    env = res.result["env"]
    assert env["HIVE_TASK_ID"] == "7"
    assert env["HIVE_WORKSPACE"] == str(tmp_path)
    assert env["HIVE_ATTEMPT"] == "2"
    task_json = json.loads(env["HIVE_TASK_JSON"])
    assert task_json == res.result["task"]
    assert task_json["id"] == 7 and task_json["kind"] == "code"
    assert task_json["depends_on"] == [3, 4]
    assert task_json["metadata"] == {"k": [1, 2]}
    assert task_json["feedback"] == "do better"
    assert "fencing_token" not in task_json and "lease_owner" not in task_json


async def test_extra_env_reaches_the_agent(launcher, tmp_path):
    template = [sys.executable, "-c", "import os; print(os.environ['MY_VAR'])"]
    res = await launcher.run(
        template, make_task(), workspace=tmp_path, attempt=1, timeout=30, extra_env={"MY_VAR": "v1"}
    )
    assert res.stdout == "v1\n"


async def test_workspace_is_created_and_is_the_cwd(launcher, tmp_path):
    ws = tmp_path / "nested" / "ws"
    res = await launcher.run(agent("echo.py"), make_task(), workspace=ws, attempt=4, timeout=30)
    assert res.result["cwd"] == str(ws)
    assert res.log_path == ws / "attempt-4.log"
    assert res.log_path.read_bytes() == res.stdout.encode()
    res = await launcher.run(
        agent("write_files.py", "out/a.txt=hello"), make_task(), workspace=ws, attempt=5, timeout=30
    )
    assert (ws / "out" / "a.txt").read_text() == "hello"


async def test_stdin_none_gives_dev_null(launcher, tmp_path):
    res = await launcher.run(
        agent("echo.py"),
        make_task("secret"),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
        stdin="none",
    )
    assert res.ok
    assert res.result["stdin"] == ""


async def test_agent_that_never_reads_a_big_prompt_is_fine(launcher, tmp_path):
    prompt = "p" * (2 * 1024 * 1024)  # far more than a pipe buffer
    res = await launcher.run(
        agent("echo.py", "--no-stdin"), make_task(prompt), workspace=tmp_path, attempt=1, timeout=30
    )
    assert res.ok, res.output_tail
    assert res.result["stdin"] is None
    # Linux refuses an environment string over 128 KiB: the env JSON leaves the prompt
    # out and the full JSON is in a file named by HIVE_TASK_JSON_FILE.
    assert res.result["task"]["prompt"] is None
    assert res.result["task"]["omitted"] == ["prompt"]
    full = _read_json(res.result["env"]["HIVE_TASK_JSON_FILE"])
    assert full["prompt"] == prompt


# --------------------------------------------------------------------------- results


async def test_json_object_on_last_line_is_the_result(launcher, tmp_path):
    res = await launcher.run(
        agent("succeed.py", "a b", "{title}"),
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
    )
    assert isinstance(res, CommandResult)
    assert res.ok and res.exit_code == 0 and not res.timed_out and res.error is None
    assert res.result == {"ok": True, "args": ["a b", "a title"]}
    assert res.stdout.startswith("working...\n")
    assert res.phase is None
    assert res.pgid is not None and res.duration >= 0
    assert res.log_path.read_text() == res.stdout


@pytest.mark.parametrize(
    "mode", ["text", "array", "number", "string", "truncated", "nan", "earlier", "empty"]
)
async def test_last_line_not_a_json_object_gives_exit_code_and_stdout(launcher, tmp_path, mode):
    res = await launcher.run(
        agent("bad_json.py", mode, "--exit-code", "0"),
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
    )
    assert res.ok
    assert res.result == {"exit_code": 0, "stdout": res.stdout}


async def test_result_stdout_fallback_is_a_bounded_tail(launcher, tmp_path):
    res = await launcher.run(
        agent("spew.py", "0.1", "--no-result"),
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
    )
    tail = res.result["stdout"]
    assert len(tail.encode()) <= _command.RESULT_STDOUT_TAIL
    assert res.stdout.endswith(tail)


async def test_nonzero_exit_is_a_failure(launcher, tmp_path):
    res = await launcher.run(
        agent("succeed.py", "--exit-code", "3", "--stderr", "oops"),
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
    )
    assert not res.ok and res.exit_code == 3 and not res.timed_out
    assert res.error == "exit code 3"
    assert res.result == {"ok": True, "args": []}  # still parsed: the Worker decides
    assert "oops" in res.output_tail
    assert "oops" not in res.stdout


async def test_fail_n_counts_runs_in_the_workspace(launcher, tmp_path):
    codes = []
    for attempt in (1, 2, 3):
        res = await launcher.run(
            agent("fail_n.py", "2"), make_task(), workspace=tmp_path, attempt=attempt, timeout=30
        )
        codes.append(res.exit_code)
    assert codes == [1, 1, 0]
    assert res.result == {"ok": True, "runs": 3}
    assert "failing run 1 of 2" in (tmp_path / "attempt-1.log").read_text()


async def test_missing_program_is_a_failed_result(launcher, tmp_path):
    res = await launcher.run(
        [str(tmp_path / "no-such-agent"), "{prompt}"],
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
    )
    assert not res.ok and res.exit_code == 127 and res.pgid is None
    assert "no-such-agent" in res.error
    assert "no-such-agent" in res.log_path.read_text()
    assert "no-such-agent" in res.output_tail


async def test_nul_in_an_argument_is_a_failed_result(launcher, tmp_path):
    res = await launcher.run(
        agent("echo.py", "{prompt}"), make_task("a\x00b"), workspace=tmp_path, attempt=1, timeout=30
    )
    assert not res.ok and res.exit_code == 126 and "null byte" in res.error
    # without the prompt in argv the same task runs: the env JSON escapes NUL
    res = await launcher.run(
        agent("echo.py"), make_task("a\x00b"), workspace=tmp_path, attempt=2, timeout=30
    )
    assert res.ok and res.result["stdin"] == "a\x00b" and res.result["task"]["prompt"] == "a\x00b"


async def test_bad_arguments_are_rejected(launcher, tmp_path):
    with pytest.raises(ValueError, match="unknown placeholder"):
        await launcher.run(
            ["echo", "{nope}"], make_task(), workspace=tmp_path, attempt=1, timeout=1
        )
    with pytest.raises(ValueError, match="shell string"):
        await launcher.run("echo hi", make_task(), workspace=tmp_path, attempt=1, timeout=1)
    with pytest.raises(ValueError, match="stdin"):
        await launcher.run(
            ["echo"], make_task(), workspace=tmp_path, attempt=1, timeout=1, stdin="file"
        )


# --------------------------------------------------------------------------- output


async def test_megabytes_of_output_are_drained_logged_and_bounded(launcher, tmp_path):
    limit = 1024 * 1024
    with trio.fail_after(60):
        res = await launcher.run(
            agent("spew.py", "20"),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=60,
            stdout_limit=limit,
        )
    assert res.ok
    total = 20 * 1024 * 1024
    assert res.result == {"bytes": total}
    assert res.stdout_truncated
    assert len(res.stdout.encode()) <= limit
    assert len(res.output_tail.encode()) <= OUTPUT_TAIL_LIMIT
    log = res.log_path.read_bytes()
    assert log == SPEW_LINE * (20 * 16384) + json.dumps({"bytes": total}).encode() + b"\n"
    assert res.stdout.encode() == log[-limit:]


async def test_stdout_and_stderr_are_both_drained(launcher, tmp_path):
    with trio.fail_after(60):
        res = await launcher.run(
            agent("spew.py", "4", "--stream", "both"),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=60,
        )
    assert res.ok and not res.stdout_truncated
    assert res.result == {"bytes": 4 * 1024 * 1024}
    assert len(res.log_path.read_bytes()) == 8 * 1024 * 1024 + len(res.stdout.splitlines()[-1]) + 1
    assert len(res.output_tail.encode()) <= OUTPUT_TAIL_LIMIT


async def test_invalid_utf8_output_is_handled(launcher, tmp_path):
    res = await launcher.run(
        agent("binary.py", "--kib", "80", "--result"),
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
    )
    assert res.ok
    assert res.result == {"binary": True}
    assert "\ufffd" in res.stdout
    assert b"bad \xff\xfe utf8 \xc3\x28 end\n" in res.log_path.read_bytes()
    assert res.log_path.read_bytes().count(b"bad \xff\xfe") == 2  # stdout and stderr
    encoded = res.output_tail.encode("utf-8")  # strict: the tail is valid text
    assert len(encoded) <= OUTPUT_TAIL_LIMIT


# --------------------------------------------------------------------------- lifecycle


@needs_proc
async def test_timeout_kills_the_process_group_with_its_grandchild(launcher, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    with trio.fail_after(10):
        res = await launcher.run(
            agent("grandchild.py", str(pid_file), "--then", "hang"),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=0.5,
        )
    assert res.timed_out and res.exit_code is None and not res.ok
    assert "timed out" in res.error
    assert res.result == {"grandchild": int(pid_file.read_text())}  # partial output still parsed
    await _wait_until_dead(res.pgid)
    assert not _pid_alive(int(pid_file.read_text()))
    assert not _pid_alive(res.pgid)  # the leader was reaped, not left a zombie
    assert "timed out" in res.log_path.read_text()
    assert res.pgid not in launcher.live_pgids()


@needs_proc
async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(launcher, tmp_path):
    with trio.fail_after(10):
        res = await launcher.run(
            agent("hang.py", "--ignore-term"),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=0.3,
            kill_grace=0.2,
        )
    assert res.timed_out and res.exit_code is None
    assert res.stdout.startswith("started ")
    await _wait_until_dead(res.pgid)


@needs_proc
async def test_grandchild_left_behind_dies_when_the_agent_exits(launcher, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    with trio.fail_after(10):
        res = await launcher.run(
            agent("grandchild.py", str(pid_file)),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=30,
        )
    assert res.ok
    assert res.result == {"grandchild": int(pid_file.read_text())}
    await _wait_until_dead(res.pgid)


@needs_proc
async def test_a_process_that_left_the_group_cannot_hold_the_run_open(launcher, tmp_path):
    pid_file = tmp_path / "escaped.pid"
    try:
        with trio.fail_after(10):
            res = await launcher.run(
                agent("grandchild.py", str(pid_file), "--new-session"),
                make_task(),
                workspace=tmp_path,
                attempt=1,
                timeout=30,
            )
        assert res.ok
        assert res.result == {"grandchild": int(pid_file.read_text())}
    finally:
        if pid_file.exists():
            kill_process_groups([int(pid_file.read_text())])


@needs_proc
async def test_cancellation_kills_the_group_and_reraises(launcher, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    spawned: list[int] = []
    returned = False

    async def on_spawn(pgid: int) -> None:
        spawned.append(pgid)

    async def run_it() -> None:
        nonlocal returned
        await launcher.run(
            agent("grandchild.py", str(pid_file), "--then", "hang"),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=None,
            on_spawn=on_spawn,
        )
        returned = True

    with trio.fail_after(10):  # generous bound; the kill itself is immediate
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_it)
            await _eventually(lambda: _read_pid(pid_file) is not None, 10)
            grandchild = _read_pid(pid_file)
            assert spawned and _pid_alive(spawned[0]) and _pid_alive(grandchild)
            nursery.cancel_scope.cancel()
    assert not returned
    assert "hive: run interrupted" in (tmp_path / "attempt-1.log").read_text()
    await _wait_until_dead(spawned[0])
    assert not _pid_alive(spawned[0])
    assert not _pid_alive(grandchild)
    assert launcher.live_pgids() == frozenset()


async def test_on_spawn_failure_kills_the_agent(launcher, tmp_path):
    seen: list[int] = []

    async def on_spawn(pgid: int) -> None:
        seen.append(pgid)
        raise RuntimeError("cannot record the pgid")

    with trio.fail_after(10), pytest.raises(RuntimeError, match="cannot record"):
        await launcher.run(
            agent("hang.py"),
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=None,
            on_spawn=on_spawn,
        )
    assert len(seen) == 1
    if HAVE_PROC:
        await _wait_until_dead(seen[0])
        assert not _pid_alive(seen[0])


@needs_proc
async def test_exit_is_polled_when_pidfd_is_unavailable(launcher, tmp_path, monkeypatch):
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd, raising=False)
    res = await launcher.run(
        agent("succeed.py"), make_task(), workspace=tmp_path, attempt=1, timeout=30
    )
    assert res.ok and res.result == {"ok": True, "args": []}
    pid_file = tmp_path / "gc.pid"
    with trio.fail_after(10):
        res = await launcher.run(
            agent("grandchild.py", str(pid_file), "--then", "hang"),
            make_task(),
            workspace=tmp_path,
            attempt=2,
            timeout=0.3,
        )
    assert res.timed_out and res.exit_code is None
    await _wait_until_dead(res.pgid)
    assert not _pid_alive(res.pgid)


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
async def test_agents_get_pdeathsig_and_come_from_one_long_lived_thread(
    launcher, tmp_path, monkeypatch
):
    spawning_threads = []
    real_spawn = _command._spawn_blocking

    def recording_spawn(*args):
        spawning_threads.append(threading.current_thread())
        return real_spawn(*args)

    monkeypatch.setattr(_command, "_spawn_blocking", recording_spawn)
    first = await launcher.run(
        agent("echo.py"), make_task(), workspace=tmp_path, attempt=1, timeout=30
    )
    await trio.sleep(0.2)
    second = await launcher.run(
        agent("echo.py"), make_task(), workspace=tmp_path, attempt=2, timeout=30
    )
    assert first.result["pdeathsig"] == signal.SIGKILL
    assert second.result["pdeathsig"] == signal.SIGKILL
    assert spawning_threads == [launcher.thread, launcher.thread]
    assert launcher.thread is not threading.current_thread()
    assert launcher.thread.is_alive()
    for res in (first, second):
        # its own session and process group, led by the agent itself
        assert res.result["pgid"] == res.result["pid"] == res.result["sid"] == res.pgid


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
async def test_agent_dies_when_the_spawning_thread_ends(tmp_path):
    # What the death signal is for: when the hive's launcher thread is gone (the hive
    # died), its agents die too, with nobody calling close() or killpg.
    launcher = AgentLauncher()

    async def on_spawn(pgid: int) -> None:
        # Once the agent's own program runs, its death signal is armed (the launcher
        # arms it before the exec, in the child), so the thread may end now.
        cmdline = Path(f"/proc/{pgid}/cmdline")
        with trio.fail_after(5):
            while cmdline.read_bytes().split(b"\0", 1)[0] != os.fsencode(sys.executable):
                await trio.sleep(0.01)  # still setpriv or the /bin/sh check
        launcher._queue.put(_command._STOP)  # end the thread without close()

    try:
        with trio.fail_after(10):
            res = await launcher.run(
                agent("hang.py"),
                make_task(),
                workspace=tmp_path,
                attempt=1,
                timeout=None,
                on_spawn=on_spawn,
            )
        assert res.exit_code == -signal.SIGKILL
        assert not launcher.thread.is_alive()
    finally:
        launcher.close()


async def test_closing_the_launcher_kills_running_agents(tmp_path):
    launcher = AgentLauncher()
    results = []

    async def on_spawn(pgid: int) -> None:
        launcher.close()

    with trio.fail_after(10):
        results.append(
            await launcher.run(
                agent("hang.py"),
                make_task(),
                workspace=tmp_path,
                attempt=1,
                timeout=None,
                on_spawn=on_spawn,
            )
        )
    assert results[0].exit_code == -signal.SIGKILL
    assert results[0].error == "killed by signal SIGKILL"
    assert launcher.closed
    with pytest.raises(RuntimeError, match="closed"):
        await launcher.run(agent("echo.py"), make_task(), workspace=tmp_path, attempt=1, timeout=1)
    await _eventually(lambda: not launcher.thread.is_alive())


# --------------------------------------------------------------------------- phases


async def test_phases_stop_at_the_first_failure_and_name_it(launcher, tmp_path):
    pgids = []

    async def on_spawn(pgid: int) -> None:
        pgids.append(pgid)

    res = await launcher.run_phases(
        [
            ("build", agent("write_files.py", "built.txt=yes")),
            ("test", agent("succeed.py", "--exit-code", "2", "--stderr", "3 tests failed")),
            ("deploy", agent("write_files.py", "deployed.txt=yes")),
        ],
        make_task(),
        workspace=tmp_path,
        attempt=1,
        timeout=30,
        on_spawn=on_spawn,
    )
    assert not res.ok and res.phase == "test" and res.exit_code == 2
    assert "'test'" in res.error and "exit code 2" in res.error
    assert (tmp_path / "built.txt").exists()
    assert not (tmp_path / "deployed.txt").exists()
    assert len(pgids) == 2
    log = res.log_path.read_text()
    assert "=== hive phase build:" in log and "=== hive phase test:" in log
    assert "deploy" not in log
    assert "built.txt" in res.output_tail and "3 tests failed" in res.output_tail


async def test_phases_all_succeed_in_one_workspace(launcher, tmp_path):
    res = await launcher.run_phases(
        [
            ("write", agent("write_files.py", "a.txt=1")),
            (
                "check",
                [
                    sys.executable,
                    "-c",
                    "import json; print(json.dumps({{'a': open('a.txt').read()}}))",
                ],
            ),
        ],
        make_task(),
        workspace=tmp_path,
        attempt=2,
        timeout=30,
    )
    assert res.ok and res.error is None
    assert res.phase == "check"
    assert res.result == {"a": "1"}
    assert res.log_path == tmp_path / "attempt-2.log"


async def test_phases_share_one_overall_timeout(launcher, tmp_path):
    with trio.fail_after(10):
        res = await launcher.run_phases(
            [
                ("quick", agent("succeed.py")),
                ("slow", agent("hang.py")),
                ("never", agent("succeed.py")),
            ],
            make_task(),
            workspace=tmp_path,
            attempt=1,
            timeout=0.5,
        )
    assert res.timed_out and res.phase == "slow" and "'slow'" in res.error


async def test_phases_must_be_name_template_pairs(launcher, tmp_path):
    with pytest.raises(ValueError):
        await launcher.run_phases([], make_task(), workspace=tmp_path, attempt=1, timeout=1)
    with pytest.raises(ValueError, match="phase 'x'"):
        await launcher.run_phases(
            [("x", ["a", "{bad}"])], make_task(), workspace=tmp_path, attempt=1, timeout=1
        )


# --------------------------------------------------------------------------- kill groups


@needs_proc
async def test_kill_process_groups_kills_live_groups_and_ignores_gone_ones(launcher, tmp_path):
    pgids: list[int] = []
    results: list[CommandResult] = []
    started = trio.Event()

    async def on_spawn(pgid: int) -> None:
        pgids.append(pgid)
        started.set()

    async def run_it() -> None:
        results.append(
            await launcher.run(
                agent("hang.py", "--ignore-term"),
                make_task(),
                workspace=tmp_path,
                attempt=1,
                timeout=None,
                on_spawn=on_spawn,
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_it)
        with trio.fail_after(10):
            await started.wait()
        assert kill_process_groups(pgids) == pgids
    assert results[0].exit_code == -signal.SIGKILL
    assert kill_process_groups(pgids) == []  # gone now
    # never our own group, nor "every process"
    assert kill_process_groups([0, 1, -1, os.getpgrp()]) == []


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _zombie_children() -> list[int]:
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] == b"Z" and int(fields[1]) == os.getpid():
            zombies.append(int(entry))
    return zombies


@needs_proc
async def test_no_fd_or_zombie_is_left_behind(launcher, tmp_path):
    await launcher.run(agent("echo.py"), make_task(), workspace=tmp_path, attempt=0, timeout=30)
    before = _open_fds()
    await launcher.run(agent("succeed.py"), make_task(), workspace=tmp_path, attempt=1, timeout=30)
    await launcher.run(agent("hang.py"), make_task(), workspace=tmp_path, attempt=2, timeout=0.2)
    await launcher.run(["/no/such/agent"], make_task(), workspace=tmp_path, attempt=3, timeout=30)
    with trio.move_on_after(0.3):
        await launcher.run(
            agent("hang.py"), make_task(), workspace=tmp_path, attempt=4, timeout=None
        )
    await launcher.run_phases(
        [("a", agent("succeed.py")), ("b", agent("fail_n.py", "5"))],
        make_task(),
        workspace=tmp_path,
        attempt=5,
        timeout=30,
    )
    assert _open_fds() == before
    assert _zombie_children() == []
    assert launcher.live_pgids() == frozenset()


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_an_agent_whose_hive_died_before_its_death_signal_was_armed_never_starts(tmp_path):
    # The launcher arms the death signal in the child before the agent's exec; if the
    # hive was already gone by then, the agent must not start (it would be an orphan).
    prefix = _command._pdeathsig_prefix()
    if prefix is None:
        pytest.skip("setpriv --pdeathsig is not available: agents get a preexec_fn")
    prefix[-1] = "1"  # as if the hive had died: the child's parent is not the hive
    marker = tmp_path / "ran"
    done = subprocess.run([*prefix, sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert done.returncode == 1 and not marker.exists()


async def test_environment_names_a_shell_would_drop_still_reach_the_agent(launcher, tmp_path):
    res = await launcher.run(agent("echo.py"), make_task(), workspace=tmp_path, attempt=1,
                             timeout=30, extra_env={"HIVE_ODD-NAME": "kept", "HIVE_X": "y"})
    assert res.ok, res.error
    assert res.result["env"]["HIVE_ODD-NAME"] == "kept" and res.result["env"]["HIVE_X"] == "y"
    if LINUX:
        assert res.result["pdeathsig"] == signal.SIGKILL


def test_program_lookup_follows_execvp_from_the_agent_workspace(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "bin").mkdir(parents=True)
    tool = workspace / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (workspace / "plain").write_text("not executable")
    resolve = _command._resolve_program
    assert resolve("tool", workspace, {"PATH": "bin:/usr/bin"}) == str(tool)  # relative entry
    assert resolve("bin/tool", workspace, {"PATH": ""}) == str(tool)  # a path: from cwd
    assert resolve("tool", workspace / "bin", {"PATH": "/nonexistent:"}) == str(tool)  # empty = cwd
    assert resolve(sys.executable, workspace, {}) == os.path.abspath(sys.executable)
    with pytest.raises(PermissionError):
        resolve("plain", workspace, {"PATH": "."})
    with pytest.raises(PermissionError):
        resolve("bin", workspace, {"PATH": "."})  # a directory
    with pytest.raises(FileNotFoundError):
        resolve("tool", workspace, {"PATH": "/nonexistent"})
    with pytest.raises(ValueError):
        resolve("a\x00b", workspace, {"PATH": "."})
