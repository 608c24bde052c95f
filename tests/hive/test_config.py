"""HiveConfig / KindConfig / RoleConfig and the TOML loader: every rule, every message.

A configuration that builds is valid; one that does not raises one ConfigError that
names every problem with its key path (and the file, when it came from one).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hive_actors.hive._config import (
    ConfigError,
    HiveConfig,
    KindConfig,
    Phase,
    RoleConfig,
    is_async_callable,
)

EXAMPLE_CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


async def backend(task):
    return {"ok": True}


async def other_backend(task):
    return None


def sync_backend(task):
    return None


class AsyncCallable:
    async def __call__(self, task):
        return None


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return excinfo.value.problems


def assert_problem(error: ConfigError, path: str, *fragments: str) -> None:
    """``error`` has a problem starting with ``path:`` that contains every fragment,
    and the message shows it."""
    matching = [p for p in error.problems if p.startswith(f"{path}: ")]
    assert matching, f"no problem at {path!r} in {error.problems}"
    assert any(all(f in p for f in fragments) for p in matching), (path, fragments, matching)
    for problem in matching:
        assert problem in str(error)


def write(tmp_path: Path, text: str, name: str = "hive.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        HiveConfig.from_toml(path)
    assert str(path) in str(excinfo.value)
    assert excinfo.value.source == str(path)
    return excinfo.value


# --------------------------------------------------------------------------- ConfigError


def test_config_error_is_a_value_error_listing_every_problem():
    error = ConfigError(["a: bad", "b.c: worse"], source="x/hive.toml")
    assert isinstance(error, ValueError)
    assert error.problems == ["a: bad", "b.c: worse"]
    assert error.source == "x/hive.toml"
    text = str(error)
    assert "x/hive.toml" in text and "2 problems" in text
    assert "\n  - a: bad" in text and "\n  - b.c: worse" in text


def test_config_error_without_a_file():
    error = ConfigError(["concurrency: must be an int >= 1, got 0"])
    assert error.source is None
    assert str(error).startswith("invalid hive configuration (1 problem):")


# --------------------------------------------------------------------------- KindConfig


def test_kind_config_defaults_match_the_contract():
    kind = KindConfig(backend=backend)
    assert (kind.backend, kind.command, kind.phases) == (backend, None, None)
    assert kind.concurrency == 1
    assert kind.timeout is None
    assert kind.max_attempts == 3
    assert kind.retry_delay == 1.0
    assert kind.review is None
    assert kind.loop == "trio"
    assert kind.stdin == "prompt"


def test_kind_config_positional_order_matches_the_contract():
    kind = KindConfig(None, ["echo", "{prompt}"], 4, 9.5, 2, 0.5, False, "trio")
    assert kind == KindConfig(
        command=("echo", "{prompt}"),
        concurrency=4,
        timeout=9.5,
        max_attempts=2,
        retry_delay=0.5,
        review=False,
    )


def test_kind_config_is_frozen_and_stores_argv_as_a_tuple():
    argv = ["claude", "-p", "{prompt}"]
    kind = KindConfig(command=argv)
    argv.append("--mutated")
    assert kind.command == ("claude", "-p", "{prompt}")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        kind.concurrency = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "callable_",
    [backend, functools.partial(backend), AsyncCallable(), AsyncCallable().__call__],
    ids=["async def", "partial", "async __call__", "bound method"],
)
def test_async_callables_are_accepted_as_backends(callable_):
    assert is_async_callable(callable_)
    assert KindConfig(backend=callable_).backend is callable_


def test_asyncio_backends_are_accepted():
    assert KindConfig(backend=backend, loop="asyncio").loop == "asyncio"


@pytest.mark.parametrize(
    "phases",
    [
        [("apply", ["aider", "--message", "{prompt}"]), ("test", ["pytest", "-q"])],
        [
            {"name": "apply", "command": ["aider", "--message", "{prompt}"]},
            {"name": "test", "command": ["pytest", "-q"]},
        ],
        [Phase("apply", ["aider", "--message", "{prompt}"]), Phase("test", ("pytest", "-q"))],
    ],
    ids=["pairs", "tables", "Phase"],
)
def test_phases_are_stored_as_phase_objects_in_order(phases):
    kind = KindConfig(phases=phases)
    assert kind.phases == (
        Phase("apply", ("aider", "--message", "{prompt}")),
        Phase("test", ("pytest", "-q")),
    )
    assert [phase.name for phase in kind.phases] == ["apply", "test"]
    # a Phase is a (name, argv) pair: it unpacks and compares like one
    name, argv = kind.phases[1]
    assert (name, argv) == kind.phases[1] == ("test", ("pytest", "-q"))


# Each case: KindConfig keyword arguments, then (path, fragments...) of one problem.
KIND_CASES = {
    "nothing to run": ({}, ("command", "missing", "backend, command or phases")),
    "backend and command": (
        {"backend": backend, "command": ["x"]},
        ("command", "cannot be combined with backend"),
    ),
    "command and phases": (
        {"command": ["x"], "phases": [("a", ["y"])]},
        ("phases", "cannot be combined with command"),
    ),
    "sync backend": ({"backend": sync_backend}, ("backend", "must be an async callable")),
    "class as backend": ({"backend": AsyncCallable}, ("backend", "must be an async callable")),
    "non-callable backend": ({"backend": 42}, ("backend", "must be an async callable", "42")),
    "string command": (
        {"command": "claude -p '{prompt}'"},
        ("command", "never a shell string", 'write it as ["claude", "-p", "{prompt}"]'),
    ),
    "empty command": ({"command": []}, ("command", "must not be empty")),
    "non-string argv element": ({"command": ["echo", 3]}, ("command", "element 1", "3")),
    "unknown placeholder": (
        {"command": ["echo", "{nope}"]},
        ("command", "unknown placeholder {nope}", "known: attempt"),
    ),
    "broken brace": ({"command": ["echo", "{prompt"]}, ("command", "element 1")),
    "concurrency 0": (
        {"command": ["x"], "concurrency": 0},
        ("concurrency", "must be an int >= 1, got 0"),
    ),
    "concurrency float": ({"command": ["x"], "concurrency": 2.0}, ("concurrency", "got 2.0")),
    "concurrency bool": ({"command": ["x"], "concurrency": True}, ("concurrency", "got True")),
    "concurrency string": ({"command": ["x"], "concurrency": "4"}, ("concurrency", "got '4'")),
    "timeout 0": ({"command": ["x"], "timeout": 0}, ("timeout", "None or a number", "> 0")),
    "timeout negative": ({"command": ["x"], "timeout": -5}, ("timeout", "got -5")),
    "timeout infinite": ({"command": ["x"], "timeout": math.inf}, ("timeout", "got inf")),
    "timeout string": ({"command": ["x"], "timeout": "10"}, ("timeout", "got '10'")),
    "max_attempts 0": (
        {"command": ["x"], "max_attempts": 0},
        ("max_attempts", "must be an int >= 1, got 0"),
    ),
    "max_attempts float": ({"command": ["x"], "max_attempts": 1.5}, ("max_attempts", "1.5")),
    "retry_delay negative": (
        {"command": ["x"], "retry_delay": -0.1},
        ("retry_delay", ">= 0", "got -0.1"),
    ),
    "retry_delay nan": ({"command": ["x"], "retry_delay": math.nan}, ("retry_delay", "nan")),
    "review string": ({"command": ["x"], "review": "yes"}, ("review", "True, False or None")),
    "review int": ({"command": ["x"], "review": 1}, ("review", "got 1")),
    "unknown loop": ({"backend": backend, "loop": "curio"}, ("loop", "'trio', 'asyncio'")),
    "asyncio loop with a command": (
        {"command": ["x"], "loop": "asyncio"},
        ("loop", "only applies to a Python backend"),
    ),
    "unknown stdin": ({"command": ["x"], "stdin": "file"}, ("stdin", "'prompt', 'none'")),
    "phases not a list": ({"phases": "pytest -q"}, ("phases", "must be a list")),
    "phases empty": ({"phases": []}, ("phases", "must not be empty")),
    "phase not a pair": ({"phases": [3]}, ("phases[0]", "(name, argv) pair")),
    "phase with a bad placeholder": (
        {"phases": [("apply", ["x", "{nope}"])]},
        ("phases[0].command", "unknown placeholder {nope}"),
    ),
    "phase with a string command": (
        {"phases": [("apply", "aider --yes")]},
        ("phases[0].command", "never a shell string"),
    ),
    "phase with an empty name": ({"phases": [("", ["x"])]}, ("phases[0].name", "non-empty")),
    "duplicate phase names": (
        {"phases": [("a", ["x"]), ("a", ["y"])]},
        ("phases[1].name", "duplicate phase name 'a'"),
    ),
    "phase table missing command": (
        {"phases": [{"name": "apply"}]},
        ("phases[0]", "missing key 'command'"),
    ),
    "phase table with an unknown key": (
        {"phases": [{"name": "apply", "command": ["x"], "cwd": "/"}]},
        ("phases[0].cwd", "unknown key", "known keys: command, name"),
    ),
}


@pytest.mark.parametrize("kwargs, expected", KIND_CASES.values(), ids=KIND_CASES.keys())
def test_kind_config_rejects(kwargs, expected):
    with pytest.raises(ConfigError) as excinfo:
        KindConfig(**kwargs)
    assert_problem(excinfo.value, *expected)


def test_kind_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as excinfo:
        KindConfig(
            command="echo {prompt}",
            concurrency=0,
            timeout=-1,
            max_attempts=0,
            retry_delay=-1,
            review="maybe",
            loop="curio",
            stdin="file",
        )
    paths = [p.split(":", 1)[0] for p in problems_of(excinfo)]
    assert paths == [
        "command",
        "loop",
        "concurrency",
        "timeout",
        "max_attempts",
        "retry_delay",
        "review",
        "stdin",
    ]


# --------------------------------------------------------------------------- Phase, RoleConfig


def test_phase_checks_itself():
    assert Phase("test", ["pytest"]).command == ("pytest",)
    with pytest.raises(ConfigError) as excinfo:
        Phase("", "pytest -q")
    assert_problem(excinfo.value, "name", "non-empty")
    assert_problem(excinfo.value, "command", "never a shell string")


def test_role_config_defaults_and_rules():
    role = RoleConfig(command=["pytest", "-q"])
    assert (role.command, role.backend, role.timeout, role.stdin, role.loop, role.concurrency) == (
        ("pytest", "-q"),
        None,
        None,
        "prompt",
        "trio",
        1,
    )
    with pytest.raises(ConfigError) as excinfo:
        RoleConfig()
    assert_problem(excinfo.value, "command", "missing")
    with pytest.raises(ConfigError) as excinfo:
        RoleConfig(backend=backend, command=["x"], timeout=0, stdin="x", concurrency=0)
    error = excinfo.value
    assert_problem(error, "command", "cannot be combined with backend")
    assert_problem(error, "timeout", "> 0")
    assert_problem(error, "stdin", "'prompt', 'none'")
    assert_problem(error, "concurrency", "int >= 1")


# --------------------------------------------------------------------------- HiveConfig


def test_hive_config_as_in_the_embedding_contract():
    config = HiveConfig(
        kinds={
            "echo": KindConfig(backend=backend, concurrency=50, review=False),
            "polite": KindConfig(backend=backend, concurrency=2, max_attempts=2),
        },
        reviewer=other_backend,
    )
    assert config.served_kinds == ("echo", "polite")
    assert config.reviewer == RoleConfig(backend=other_backend)
    assert config.planner is None
    assert config.lease_seconds == 30
    assert config.workspaces is None and config.db is None
    assert config.needs_review("echo") is False
    assert config.needs_review("polite") is True
    with pytest.raises(KeyError):
        config.needs_review("nobody")


def test_review_none_means_reviewed_only_when_a_reviewer_exists():
    config = HiveConfig(kinds={"k": KindConfig(backend=backend)})
    assert config.needs_review("k") is False


def test_reviewer_and_planner_forms():
    config = HiveConfig(
        kinds={"k": KindConfig(backend=backend, review=True)},
        reviewer=["python", "review.py"],
        planner=RoleConfig(backend=backend, loop="asyncio", timeout=60),
    )
    assert config.reviewer == RoleConfig(command=("python", "review.py"))
    assert config.planner.loop == "asyncio" and config.planner.timeout == 60
    assert HiveConfig(kinds={"k": KindConfig(backend=backend)}, planner=AsyncCallable()).planner


def test_hive_config_kinds_are_a_read_only_copy():
    kinds = {"k": KindConfig(backend=backend)}
    config = HiveConfig(kinds=kinds)
    kinds["other"] = KindConfig(backend=backend)
    assert list(config.kinds) == ["k"]
    with pytest.raises(TypeError):
        config.kinds["x"] = KindConfig(backend=backend)  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.lease_seconds = 1  # type: ignore[misc]
    assert attrs.evolve(config, lease_seconds=5).kinds == config.kinds


def test_hive_config_paths_become_paths(tmp_path):
    config = HiveConfig(kinds={"k": KindConfig(backend=backend)}, db="hive.db", workspaces=tmp_path)
    assert config.db == Path("hive.db") and config.workspaces == tmp_path


HIVE_CASES = {
    "kinds not a mapping": ({"kinds": [("k", KindConfig(backend=backend))]}, ("kinds", "mapping")),
    "no kinds": ({"kinds": {}}, ("kinds", "at least one kind")),
    "reserved plan": (
        {"kinds": {"plan": KindConfig(backend=backend)}},
        ("kinds.plan", "reserved", "Planner"),
    ),
    "reserved review": (
        {"kinds": {"review": KindConfig(backend=backend)}},
        ("kinds.review", "reserved", "Reviewer"),
    ),
    "empty kind name": ({"kinds": {"": KindConfig(backend=backend)}}, ("kinds", "non-empty")),
    "kind name not a string": ({"kinds": {3: KindConfig(backend=backend)}}, ("kinds", "got 3")),
    "kind not a KindConfig": ({"kinds": {"k": backend}}, ("kinds.k", "must be a KindConfig")),
    "review without reviewer": (
        {"kinds": {"k": KindConfig(backend=backend, review=True)}},
        ("kinds.k.review", "no reviewer is configured"),
    ),
    "sync reviewer": (
        {"kinds": {"k": KindConfig(backend=backend)}, "reviewer": sync_backend},
        ("reviewer", "async callable, an argv list or a RoleConfig"),
    ),
    "string reviewer": (
        {"kinds": {"k": KindConfig(backend=backend)}, "reviewer": "python review.py"},
        ("reviewer", "never a shell string", '["python", "review.py"]'),
    ),
    "planner with a bad placeholder": (
        {"kinds": {"k": KindConfig(backend=backend)}, "planner": ["plan", "{nope}"]},
        ("planner", "unknown placeholder {nope}"),
    ),
    "lease_seconds 0": (
        {"kinds": {"k": KindConfig(backend=backend)}, "lease_seconds": 0},
        ("lease_seconds", "> 0, got 0"),
    ),
    "lease_seconds string": (
        {"kinds": {"k": KindConfig(backend=backend)}, "lease_seconds": "30"},
        ("lease_seconds", "got '30'"),
    ),
    "empty db": ({"kinds": {"k": KindConfig(backend=backend)}, "db": ""}, ("db", "non-empty")),
    "workspaces not a path": (
        {"kinds": {"k": KindConfig(backend=backend)}, "workspaces": 3},
        ("workspaces", "path", "got 3"),
    ),
}


@pytest.mark.parametrize("kwargs, expected", HIVE_CASES.values(), ids=HIVE_CASES.keys())
def test_hive_config_rejects(kwargs, expected):
    with pytest.raises(ConfigError) as excinfo:
        HiveConfig(**kwargs)
    assert_problem(excinfo.value, *expected)


def test_hive_config_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as excinfo:
        HiveConfig(
            kinds={
                "plan": KindConfig(backend=backend),
                "k": KindConfig(backend=backend, review=True),
            },
            planner="plan.py",
            lease_seconds=-1,
        )
    assert [p.split(":", 1)[0] for p in problems_of(excinfo)] == [
        "kinds.plan",
        "kinds.k.review",
        "planner",
        "lease_seconds",
    ]


# --------------------------------------------------------------------------- from_toml

FULL = """
[hive]
db = "state/hive.db"
lease_seconds = 12.5
workspaces = "ws"

[kinds.backend]
command = ["claude", "-p", "{prompt}"]   # argv template, never a shell string
concurrency = 4
timeout = 900
max_attempts = 3
review = true

[kinds.docs]
phases = [
    {name = "apply", command = ["aider", "--message", "{prompt}"]},
    {name = "test", command = ["pytest", "-q", "{workspace}"]},
]
stdin = "none"
retry_delay = 0
review = false

[reviewer]
command = ["python", "review.py", "{task_id}"]
timeout = 60
stdin = "none"
concurrency = 2

[planner]
command = ["python", "plan.py"]
"""


def test_full_file_round_trip(tmp_path):
    path = write(tmp_path, FULL)
    config = HiveConfig.from_toml(path)
    assert config == HiveConfig(
        kinds={
            "backend": KindConfig(
                command=["claude", "-p", "{prompt}"],
                concurrency=4,
                timeout=900,
                max_attempts=3,
                review=True,
            ),
            "docs": KindConfig(
                phases=[
                    ("apply", ["aider", "--message", "{prompt}"]),
                    ("test", ["pytest", "-q", "{workspace}"]),
                ],
                stdin="none",
                retry_delay=0,
                review=False,
            ),
        },
        reviewer=RoleConfig(
            command=["python", "review.py", "{task_id}"], timeout=60, stdin="none", concurrency=2
        ),
        planner=["python", "plan.py"],
        lease_seconds=12.5,
        workspaces=tmp_path / "ws",
        db=tmp_path / "state" / "hive.db",
    )
    assert config.served_kinds == ("backend", "docs")
    assert config.needs_review("backend") and not config.needs_review("docs")
    # loading twice gives equal configurations
    assert HiveConfig.from_toml(str(path)) == config


def test_minimal_file(tmp_path):
    config = HiveConfig.from_toml(write(tmp_path, '[kinds.k]\ncommand = ["true"]\n'))
    assert config.served_kinds == ("k",)
    assert config.db is None and config.workspaces is None and config.reviewer is None
    assert config.kinds["k"] == KindConfig(command=["true"])


def test_paths_are_resolved_against_the_files_directory(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    write(
        sub,
        f'[hive]\ndb = "../data/h.db"\nworkspaces = {json.dumps(str(tmp_path))}\n'
        '[kinds.k]\ncommand = ["true"]\n',
    )
    monkeypatch.chdir(tmp_path / "conf")
    config = HiveConfig.from_toml("hive.toml")  # a relative config path, too
    assert config.db == sub / ".." / "data" / "h.db"
    assert config.db.is_absolute()
    assert config.workspaces == tmp_path  # absolute paths are kept


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = HiveConfig.from_toml(
        write(tmp_path, '[hive]\ndb = "~/hive.db"\n[kinds.k]\ncommand = ["true"]\n')
    )
    assert config.db == tmp_path / "home" / "hive.db"


# Each case: a file's text, then the (path, fragments...) of problems it must report.
BAD_FILES = {
    "empty file": ("", [("kinds", "missing section")]),
    "no kinds section": (
        '[hive]\ndb = "h.db"\n',
        [("kinds", "missing section", "[kinds.NAME]")],
    ),
    "empty kinds": ("[kinds]\n", [("kinds", "at least one kind")]),
    "kinds not a table": ('kinds = ["a"]\n', [("kinds", "must be a table", "array")]),
    "kind not a table": (
        '[kinds]\ncommand = ["x"]\n',
        [("kinds.command", "must be a table", "[kinds.command] table")],
    ),
    "kind without command": (
        "[kinds.k]\nconcurrency = 2\n",
        [("kinds.k.command", "missing")],
    ),
    "string command": (
        '[kinds.k]\ncommand = "claude -p {prompt}"\n',
        [("kinds.k.command", "never a shell string", '["claude", "-p", "{prompt}"]')],
    ),
    "unknown placeholder": (
        '[kinds.k]\ncommand = ["x", "--in={nope}"]\n',
        [("kinds.k.command", "unknown placeholder {nope}")],
    ),
    "concurrency 0": (
        '[kinds.k]\ncommand = ["x"]\nconcurrency = 0\n',
        [("kinds.k.concurrency", "must be an int >= 1, got 0")],
    ),
    "wrong types": (
        '[kinds.k]\ncommand = ["x"]\nconcurrency = "4"\ntimeout = true\nmax_attempts = 2.5\n'
        'retry_delay = "1s"\nreview = "yes"\nstdin = 0\n',
        [
            ("kinds.k.concurrency", "got '4'"),
            ("kinds.k.timeout", "got True"),
            ("kinds.k.max_attempts", "got 2.5"),
            ("kinds.k.retry_delay", "got '1s'"),
            ("kinds.k.review", "got 'yes'"),
            ("kinds.k.stdin", "got 0"),
        ],
    ),
    "review true without reviewer": (
        '[kinds.k]\ncommand = ["x"]\nreview = true\n',
        [("kinds.k.review", "no reviewer is configured")],
    ),
    "reserved kind names": (
        '[kinds.plan]\ncommand = ["x"]\n[kinds.review]\ncommand = ["x"]\n[kinds.ok]\ncommand = ["x"]\n',
        [("kinds.plan", "reserved"), ("kinds.review", "reserved")],
    ),
    "unknown top-level key": (
        '[kindz.k]\ncommand = ["x"]\n[kinds.k]\ncommand = ["x"]\n',
        [("kindz", "unknown key", "did you mean 'kinds'?", "known keys: hive, kinds")],
    ),
    "hive key at top level": (
        'db = "h.db"\n[kinds.k]\ncommand = ["x"]\n',
        [("db", "unknown key", "belongs in the [hive] section")],
    ),
    "unknown hive key": (
        '[hive]\ndatabase = "h.db"\n[kinds.k]\ncommand = ["x"]\n',
        [("hive.database", "unknown key", "known keys: db, lease_seconds, workspaces")],
    ),
    "unknown kind key": (
        '[kinds.k]\ncommand = ["x"]\nconcurrancy = 3\n',
        [("kinds.k.concurrancy", "unknown key", "did you mean 'concurrency'?")],
    ),
    "backend in toml": (
        '[kinds.k]\nbackend = "mod:fn"\nloop = "asyncio"\n',
        [
            ("kinds.k.backend", "unknown key", "cannot be given in a TOML file"),
            ("kinds.k.loop", "unknown key", "only applies to a Python backend"),
            ("kinds.k.command", "missing"),
        ],
    ),
    "unknown reviewer key": (
        '[kinds.k]\ncommand = ["x"]\n[reviewer]\ncommand = ["r"]\nargs = ["-v"]\n',
        [("reviewer.args", "unknown key", "known keys: command, concurrency, stdin, timeout")],
    ),
    "reviewer without command": (
        '[kinds.k]\ncommand = ["x"]\n[reviewer]\ntimeout = 5\n',
        [("reviewer.command", "missing")],
    ),
    "reviewer not a table": (
        'reviewer = ["python", "review.py"]\n[kinds.k]\ncommand = ["x"]\n',
        [("reviewer", "must be a table", "[reviewer] section")],
    ),
    "planner with bad values": (
        '[kinds.k]\ncommand = ["x"]\n[planner]\ncommand = "plan.py"\ntimeout = -1\n',
        [("planner.command", "never a shell string"), ("planner.timeout", "> 0")],
    ),
    "hive not a table": ('hive = 3\n[kinds.k]\ncommand = ["x"]\n', [("hive", "must be a table")]),
    "bad hive values": (
        '[hive]\ndb = 3\nworkspaces = ""\nlease_seconds = 0\n[kinds.k]\ncommand = ["x"]\n',
        [
            ("hive.db", "non-empty path string", "integer"),
            ("hive.workspaces", "non-empty path string"),
            ("hive.lease_seconds", "> 0, got 0"),
        ],
    ),
    "bad phases": (
        '[kinds.k]\nphases = [{name = "a", command = ["x"], shell = true}, {command = ["y"]},'
        ' {name = "a", command = "x y"}]\n',
        [
            ("kinds.k.phases[0].shell", "unknown key"),
            ("kinds.k.phases[1]", "missing key 'name'"),
            ("kinds.k.phases[2].command", "never a shell string"),
            ("kinds.k.phases[2].name", "duplicate phase name 'a'"),
        ],
    ),
    "phases and command": (
        '[kinds.k]\ncommand = ["x"]\nphases = [{name = "a", command = ["y"]}]\n',
        [("kinds.k.phases", "cannot be combined with command")],
    ),
    "quoted kind name": (
        '[kinds."my kind"]\ncommand = ["x"]\nconcurrency = 0\n',
        [('kinds."my kind".concurrency', "int >= 1")],
    ),
}


@pytest.mark.parametrize("text, expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files(tmp_path, text, expected):
    error = load_error(tmp_path, text)
    for path, *fragments in expected:
        assert_problem(error, path, *fragments)


def test_every_problem_in_a_file_is_reported_at_once(tmp_path):
    error = load_error(
        tmp_path,
        """
        colour = "blue"
        [hive]
        db = 1
        lease_seconds = -1
        [kinds.a]
        command = "a {prompt}"
        concurrency = 0
        [kinds.b]
        command = ["b", "{nope}"]
        review = true
        [kinds.plan]
        command = ["p"]
        [planner]
        command = []
        """,
    )
    assert [p.split(":", 1)[0] for p in error.problems] == [
        "colour",
        "hive.lease_seconds",
        "hive.db",
        "planner.command",
        "kinds.a.command",
        "kinds.a.concurrency",
        "kinds.b.review",
        "kinds.b.command",
        "kinds.plan",
    ]
    assert f"({len(error.problems)} problems)" in str(error)


@pytest.mark.parametrize(
    "text, where",
    [
        ('[kinds.k]\ncommand = ["x"\nconcurrency = 1\n', "line 3, column 1: unclosed array"),
        ("[kinds.k]\ncommand = \n", "line 2, column 11: invalid value"),
        (
            '[kinds.k]\ncommand = ["x"]\n[kinds.k]\ncommand = ["y"]\n',
            "line 3, column 9: cannot declare",
        ),
        ('[kinds.k]\ncommand = ["x"\n', "the end of the file"),
        ("[kinds.k", "the end of the file: expected ']'"),
    ],
)
def test_bad_toml_names_the_file_line_and_column(tmp_path, text, where):
    error = load_error(tmp_path, text)
    assert len(error.problems) == 1
    assert "invalid TOML at " + where in error.problems[0]


def test_non_utf8_file(tmp_path):
    path = tmp_path / "hive.toml"
    path.write_bytes(b'[kinds.k]\ncommand = ["\xff"]\n')
    with pytest.raises(ConfigError) as excinfo:
        HiveConfig.from_toml(path)
    assert "UTF-8" in str(excinfo.value) and str(path) in str(excinfo.value)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope" / "hive.toml"
    with pytest.raises(ConfigError) as excinfo:
        HiveConfig.from_toml(path)
    assert excinfo.value.problems == [f"{path}: no such configuration file"]
    assert excinfo.value.source == str(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        HiveConfig.from_toml(tmp_path)
    assert "is a directory" in str(excinfo.value)


# --------------------------------------------------------------------------- examples


EXAMPLES = sorted(EXAMPLE_CONFIGS.glob("*.toml"))


def test_the_promised_examples_exist():
    names = {path.stem for path in EXAMPLES}
    assert {"claude-code", "codex", "aider", "pytest-reviewer"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_config_loads(path):
    config = HiveConfig.from_toml(path)
    assert config.served_kinds
    assert config.db == EXAMPLE_CONFIGS / "hive.db"
    for kind in config.kinds.values():
        argvs = [kind.command] if kind.command else [phase.command for phase in kind.phases]
        assert "{prompt}" in " ".join(argvs[0])  # the agent gets the task's prompt


def test_example_agents_use_their_real_flags():
    claude = HiveConfig.from_toml(EXAMPLE_CONFIGS / "claude-code.toml").kinds["code"]
    assert claude.command[:3] == ("claude", "-p", "{prompt}")
    assert "--output-format" in claude.command and claude.stdin == "none"
    codex = HiveConfig.from_toml(EXAMPLE_CONFIGS / "codex.toml").kinds["code"]
    assert codex.command[:2] == ("codex", "exec") and codex.command[-1] == "{prompt}"
    aider = HiveConfig.from_toml(EXAMPLE_CONFIGS / "aider.toml")
    assert aider.kinds["code"].command[-2:] == ("--message", "{prompt}")
    assert [phase.name for phase in aider.kinds["code-tested"].phases] == ["apply", "test"]
    reviewed = HiveConfig.from_toml(EXAMPLE_CONFIGS / "pytest-reviewer.toml")
    assert reviewed.needs_review("code")
    assert "pytest" in reviewed.reviewer.command and reviewed.reviewer.stdin == "none"


# --------------------------------------------------------------------------- properties

toml_scalars = (
    st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(max_size=12)
)
toml_values = toml_scalars | st.lists(toml_scalars, max_size=3)


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(item) for item in value) + "]"
    return repr(value)


@given(
    table=st.dictionaries(
        st.sampled_from(
            [
                "command",
                "concurrency",
                "timeout",
                "max_attempts",
                "retry_delay",
                "review",
                "stdin",
                "phases",
                "loop",
                "colour",
            ]
        ),
        toml_values,
        max_size=6,
    ),
    name=st.sampled_from(["k", "plan", "my kind"]),
)
def test_any_kind_table_loads_or_raises_config_error(tmp_path_factory, table, name):
    body = "".join(f"{key} = {toml_literal(value)}\n" for key, value in table.items())
    path = tmp_path_factory.mktemp("prop") / "hive.toml"
    path.write_text(f"[kinds.{json.dumps(name)}]\n{body}", encoding="utf-8")
    try:
        config = HiveConfig.from_toml(path)
    except ConfigError as error:
        assert error.problems
        assert all(p.startswith(("kinds", str(path))) for p in error.problems), error.problems
    else:
        assert config.served_kinds == (name,)
