"""Hive configuration: :class:`KindConfig`, :class:`RoleConfig`, :class:`HiveConfig`.

Every value class here checks itself completely when it is built and raises one
:class:`ConfigError` listing *every* problem it found, each prefixed by the key path
that holds it (``concurrency: must be an int >= 1, got 0``).  A configuration that
was built is therefore valid: the Hive never re-checks it and never fails later on a
value it could have rejected up front.

:meth:`HiveConfig.from_toml` reads the file described in DESIGN.md ("Configuration
file"), checks its structure (unknown keys at any level, wrong types, missing
sections, bad TOML) and the values (through the same checks as the classes), and
reports everything wrong in one :class:`ConfigError` naming the file, with full key
paths (``kinds.backend.concurrency: ...``).
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import re
import shlex
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from ._templates import template_problems

#: Task kinds the Hive uses for its own roles: ``plan`` tasks go to the Planner and
#: ``review`` is the Reviewer's; neither can be configured as a user kind.
RESERVED_KINDS: frozenset[str] = frozenset({"plan", "review"})
#: Values of ``stdin``: ``"prompt"`` (the prompt's UTF-8 bytes, then EOF) or ``"none"``.
STDIN_MODES: tuple[str, ...] = ("prompt", "none")
#: Values of ``loop``: how a Python backend is run.
LOOPS: tuple[str, ...] = ("trio", "asyncio")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_POSITION = re.compile(r"\s*\(at (line (\d+), column (\d+)|end of document)\)\s*$")


class ConfigError(ValueError):
    """A configuration is invalid; nothing was built.

    ``problems`` lists every problem found (not just the first), each starting with
    the key path it concerns, e.g. ``kinds.backend.concurrency: must be an int >= 1,
    got 0``. ``source`` is the configuration file's path when the configuration was
    loaded from a file (and is then named in the message), else ``None``.
    """

    def __init__(self, problems: Iterable[str], source: str | os.PathLike[str] | None = None):
        self.problems: list[str] = list(problems)
        self.source: str | None = None if source is None else os.fspath(source)
        count = len(self.problems)
        where = f" in {self.source}" if self.source is not None else ""
        head = f"invalid hive configuration{where} ({count} problem{'' if count == 1 else 's'})"
        super().__init__(head + ":" + "".join(f"\n  - {p}" for p in self.problems))


# --------------------------------------------------------------------------- helpers


def _path(prefix: str, *keys: object) -> str:
    """Extend the key path ``prefix`` (already formatted; may be empty) with ``keys``:
    ints become ``[i]``, names that are not bare TOML keys are quoted."""
    out = prefix
    for key in keys:
        if isinstance(key, int):
            out += f"[{key}]"
            continue
        text = str(key)
        if not _BARE_KEY.match(text):
            text = json.dumps(text, ensure_ascii=False)
        out = f"{out}.{text}" if out else text
    return out


def _got(value: object) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"got {text}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_async_callable(obj: object) -> bool:
    """True when calling ``obj`` returns a coroutine: an ``async def`` function (also
    through ``functools.partial`` or as a bound method), or an object whose
    ``__call__`` is one."""
    if inspect.iscoroutinefunction(obj):
        return True
    if inspect.isroutine(obj) or not callable(obj):
        return False
    return inspect.iscoroutinefunction(type(obj).__call__)


def _argv_problems(path: str, argv: object) -> list[str]:
    problems = template_problems(argv)
    if isinstance(argv, str) and problems:
        try:
            hint = json.dumps(shlex.split(argv), ensure_ascii=False)
        except ValueError:
            hint = None
        if hint is not None:
            problems = [f"{problems[0]}; write it as {hint}"]
    return [f"{path}: {p}" for p in problems]


def _to_argv(value: object) -> object:
    """A list/tuple becomes a tuple (frozen); anything else stays for the checks."""
    if isinstance(value, list | tuple):
        return tuple(value)
    return value


def _positive_int_problems(path: str, value: object) -> list[str]:
    if _is_int(value) and value >= 1:
        return []
    return [f"{path}: must be an int >= 1, {_got(value)}"]


def _timeout_problems(path: str, value: object) -> list[str]:
    if value is None or (_is_number(value) and value > 0):
        return []
    return [f"{path}: must be None or a number of seconds > 0, {_got(value)}"]


def _choice_problems(path: str, value: object, choices: Sequence[str]) -> list[str]:
    if isinstance(value, str) and value in choices:
        return []
    return [f"{path}: must be one of {', '.join(map(repr, choices))}, {_got(value)}"]


def _runner_problems(prefix: str, backend: object, command: object, loop: object) -> list[str]:
    """Checks shared by kinds and roles for ``backend``, ``command`` and ``loop``."""
    problems = []
    if backend is not None and not is_async_callable(backend):
        problems.append(
            f"{_path(prefix, 'backend')}: must be an async callable (an `async def` "
            f"function, or an object whose __call__ is one), {_got(backend)}"
        )
    if command is not None:
        problems += _argv_problems(_path(prefix, "command"), command)
    problems += _choice_problems(_path(prefix, "loop"), loop, LOOPS)
    if loop == "asyncio" and backend is None:
        problems.append(
            f"{_path(prefix, 'loop')}: 'asyncio' only applies to a Python backend; "
            "a command runs as a subprocess"
        )
    return problems


# --------------------------------------------------------------------------- Phase


class _PhaseFields(NamedTuple):
    name: str
    command: tuple[str, ...]


class Phase(_PhaseFields):
    """One named step of a kind's ``phases``: an argv template run in the task's
    workspace. An immutable ``(name, command)`` pair (a named tuple, so it unpacks
    and compares like one). Checked on construction: ``name`` is a non-empty string
    and ``command`` a valid argv template, stored as a tuple."""

    __slots__ = ()

    def __new__(cls, name: str, command: Sequence[str]) -> Phase:
        command = _to_argv(command)
        problems = _phase_problems("", name, command)
        if problems:
            raise ConfigError(problems)
        return super().__new__(cls, name, command)


def _phase_problems(prefix: str, name: object, command: object) -> list[str]:
    problems = []
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{_path(prefix, 'name')}: must be a non-empty string, {_got(name)}")
    problems += _argv_problems(_path(prefix, "command"), command)
    return problems


def _to_phase(item: object) -> object:
    """Phase, ``(name, argv)`` pair or ``{"name", "command"}`` mapping → Phase; an item
    that cannot become a valid Phase is kept as it is, for the checks to report."""
    if isinstance(item, Phase):
        return item
    if isinstance(item, Mapping) and set(item) == {"name", "command"}:
        name, command = item["name"], item["command"]
    elif isinstance(item, list | tuple) and len(item) == 2:
        name, command = item
    else:
        return item
    if _phase_problems("", name, command):
        return item
    return Phase(name, command)


def _to_phases(value: object) -> object:
    if isinstance(value, list | tuple):
        return tuple(_to_phase(item) for item in value)
    return value


def _phases_problems(value: object) -> list[str]:
    if not isinstance(value, tuple):
        return [f"phases: must be a list of phases (name and argv each), {_got(value)}"]
    if not value:
        return ["phases: must not be empty"]
    problems = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = _path("phases", index)
        if isinstance(item, Phase):
            name = item.name
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"name", "command"}, key=str)
            for key in unknown:
                problems.append(f"{_path(where, str(key))}: unknown key; known keys: command, name")
            for key in ("name", "command"):
                if key not in item:
                    problems.append(f"{where}: missing key {key!r}")
            if not unknown and set(item) == {"name", "command"}:
                problems += _phase_problems(where, item["name"], item["command"])
            name = item.get("name")
        elif isinstance(item, list | tuple) and len(item) == 2:
            problems += _phase_problems(where, item[0], item[1])
            name = item[0]
        else:
            problems.append(
                f"{where}: must be a Phase, a (name, argv) pair or a table with "
                f"name and command, {_got(item)}"
            )
            continue
        if isinstance(name, str):
            if name in seen:
                problems.append(f"{_path(where, 'name')}: duplicate phase name {name!r}")
            seen.add(name)
    return problems


# --------------------------------------------------------------------------- KindConfig


@attrs.frozen
class KindConfig:
    """How the tasks of one kind are run. Checked completely on construction.

    Exactly one of ``backend`` (an async callable taking the ``Task`` and returning a
    JSON-able result; with ``loop="asyncio"`` an asyncio coroutine function run under
    trio-asyncio), ``command`` (an argv template, stored as a tuple) or ``phases``
    (ordered :class:`Phase` steps run one after another in the same workspace, in one
    attempt; given as Phases, ``(name, argv)`` pairs or ``{"name", "command"}``
    tables, stored as a tuple of Phases) is set.

    ``concurrency`` workers run this kind at once; ``timeout`` (seconds, None for none)
    bounds one attempt (all phases together); ``max_attempts`` bounds work plus
    rework; retries back off from ``retry_delay`` seconds. ``review``: ``None`` means
    "reviewed when a reviewer is configured", ``True`` requires one (checked by
    :class:`HiveConfig`), ``False`` skips review. ``stdin``: ``"prompt"`` sends the
    prompt's bytes then EOF, ``"none"`` sends nothing (for commands).
    """

    backend: Callable[..., Any] | None = None
    command: tuple[str, ...] | None = attrs.field(default=None, converter=_to_argv)
    concurrency: int = 1
    timeout: float | None = None
    max_attempts: int = 3
    retry_delay: float = 1.0
    review: bool | None = None
    loop: str = "trio"
    phases: tuple[Phase, ...] | None = attrs.field(default=None, converter=_to_phases)
    stdin: str = "prompt"

    def __attrs_post_init__(self) -> None:
        problems = _kind_problems(self)
        if problems:
            raise ConfigError(problems)


def _kind_problems(kind: KindConfig) -> list[str]:
    problems = []
    given = [name for name in ("backend", "command", "phases") if getattr(kind, name) is not None]
    if not given:
        problems.append("command: missing; give exactly one of backend, command or phases")
    for extra in given[1:]:
        problems.append(
            f"{extra}: cannot be combined with {given[0]}; give exactly one of backend, "
            "command or phases"
        )
    problems += _runner_problems("", kind.backend, kind.command, kind.loop)
    if kind.phases is not None:
        problems += _phases_problems(kind.phases)
    problems += _positive_int_problems("concurrency", kind.concurrency)
    problems += _timeout_problems("timeout", kind.timeout)
    problems += _positive_int_problems("max_attempts", kind.max_attempts)
    if not (_is_number(kind.retry_delay) and kind.retry_delay >= 0):
        problems.append(f"retry_delay: must be a number of seconds >= 0, {_got(kind.retry_delay)}")
    if kind.review is not None and not isinstance(kind.review, bool):
        problems.append(f"review: must be True, False or None, {_got(kind.review)}")
    problems += _choice_problems("stdin", kind.stdin, STDIN_MODES)
    return problems


# --------------------------------------------------------------------------- RoleConfig


@attrs.frozen
class RoleConfig:
    """How the Reviewer or the Planner runs its agent. Checked on construction.

    Exactly one of ``backend`` (an async callable taking the ``Task``) or ``command``
    (an argv template, stored as a tuple). ``timeout``, ``stdin``, ``loop`` mean what
    they mean for :class:`KindConfig`; ``concurrency`` is how many tasks the role
    handles at once. :class:`HiveConfig` turns a bare async callable or argv list
    given as ``reviewer``/``planner`` into a ``RoleConfig``.
    """

    backend: Callable[..., Any] | None = None
    command: tuple[str, ...] | None = attrs.field(default=None, converter=_to_argv)
    timeout: float | None = None
    stdin: str = "prompt"
    loop: str = "trio"
    concurrency: int = 1

    def __attrs_post_init__(self) -> None:
        problems = _role_problems("", self)
        if problems:
            raise ConfigError(problems)


def _role_problems(prefix: str, role: RoleConfig) -> list[str]:
    problems = []
    if role.backend is None and role.command is None:
        problems.append(
            f"{_path(prefix, 'command')}: missing; give exactly one of backend or command"
        )
    elif role.backend is not None and role.command is not None:
        problems.append(
            f"{_path(prefix, 'command')}: cannot be combined with backend; give exactly one "
            "of backend or command"
        )
    problems += _runner_problems(prefix, role.backend, role.command, role.loop)
    problems += _timeout_problems(_path(prefix, "timeout"), role.timeout)
    problems += _choice_problems(_path(prefix, "stdin"), role.stdin, STDIN_MODES)
    problems += _positive_int_problems(_path(prefix, "concurrency"), role.concurrency)
    return problems


def _to_role(value: object) -> object:
    """None / RoleConfig pass; an argv list or async callable becomes a RoleConfig;
    anything that cannot is kept as it is, for the checks to report."""
    if value is None or isinstance(value, RoleConfig):
        return value
    if isinstance(value, list | tuple):
        if template_problems(value):
            return value
        return RoleConfig(command=value)
    if is_async_callable(value):
        return RoleConfig(backend=value)
    return value


def _raw_role_problems(name: str, value: object) -> list[str]:
    if value is None or isinstance(value, RoleConfig):
        return []
    if isinstance(value, str | list | tuple):
        return _argv_problems(name, value)
    return [f"{name}: must be an async callable, an argv list or a RoleConfig, {_got(value)}"]


# --------------------------------------------------------------------------- HiveConfig


def _to_kinds(value: object) -> object:
    if isinstance(value, Mapping):
        return types.MappingProxyType(dict(value))
    return value


def _to_path(value: object) -> object:
    if isinstance(value, str | os.PathLike) and os.fspath(value) != "":
        return Path(value)
    return value


def _kind_name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return f"kinds: kind names must be non-empty strings, {_got(name)}"
    if name in RESERVED_KINDS:
        return (
            f"{_path('kinds', name)}: the kind name {name!r} is reserved for the hive's own "
            f"{'Planner' if name == 'plan' else 'Reviewer'}; choose another name "
            f"(reserved: {', '.join(sorted(RESERVED_KINDS))})"
        )
    return None


def _review_problem(name: str) -> str:
    return (
        f"{_path('kinds', name, 'review')}: is true but no reviewer is configured "
        "(configure a reviewer, or set review to false)"
    )


def _path_problems(name: str, value: object) -> list[str]:
    if value is None or isinstance(value, Path):
        return []
    return [f"{name}: must be a non-empty path string, {_got(value)}"]


def _lease_problems(path: str, value: object) -> list[str]:
    if _is_number(value) and value > 0:
        return []
    return [f"{path}: must be a number of seconds > 0, {_got(value)}"]


@attrs.frozen
class HiveConfig:
    """Everything a hive needs to run: its kinds and roles. Checked on construction.

    ``kinds`` maps user kind names to :class:`KindConfig` (stored as a read-only
    copy); it must not be empty and must not use the reserved names ``plan`` and
    ``review``. ``reviewer`` / ``planner`` are ``None``, an async callable, an argv
    list or a :class:`RoleConfig`, and are stored as a ``RoleConfig``. A kind with
    ``review=True`` requires a reviewer. ``lease_seconds`` is the lease a worker holds
    (heartbeating at a third of it). ``workspaces`` (one directory per task below it)
    and ``db`` (the database :func:`open_hive` uses when given ``None``) are stored as
    :class:`pathlib.Path`; relative paths are taken as they are here, and against the
    file's directory by :meth:`from_toml`.
    """

    kinds: Mapping[str, KindConfig] = attrs.field(converter=_to_kinds)
    reviewer: RoleConfig | None = attrs.field(default=None, converter=_to_role)
    planner: RoleConfig | None = attrs.field(default=None, converter=_to_role)
    lease_seconds: float = 30
    workspaces: Path | None = attrs.field(default=None, converter=_to_path)
    db: Path | None = attrs.field(default=None, converter=_to_path)

    def __attrs_post_init__(self) -> None:
        problems = []
        if not isinstance(self.kinds, Mapping):
            problems.append(
                f"kinds: must be a mapping of kind name to KindConfig, {_got(self.kinds)}"
            )
        elif not self.kinds:
            problems.append("kinds: at least one kind must be configured")
        else:
            for name, kind in self.kinds.items():
                problem = _kind_name_problem(name)
                if problem:
                    problems.append(problem)
                    continue
                if not isinstance(kind, KindConfig):
                    problems.append(f"{_path('kinds', name)}: must be a KindConfig, {_got(kind)}")
                elif kind.review is True and self.reviewer is None:
                    problems.append(_review_problem(name))
        problems += _raw_role_problems("reviewer", self.reviewer)
        problems += _raw_role_problems("planner", self.planner)
        problems += _lease_problems("lease_seconds", self.lease_seconds)
        problems += _path_problems("workspaces", self.workspaces)
        problems += _path_problems("db", self.db)
        if problems:
            raise ConfigError(problems)

    @property
    def served_kinds(self) -> tuple[str, ...]:
        """The user kinds this configuration serves, in the order they were given
        (never the reserved ``plan`` / ``review``)."""
        return tuple(self.kinds)

    def needs_review(self, kind: str) -> bool:
        """Whether a finished task of ``kind`` goes to the Reviewer: the kind's
        ``review`` if set, else whether a reviewer is configured. Raises ``KeyError``
        for a kind this configuration does not serve."""
        review = self.kinds[kind].review
        return self.reviewer is not None if review is None else review

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> HiveConfig:
        """Load and check a configuration file (format: DESIGN.md, "Configuration
        file").

        Returns a valid ``HiveConfig`` or raises one :class:`ConfigError` naming the
        file and listing every problem with its key path: a missing or unreadable
        file, bad TOML (with line and column), unknown keys at any level (with the
        known keys), wrong types, a missing ``[kinds]`` section or an empty one,
        reserved kind names, invalid argv templates and values. ``[hive] db`` and
        ``workspaces`` (``~`` expanded) are resolved against the file's directory.
        """
        return _load_toml(Path(path))


# --------------------------------------------------------------------------- TOML loader

_TOP_KEYS = ("hive", "kinds", "reviewer", "planner")
_HIVE_KEYS = ("db", "lease_seconds", "workspaces")
_KIND_KEYS = (
    "command",
    "phases",
    "concurrency",
    "timeout",
    "max_attempts",
    "retry_delay",
    "review",
    "stdin",
)
_ROLE_KEYS = ("command", "timeout", "stdin", "concurrency")
_PYTHON_ONLY = {
    "backend": "a Python backend cannot be given in a TOML file; use command = [...] "
    "here, or build the configuration in Python",
    "loop": "loop only applies to a Python backend, which a TOML file cannot give",
}


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return "date/time"


def _unknown_keys(
    prefix: str, table: Mapping[str, Any], known: Sequence[str], *, runner: bool = False
) -> list[str]:
    """One problem per key of ``table`` not in ``known``, with a hint."""
    problems = []
    for key in table:
        if key in known:
            continue
        where = _path(prefix, key)
        if runner and key in _PYTHON_ONLY:
            hint = _PYTHON_ONLY[key]
        elif not prefix and key in _HIVE_KEYS:
            hint = f"{key} belongs in the [hive] section"
        else:
            close = difflib.get_close_matches(key, known, n=1)
            hint = (f"did you mean {close[0]!r}? " if close else "") + (
                f"known keys: {', '.join(sorted(known))}"
            )
        problems.append(f"{where}: unknown key; {hint}")
    return problems


def _table(where: str, value: object, problems: list[str], hint: str = "") -> dict | None:
    if isinstance(value, dict):
        return value
    problems.append(f"{where}: must be a table, got a {_toml_type(value)} {value!r}{hint}")
    return None


def _resolve(base: Path, where: str, value: object, problems: list[str]) -> Path | None:
    if not isinstance(value, str) or not value:
        problems.append(
            f"{where}: must be a non-empty path string, got a {_toml_type(value)} {value!r}"
        )
        return None
    resolved = Path(value).expanduser()
    return resolved if resolved.is_absolute() else base / resolved


def _read_toml(path: Path) -> dict[str, Any]:
    source = os.fspath(path)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        problem = "no such configuration file"
    except IsADirectoryError:
        problem = "is a directory, not a configuration file"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    except UnicodeDecodeError as exc:
        problem = f"not valid UTF-8 (at byte {exc.start}); a TOML file is UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = _TOML_POSITION.search(message)
        where = "an unknown position"
        if match:
            message = message[: match.start()]
            where = (
                f"line {match.group(2)}, column {match.group(3)}"
                if match.group(2)
                else "the end of the file"
            )
        problem = f"invalid TOML at {where}: {message[:1].lower()}{message[1:]}"
    raise ConfigError([f"{source}: {problem}"], source)


def _load_toml(path: Path) -> HiveConfig:
    source = os.fspath(path)
    document = _read_toml(path)
    base = path.absolute().parent
    problems: list[str] = _unknown_keys("", document, _TOP_KEYS)
    arguments: dict[str, Any] = {}

    hive = _table("hive", document["hive"], problems) if "hive" in document else {}
    if hive is not None:
        problems += _unknown_keys("hive", hive, _HIVE_KEYS)
        if "lease_seconds" in hive:
            problems += _lease_problems("hive.lease_seconds", hive["lease_seconds"])
            arguments["lease_seconds"] = hive["lease_seconds"]
        for key in ("db", "workspaces"):
            if key in hive:
                arguments[key] = _resolve(base, f"hive.{key}", hive[key], problems)

    for role in ("reviewer", "planner"):
        if role not in document:
            continue
        table = _table(role, document[role], problems, f" (a [{role}] section)")
        if table is None:
            continue
        problems += _unknown_keys(role, table, _ROLE_KEYS, runner=True)
        try:
            arguments[role] = RoleConfig(**{k: v for k, v in table.items() if k in _ROLE_KEYS})
        except ConfigError as exc:
            problems += [f"{role}.{p}" for p in exc.problems]

    kinds: dict[str, KindConfig] = {}
    if "kinds" not in document:
        problems.append(
            "kinds: missing section; add at least one [kinds.NAME] table with command = [...]"
        )
    else:
        table = _table("kinds", document["kinds"], problems)
        if table is not None and not table:
            problems.append("kinds: at least one kind must be configured ([kinds.NAME])")
        for name, value in (table or {}).items():
            where = _path("kinds", name)
            name_problem = _kind_name_problem(name)
            if name_problem:
                problems.append(name_problem)
                continue
            kind_table = _table(where, value, problems, f" (each kind is a [kinds.{name}] table)")
            if kind_table is None:
                continue
            problems += _unknown_keys(where, kind_table, _KIND_KEYS, runner=True)
            if kind_table.get("review") is True and "reviewer" not in document:
                problems.append(_review_problem(name))
            try:
                kinds[name] = KindConfig(**{k: v for k, v in kind_table.items() if k in _KIND_KEYS})
            except ConfigError as exc:
                problems += [f"{where}.{p}" for p in exc.problems]

    if problems:
        raise ConfigError(problems, source)
    try:
        return HiveConfig(kinds=kinds, **arguments)
    except ConfigError as exc:  # the checks above report everything HiveConfig checks
        raise ConfigError(exc.problems, source) from None
