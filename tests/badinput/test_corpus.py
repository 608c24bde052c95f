"""The bad-input corpus: configuration files, plans, agent output, task text and
database files that are wrong in every way we could think of. Each one must end in
a clear error or a well-defined outcome; nothing is lost and nothing is run by a
shell.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hive_actors.hive import ConfigError, HiveConfig, KindConfig, open_hive
from hive_actors.store import DatabaseError
from hive_actors.testing import ScriptedBackend, check_invariants
from tests.agents import agent

LIMIT = 60.0  # bound on subprocesses and waits; never a timing expectation

# --------------------------------------------------------------------------- configs

GOOD_KIND = '[kinds.k]\ncommand = ["echo", "{prompt}"]\n'

#: (name, TOML text, phrases the one-line error must contain)
BAD_CONFIGS = [
    ("not toml", "this is = = not toml\n[", ["line"]),
    ("unclosed table", "[kinds.k\ncommand = []\n", ["line"]),
    ("binary junk", "\x00\x01\x02\xff", []),
    ("empty file", "", ["kinds"]),
    ("no kinds section", '[hive]\ndb = "x.db"\n', ["kinds"]),
    ("empty kinds", "[kinds]\n", ["kinds"]),
    ("unknown top key", GOOD_KIND + "[workers]\nn = 3\n", ["workers"]),
    ("unknown hive key", '[hive]\ndatabase = "x.db"\n' + GOOD_KIND, ["database"]),
    ("unknown kind key", GOOD_KIND + "concurrencyy = 3\n", ["concurrencyy"]),
    ("command is a string", '[kinds.k]\ncommand = "claude -p {prompt}"\n', ["command"]),
    ("command empty", "[kinds.k]\ncommand = []\n", ["command"]),
    ("command holds a number", "[kinds.k]\ncommand = [\"run\", 3]\n", ["command"]),
    ("unknown placeholder", '[kinds.k]\ncommand = ["x", "{secret}"]\n', ["secret"]),
    ("concurrency a string", GOOD_KIND + 'concurrency = "four"\n', ["concurrency"]),
    ("concurrency zero", GOOD_KIND + "concurrency = 0\n", ["concurrency"]),
    ("concurrency a float", GOOD_KIND + "concurrency = 2.5\n", ["concurrency"]),
    ("timeout negative", GOOD_KIND + "timeout = -1\n", ["timeout"]),
    ("timeout a bool", GOOD_KIND + "timeout = true\n", ["timeout"]),
    ("max_attempts zero", GOOD_KIND + "max_attempts = 0\n", ["max_attempts"]),
    ("retry_delay negative", GOOD_KIND + "retry_delay = -5\n", ["retry_delay"]),
    ("review a string", GOOD_KIND + 'review = "yes"\n', ["review"]),
    ("review without reviewer", GOOD_KIND + "review = true\n", ["review"]),
    ("reserved kind plan", '[kinds.plan]\ncommand = ["x"]\n', ["plan"]),
    ("reserved kind review", '[kinds.review]\ncommand = ["x"]\n', ["review"]),
    ("lease zero", "[hive]\nlease_seconds = 0\n" + GOOD_KIND, ["lease_seconds"]),
    ("lease a string", '[hive]\nlease_seconds = "30"\n' + GOOD_KIND, ["lease_seconds"]),
    ("hive is not a table", 'hive = "x"\n' + GOOD_KIND, ["hive"]),
    ("kinds is a list", "kinds = [1, 2]\n", ["kinds"]),
    ("kind is a string", 'kinds = {k = "echo"}\n', ["k"]),
    ("reviewer is a number", GOOD_KIND + "reviewer = 5\n", ["reviewer"]),
    ("planner without command", GOOD_KIND + "[planner]\ntimeout = 5\n", ["command"]),
    ("planner unknown key", GOOD_KIND + '[planner]\ncommand = ["p"]\nmodel = "x"\n', ["model"]),
    ("stdin mode unknown", GOOD_KIND + 'stdin = "file"\n', ["stdin"]),
    ("db empty", '[hive]\ndb = ""\n' + GOOD_KIND, ["db"]),
]


@pytest.mark.parametrize(("name", "text", "phrases"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_a_clear_error(tmp_path, name, text, phrases):
    path = tmp_path / "hive.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as info:
        HiveConfig.from_toml(path)
    message = str(info.value)
    assert str(path) in message  # names the file
    for phrase in phrases:
        assert phrase in message, message
    assert list(tmp_path.iterdir()) == [path]  # nothing created


def test_bad_config_through_the_command_line_exits_2_with_one_line(tmp_path):
    config = tmp_path / "hive.toml"
    config.write_text(GOOD_KIND + 'concurrency = "four"\nbogus = 1\n')
    done = subprocess.run([sys.executable, "-m", "hive_actors.run", "--config", str(config),
                           "--until-idle"], capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(config) in lines[0] and "concurrency" in lines[0] and "bogus" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "hive.db").exists()  # nothing written


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        HiveConfig.from_toml(tmp_path / "nope.toml")
    assert "nope.toml" in str(info.value)


# --------------------------------------------------------------------------- plans


def _plan(n, **extra):
    return [{"key": f"s{i}", "title": f"S{i}", "kind": "k", **extra} for i in range(n)]


#: (name, the planner's answer, phrase of the failure reason or None if it is stored)
BAD_PLANS = [
    ("two-cycle", [{"key": "a", "title": "A", "kind": "k", "depends_on": ["b"]},
                   {"key": "b", "title": "B", "kind": "k", "depends_on": ["a"]}], "cycle"),
    ("self-loop", [{"key": "a", "title": "A", "kind": "k", "depends_on": ["a"]}], "itself"),
    ("long cycle", [{"key": f"n{i}", "title": "x", "kind": "k",
                     "depends_on": [f"n{(i + 1) % 50}"]} for i in range(50)], "cycle"),
    ("unknown dependency", [{"key": "a", "title": "A", "kind": "k", "depends_on": ["zz"]}],
     "zz"),
    ("duplicate keys", _plan(1) + _plan(1), "duplicate"),
    ("unknown kind", [{"key": "a", "title": "A", "kind": "nope"}], "unknown kind"),
    ("missing key", [{"title": "A", "kind": "k"}], "key"),
    ("empty title", [{"key": "a", "title": "", "kind": "k"}], "title"),
    ("depends_on a string", [{"key": "a", "title": "A", "kind": "k", "depends_on": "b"}],
     "depends_on"),
    ("priority a string", [{"key": "a", "title": "A", "kind": "k", "priority": "high"}],
     "priority"),
    ("priority a bool", [{"key": "a", "title": "A", "kind": "k", "priority": True}],
     "priority"),
    ("prompt a number", [{"key": "a", "title": "A", "kind": "k", "prompt": 5}], "prompt"),
    ("entry not an object", [1, 2, 3], "not an object"),
    ("not JSON", "here is my plan: do everything", "not JSON"),
    ("truncated JSON", '{"tasks": [{"key": "a"', "not JSON"),
    ("JSON number", "42", "list"),
    ("tasks not a list", {"tasks": {"a": 1}}, "list"),
    ("object without tasks", {"steps": []}, "tasks"),
    ("null", None, "list"),
]


def planner_returning(answer):
    async def planner(task):
        return answer

    return planner


async def run_plan(tmp_path, answer):
    config = HiveConfig(kinds={"k": KindConfig(backend=ScriptedBackend(), concurrency=8)},
                        planner=planner_returning(answer))
    async with open_hive(tmp_path / "hive.db", config, clock=trio.current_time,
                         store_inline=True) as hive:
        request = await hive.plan(title="request", prompt="make a plan")
        done = await hive.wait(request.id, timeout=10_000)
        await hive.wait_idle(timeout=10_000)
        await check_invariants(hive)
        return done, await hive.list()


@pytest.mark.parametrize(("name", "answer", "reason"), BAD_PLANS, ids=[p[0] for p in BAD_PLANS])
async def test_bad_plan_fails_clearly_and_stores_nothing(tmp_path, autojump_clock, name,
                                                        answer, reason):
    done, tasks = await run_plan(tmp_path, answer)
    assert done.status == "failed"
    assert reason in done.error, done.error
    assert done.attempts == 1  # an invalid plan is not retried
    assert [t.id for t in tasks] == [done.id]  # not half-stored


async def test_plan_entries_with_unknown_keys_are_stored_without_them(tmp_path, autojump_clock):
    # A well-defined outcome: the planner's answer is read for the documented keys
    # (key, title, kind, prompt, depends_on, priority); others are ignored.
    done, tasks = await run_plan(tmp_path, _plan(2, colour="blue", max_attempts=99))
    assert done.status == "done"
    assert [t.title for t in tasks[1:]] == ["S0", "S1"]
    assert all(t.status == "done" and t.max_attempts == 3 for t in tasks[1:])


async def test_a_plan_of_ten_thousand_subtasks_is_stored_at_once_and_runs(tmp_path,
                                                                          autojump_clock):
    plan = [{"key": f"s{i}", "title": f"S{i}", "kind": "k",
             "depends_on": [f"s{i - 1}"] if i % 100 else []} for i in range(10_000)]
    done, tasks = await run_plan(tmp_path, {"tasks": plan})
    assert done.status == "done" and done.result == {"subtasks": 10_000}
    assert len(tasks) == 10_001
    assert all(t.status == "done" for t in tasks)


# --------------------------------------------------------------------------- agent output


async def run_command_task(tmp_path, argv, prompt="", **kind):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = HiveConfig(kinds={"k": KindConfig(command=argv, max_attempts=1, **kind)})
    async with open_hive(tmp_path / "hive.db", config) as hive:
        task = await hive.submit(kind="k", title="t", prompt=prompt)
        done = await hive.wait(task.id, timeout=LIMIT)
        runs = await hive.store.runs(task.id)
        await check_invariants(hive)
        return done, runs, tmp_path / "hive.db.workspaces" / str(task.id)


async def test_binary_output_is_kept_as_text(tmp_path):
    done, runs, workspace = await run_command_task(tmp_path, agent("binary.py", "--kib", "64"))
    assert done.status == "done"
    assert done.result["exit_code"] == 0 and isinstance(done.result["stdout"], str)
    json.dumps(done.result)  # stored as valid JSON text
    assert len(runs[0].output_tail.encode()) <= 64 * 1024 + 4 * 1024  # replacement chars
    log = (workspace / "attempt-1.log").read_bytes()
    assert b"\xff\xfe" in log  # the whole raw output is in the attempt log


async def test_invalid_utf8_with_a_json_last_line_still_gives_the_result(tmp_path):
    done, _, _ = await run_command_task(tmp_path, agent("binary.py", "--result"))
    assert done.status == "done" and done.result == {"binary": True}


@pytest.mark.parametrize("mode", ["text", "array", "number", "string", "truncated", "nan",
                                  "earlier", "empty"])
async def test_a_last_line_that_is_not_a_json_object(tmp_path, mode):
    done, _, _ = await run_command_task(tmp_path, agent("bad_json.py", mode))
    # Well defined: success, with the exit code and the output's tail as the result.
    assert done.status == "done"
    assert set(done.result) == {"exit_code", "stdout"} and done.result["exit_code"] == 0


async def test_fifty_megabytes_of_output_do_not_stall_the_agent(tmp_path):
    done, runs, workspace = await run_command_task(tmp_path, agent("spew.py", "50"))
    assert done.status == "done" and done.result == {"bytes": 50 * 1024 * 1024}
    assert len(runs[0].output_tail.encode()) <= 64 * 1024
    assert (workspace / "attempt-1.log").stat().st_size >= 50 * 1024 * 1024


# --------------------------------------------------------------------------- task text

HOSTILE = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "; touch PWNED",
    "&& touch PWNED || touch PWNED",
    "| tee PWNED",
    "> PWNED",
    "'\"; touch PWNED; echo \"'",
    "${IFS}touch${IFS}PWNED",
    "*",
    "~/../*",
    "\\n\ntouch PWNED\n",
    "-rf /",
    "--help",
    "{prompt} {title} {{task_id}}",
    "é中文🐝\u202e",
]


@pytest.mark.parametrize("prompt", HOSTILE)
async def test_shell_metacharacters_reach_the_agent_verbatim(tmp_path, prompt):
    done, _, workspace = await run_command_task(tmp_path, agent("echo.py", "{prompt}"), prompt)
    assert done.status == "done", done.error
    assert done.result["argv"] == [prompt]
    assert done.result["stdin"] == prompt
    assert not list(tmp_path.rglob("PWNED"))  # no shell ever ran it


async def test_nul_bytes_go_through_stdin_and_are_refused_in_argv(tmp_path):
    prompt = "before\0after"
    via_stdin, _, _ = await run_command_task(tmp_path / "a", agent("echo.py"), prompt)
    assert via_stdin.status == "done"
    assert bytes.fromhex(via_stdin.result["stdin_hex"]) == prompt.encode()
    assert via_stdin.prompt == prompt  # stored exactly, NUL included
    via_argv, _, _ = await run_command_task(tmp_path / "b", agent("echo.py", "{prompt}"), prompt)
    assert via_argv.status == "failed" and "null byte" in via_argv.error


async def test_a_one_megabyte_prompt(tmp_path):
    prompt = ("0123456789abcdef" * 65536)[:1_000_000]
    via_stdin, _, _ = await run_command_task(tmp_path / "a", agent("echo.py"), prompt)
    assert via_stdin.status == "done" and via_stdin.result["stdin"] == prompt
    assert via_stdin.prompt == prompt
    # Too long for one argv entry (the kernel's limit): a clear failure, not a hang.
    via_argv, _, _ = await run_command_task(tmp_path / "b", agent("echo.py", "{prompt}"), prompt)
    assert via_argv.status == "failed" and "too long" in via_argv.error.lower()


async def test_hostile_text_in_titles_and_python_backends(tmp_path, autojump_clock):
    backend = ScriptedBackend()
    config = HiveConfig(kinds={"k": KindConfig(backend=backend)})
    async with open_hive(tmp_path / "hive.db", config, clock=trio.current_time,
                         store_inline=True) as hive:
        texts = [*HOSTILE, "nul\0byte", "x" * 1_000_000, "\ud800"[:0] + "\U0010ffff"]
        tasks = [await hive.submit(kind="k", title=text, prompt=text) for text in texts]
        await hive.wait_idle(timeout=1000)
        for task, text in zip(tasks, texts, strict=True):
            stored = await hive.get(task.id)
            assert (stored.title, stored.prompt, stored.status) == (text, text, "done")
        await check_invariants(hive, backends=[backend])


# --------------------------------------------------------------------------- database files


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sqlite_foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('alice')")
    conn.commit()
    conn.close()


BAD_DATABASES = {
    "text file": lambda p: p.write_text("my notes\n" * 100),
    "png image": lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000)),
    "random bytes": lambda p: p.write_bytes(bytes(range(256)) * 64),
    "truncated sqlite header": lambda p: p.write_bytes(b"SQLite format 3\0" + bytes(50)),
    "foreign sqlite database": _sqlite_foreign,
    "toml config": lambda p: p.write_text(GOOD_KIND),
}


@pytest.mark.parametrize("make", list(BAD_DATABASES.values()), ids=list(BAD_DATABASES))
async def test_a_database_of_the_wrong_kind_is_refused(tmp_path, make):
    path = tmp_path / "hive.db"
    make(path)
    before = digest(path)

    async def noop(task):
        return None

    config = HiveConfig(kinds={"k": KindConfig(backend=noop)})
    with pytest.raises(BaseException) as info:  # noqa: B017 (inside an exception group)
        async with open_hive(path, config):
            pass
    errors = [info.value]
    while isinstance(errors[0], BaseExceptionGroup):
        errors = list(errors[0].exceptions)
    assert isinstance(errors[0], DatabaseError), info.value
    assert str(path) in str(errors[0])
    assert digest(path) == before  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hive.db"]


def test_a_database_of_the_wrong_kind_through_the_command_line(tmp_path):
    db = tmp_path / "hive.db"
    db.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    config = tmp_path / "hive.toml"
    config.write_text(GOOD_KIND)
    before = digest(db)
    done = subprocess.run([sys.executable, "-m", "hive_actors.run", "--config", str(config),
                           "--until-idle"], capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 2
    assert str(db) in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert digest(db) == before


def test_a_directory_where_the_database_should_be(tmp_path):
    config = tmp_path / "hive.toml"
    config.write_text('[hive]\ndb = "dir"\n' + GOOD_KIND)
    (tmp_path / "dir").mkdir()
    done = subprocess.run([sys.executable, "-m", "hive_actors.run", "--config", str(config),
                           "--until-idle"], capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 2, done.stderr
    assert "dir" in done.stderr and "Traceback" not in done.stderr
    assert list((tmp_path / "dir").iterdir()) == []
