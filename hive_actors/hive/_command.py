"""Run a command-line agent for one attempt, as a subprocess, without ever blocking trio.

Every agent process is started from **one long-lived thread** owned by an
:class:`AgentLauncher`.  That is not a detail: on Linux the agent gets
``PR_SET_PDEATHSIG=SIGKILL`` so that it dies with the hive, and that death signal
follows the parent *thread*.  ``trio.open_process``/``trio.to_thread`` start children
from trio's cached worker threads, which exit after a few idle seconds and would take a
healthy agent with them.  The signal is armed in the child before the agent's program
runs, by util-linux ``setpriv --pdeathsig`` and a constant ``/bin/sh`` check that the
hive is still its parent (so an agent never starts orphaned); where ``setpriv`` is
missing, by a ``preexec_fn`` (a full fork, several times slower).

Each agent runs in its own session and process group (its pgid is its pid), with
``close_fds``, its workspace as cwd, the argv rendered from a template (never a
shell), the prompt's exact UTF-8 bytes on stdin (or ``/dev/null``), and the task in its
environment.  Its stdout and stderr are drained continuously and concurrently into
``<workspace>/attempt-N.log`` while only bounded tails are kept in memory.  When it
exits, times out or the caller is cancelled, the whole process group is killed and the
leader is reaped, so neither grandchildren nor zombies outlive the attempt.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs
import outcome
import trio

from ._templates import render_argv, template_problems

__all__ = [
    "DEFAULT_STDOUT_LIMIT",
    "OUTPUT_TAIL_LIMIT",
    "AgentLauncher",
    "CommandResult",
    "kill_process_groups",
]

logger = logging.getLogger(__name__)

#: How many bytes of stdout :attr:`CommandResult.stdout` keeps by default (the last ones).
DEFAULT_STDOUT_LIMIT = 8 * 1024 * 1024
#: The most UTF-8 bytes :attr:`CommandResult.output_tail` holds (stdout and stderr).
OUTPUT_TAIL_LIMIT = 64 * 1024
#: The most UTF-8 bytes of stdout put in the fallback result ``{"exit_code", "stdout"}``.
RESULT_STDOUT_TAIL = 4 * 1024
#: Default seconds between SIGTERM and SIGKILL when an agent is stopped.
DEFAULT_KILL_GRACE = 0.5

_READ_SIZE = 64 * 1024
_LOG_BUFFER = 1024 * 1024
# After the agent's leader has exited and its group was killed, how long the pipes may
# take to reach EOF (only a process that left the group can hold them open longer).
_DRAIN_GRACE = 2.0
# Upper bound on the shielded cleanup after a cancellation or an error.
_CLEANUP_BUDGET = 5.0

_PR_SET_PDEATHSIG = 1
# Largest HIVE_TASK_JSON put in the environment (the kernel's limit per string is 128 KiB).
_ENV_JSON_LIMIT = 100 * 1024
# Fields dropped from an oversized HIVE_TASK_JSON, biggest suspects first.
_OMITTABLE = ("prompt", "result", "metadata", "feedback", "error", "title")
_STOP = object()

#: The task fields that are scheduling internals and are left out of ``HIVE_TASK_JSON``.
_TASK_JSON_EXCLUDED = frozenset({"fencing_token", "lease_owner", "lease_expires_at", "not_before"})


@attrs.frozen
class CommandResult:
    """What one agent run (or one attempt of phases) produced.

    - ``argv``: the rendered argv that ran (for phases: the last phase that ran).
    - ``exit_code``: the exit status as :class:`subprocess.Popen` reports it (negative
      for a signal); ``None`` when the hive killed the agent (timeout) or it could not
      be reaped. ``126``/``127`` when the program could not be started (see ``error``).
    - ``result``: the JSON object on the last non-empty stdout line if that line parses
      to a ``dict``; otherwise ``{"exit_code": exit_code, "stdout": <last 4 KiB of
      stdout>}``.
    - ``stdout``: stdout decoded as UTF-8 (``errors="replace"``), holding only the
      *last* ``stdout_limit`` bytes; ``stdout_truncated`` tells whether earlier bytes
      were dropped (they are still in the log file).
    - ``output_tail``: the end of stdout and stderr interleaved as read, at most
      :data:`OUTPUT_TAIL_LIMIT` bytes once encoded as UTF-8 (for the runs table).
    - ``duration``: wall-clock seconds from spawn to reap (all phases for phases).
    - ``timed_out``: the timeout expired and the hive killed the process group.
    - ``pgid``: the agent's process group id (``None`` if it never started).
    - ``log_path``: the file that received every byte of output.
    - ``phase``: for :meth:`AgentLauncher.run_phases`, the name of the phase that
      failed, or of the last one when all succeeded; ``None`` for a single run.
    - ``error``: one line saying why the run is not :attr:`ok` (``None`` when it is).
    """

    argv: tuple[str, ...]
    exit_code: int | None
    result: Any
    stdout: str
    stdout_truncated: bool
    output_tail: str
    duration: float
    timed_out: bool
    pgid: int | None
    log_path: Path
    phase: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the agent exited with status 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out


def kill_process_groups(pgids: Iterable[int]) -> list[int]:
    """Send SIGKILL to each process group in ``pgids`` that still exists.

    Returns the pgids that were signalled. Never raises for a group that is gone
    (``ProcessLookupError``) or belongs to someone else (``PermissionError``: skipped,
    and logged as a warning). Refuses ids that would hit more than one agent: ``<= 1``
    and this process's own group are skipped.
    """
    killed: list[int] = []
    own = os.getpgrp()
    for pgid in pgids:
        if not isinstance(pgid, int) or pgid <= 1 or pgid == own:
            logger.warning("not killing process group %r: not an agent's group", pgid)
            continue
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            logger.warning("not allowed to kill process group %d; skipped", pgid)
            continue
        killed.append(pgid)
    return killed


# --------------------------------------------------------------------------- helpers


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _task_fields(task: Any) -> dict[str, Any]:
    if attrs.has(type(task)):
        fields = attrs.asdict(task)
    elif isinstance(task, Mapping):
        fields = dict(task)
    else:
        raise TypeError(f"task must be an attrs instance (a store Task), got {task!r}")
    return {k: v for k, v in fields.items() if k not in _TASK_JSON_EXCLUDED}


def _task_json(task: Any) -> tuple[str, str | None]:
    """``(HIVE_TASK_JSON value, full JSON to write to a file or None)``.

    Linux refuses an environment string over 128 KiB (``E2BIG``), so when the task's
    JSON is bigger than :data:`_ENV_JSON_LIMIT` its largest text fields are replaced by
    ``null`` (listed under ``"omitted"``) and the full JSON goes to a file instead.
    """
    fields = _task_fields(task)
    full = json.dumps(fields, ensure_ascii=False, default=str)
    if len(full.encode("utf-8", errors="replace")) <= _ENV_JSON_LIMIT:
        return full, None
    short = dict(fields)
    omitted: list[str] = []
    for name in _OMITTABLE:
        if name in short and short[name] is not None:
            short[name] = None
            omitted.append(name)
            short["omitted"] = omitted
            text = json.dumps(short, ensure_ascii=False, default=str)
            if len(text.encode("utf-8", errors="replace")) <= _ENV_JSON_LIMIT:
                return text, full
    return json.dumps({"id": fields.get("id"), "omitted": ["*"]}), full


def _text_tail(data: bytes, limit: int) -> str:
    """``data`` decoded leniently, cut so that its UTF-8 encoding is at most ``limit``."""
    text = data[-limit:].decode("utf-8", errors="replace")
    encoded = text.encode("utf-8", errors="surrogatepass")
    if len(encoded) > limit:
        text = encoded[-limit:].decode("utf-8", errors="ignore")
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_result(stdout: str, exit_code: int | None) -> Any:
    text = stdout.rstrip()
    last = text[text.rfind("\n") + 1 :].strip()
    if last.startswith("{"):
        try:
            value = json.loads(last, parse_constant=_reject_constant)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    return {
        "exit_code": exit_code,
        "stdout": _text_tail(stdout.encode("utf-8", errors="replace"), RESULT_STDOUT_TAIL),
    }


class _Tail:
    """The last ``limit`` bytes appended, in amortised O(1) per byte."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buf += chunk
        if len(self._buf) > 2 * self.limit + _READ_SIZE:
            del self._buf[: len(self._buf) - self.limit]

    def value(self) -> bytes:
        return bytes(self._buf[-self.limit :]) if self.limit else b""

    @property
    def truncated(self) -> bool:
        return self.total > self.limit


class _Log:
    """The attempt's log file: buffered appends that never raise (a full disk must not
    fail the agent; the first error is remembered and logged)."""

    def __init__(self, file: IO[bytes] | None, path: Path) -> None:
        self.file = file
        self.path = path
        self.error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.file is None:
            return
        try:
            self.file.write(data)
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        logger.warning("cannot write agent log %s: %s", self.path, exc)
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass

    def close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                self.error = exc
                logger.warning("cannot write agent log %s: %s", self.path, exc)


@attrs.define
class _SpawnRequest:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    stdin: Literal["prompt", "none"]
    log_path: Path
    header: bytes
    task_file: tuple[Path, str] | None = None


@attrs.define(eq=False)
class _Proc:
    """A started agent, as handed back by the launcher thread."""

    popen: subprocess.Popen[bytes] | None
    log: _Log
    stdin_fd: int | None = None
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    pidfd: int | None = None
    spawn_error: str | None = None
    spawn_exit_code: int | None = None
    exited: bool = False

    def close_fds(self) -> None:
        for name in ("stdin_fd", "stdout_fd", "stderr_fd", "pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` setting PR_SET_PDEATHSIG=SIGKILL, or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        logger.warning("prctl unavailable: agents will not die with the hive")
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the hive died before the death signal was armed
            os._exit(1)

    return preexec


# Run before the agent by ``setpriv --pdeathsig KILL``: it exits if the hive died before
# the death signal was armed (the agent would be an orphan), else becomes the agent.
# ``$0`` is the hive's pid, ``"$@"`` the agent's argv (data, never parsed as shell).
_PARENT_CHECK = 'test "$PPID" = "$0" || exit 1; exec "$@"'


def _pdeathsig_prefix() -> list[str] | None:
    """An argv prefix that starts a program with PR_SET_PDEATHSIG=SIGKILL armed, via
    util-linux's ``setpriv`` and a constant ``/bin/sh`` check; None if unusable here.

    With it, agents start by vfork/exec, which is several times cheaper than a fork
    running a ``preexec_fn`` (that fork copies the hive's page tables and holds the
    GIL), and the spawn stops competing with the trio thread for the GIL.
    """
    pid = os.getpid()
    if pid not in _PREFIXES:  # checked once per process
        _PREFIXES[pid] = _probe_pdeathsig_prefix(pid)
    prefix = _PREFIXES[pid]
    return None if prefix is None else list(prefix)


_PREFIXES: dict[int, list[str] | None] = {}


def _probe_pdeathsig_prefix(pid: int) -> list[str] | None:
    if not sys.platform.startswith("linux"):
        return None
    setpriv, sh = shutil.which("setpriv"), "/bin/sh"
    if setpriv is None or not os.access(sh, os.X_OK):
        return None
    prefix = [setpriv, "--pdeathsig", "KILL", "--", sh, "-c", _PARENT_CHECK, str(pid)]
    probe = [*prefix, sys.executable, "-S", "-c", _PRINT_PDEATHSIG]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or done.stdout.strip() != str(int(signal.SIGKILL)).encode():
        logger.debug("setpriv --pdeathsig unusable (%r); agents start with a preexec_fn", done)
        return None
    return prefix


# Prints the calling process's death signal (PR_GET_PDEATHSIG), to check the prefix.
_PRINT_PDEATHSIG = (
    "import ctypes; v = ctypes.c_int(0); "
    "ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)"
)


def _resolve_program(argv0: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The absolute path of the file ``execvp`` would run for ``argv0`` from ``cwd``
    with ``env``'s PATH (relative and empty entries count from ``cwd``, as for a direct
    spawn); raises ``FileNotFoundError`` or ``PermissionError`` as that spawn would (the
    wrapper would otherwise report them only on the agent's stderr)."""
    if "\x00" in argv0:
        raise ValueError("embedded null byte")
    if not argv0:
        raise PermissionError(13, "Permission denied", argv0)
    if "/" in argv0:
        candidates = [os.path.join(cwd, argv0)]
    else:
        candidates = [os.path.join(cwd, entry or ".", argv0) for entry in os.get_exec_path(env)]
    denied = False
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        denied = denied or os.path.exists(path)  # a directory or a file without x
    if denied:
        raise PermissionError(13, "Permission denied", argv0)
    raise FileNotFoundError(2, "No such file or directory", argv0)


# Environment names a POSIX shell passes on to the programs it starts (it drops others).
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _through_shell_keeps(env: Mapping[str, str]) -> bool:
    """Whether the ``/bin/sh`` check would pass ``env`` on unchanged (bar ``PWD``)."""
    return all(_SHELL_NAME.match(name) for name in env) and "PPID" not in env


def _spawn_blocking(req: _SpawnRequest, preexec: Callable[[], None] | None,
                    prefix: list[str] | None = None) -> _Proc:
    """Runs in the launcher thread: workspace, log, pipes, Popen, pidfd. With
    ``prefix`` (see :func:`_pdeathsig_prefix`) the agent is started through it, without
    ``preexec``, unless its environment has names the shell would not pass on."""
    try:
        req.cwd.mkdir(parents=True, exist_ok=True)
        file = open(req.log_path, "ab", buffering=_LOG_BUFFER)  # closed by _Log
    except OSError as exc:
        log = _Log(None, req.log_path)
        return _Proc(None, log, spawn_error=f"cannot prepare workspace: {exc}", spawn_exit_code=126)
    log = _Log(file, req.log_path)
    if req.header:
        log.write(req.header)
    if req.task_file is not None:
        path, text = req.task_file
        try:
            path.write_text(text, encoding="utf-8", errors="replace")
        except OSError as exc:
            log.close()
            return _Proc(None, log, spawn_error=f"cannot write {path}: {exc}", spawn_exit_code=126)
    child_fds: list[int] = []
    proc = _Proc(None, log)
    try:
        if req.stdin == "prompt":
            child_in, proc.stdin_fd = os.pipe()
            child_fds.append(child_in)
        else:
            child_in = subprocess.DEVNULL
        proc.stdout_fd, child_out = os.pipe()
        child_fds.append(child_out)
        proc.stderr_fd, child_err = os.pipe()
        child_fds.append(child_err)
        try:
            argv = req.argv
            if prefix is not None and _through_shell_keeps(req.env):
                argv = [*prefix, _resolve_program(argv[0], req.cwd, req.env), *argv[1:]]
                preexec = None
            proc.popen = subprocess.Popen(
                argv,
                stdin=child_in,
                stdout=child_out,
                stderr=child_err,
                cwd=req.cwd,
                env=req.env,
                close_fds=True,
                start_new_session=True,
                preexec_fn=preexec,
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            proc.spawn_error = f"cannot start {req.argv[0]!r}: {exc}"
            proc.spawn_exit_code = code
            log.write(f"hive: {proc.spawn_error}\n".encode("utf-8", errors="replace"))
            proc.close_fds()
            return proc
        try:
            proc.pidfd = os.pidfd_open(proc.popen.pid)
        except (AttributeError, OSError):
            proc.pidfd = None  # old kernel or not Linux: exit is polled instead
        return proc
    except BaseException:
        # Unexpected (a bug, MemoryError): leave no process, fd or open log behind.
        if proc.popen is not None:
            _signal_group(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
        proc.close_fds()
        log.close()
        raise
    finally:
        for fd in child_fds:
            os.close(fd)


def _exited_nowait(proc: _Proc) -> bool:
    """True once the agent's leader has exited, without reaping it when possible (so its
    pid, and thus its pgid, cannot be reused before the group is killed)."""
    if proc.exited:
        return True
    assert proc.popen is not None
    if hasattr(os, "waitid"):
        try:
            info = os.waitid(os.P_PID, proc.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = True  # already reaped
        proc.exited = info is not None
    else:
        proc.exited = proc.popen.poll() is not None
    return proc.exited


async def _wait_exited(proc: _Proc) -> None:
    if proc.exited:
        await trio.lowlevel.checkpoint()
        return
    if proc.pidfd is not None:
        await trio.lowlevel.wait_readable(proc.pidfd)
        proc.exited = True
        return
    delay = 0.002
    while not _exited_nowait(proc):
        await trio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _terminate(proc: _Proc, pgid: int, grace: float) -> None:
    """SIGTERM the group, give the leader ``grace`` seconds, then SIGKILL the group and
    wait for the leader to exit."""
    if not _exited_nowait(proc):
        _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(grace):
            await _wait_exited(proc)
    _signal_group(pgid, signal.SIGKILL)
    await _wait_exited(proc)


async def _drain(fd: int, capture: _Capture, is_stdout: bool) -> None:
    stream = trio.lowlevel.FdStream(fd)
    try:
        while True:
            try:
                chunk = await stream.receive_some(_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not chunk:
                return
            capture.add(chunk, is_stdout)
    finally:
        stream.close()


async def _feed(fd: int, data: bytes) -> None:
    stream = trio.lowlevel.FdStream(fd)
    try:
        if data:
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the agent closed stdin or exited without reading it: that is fine
    finally:
        stream.close()


class _Capture:
    """Everything read from one agent: to the log, and bounded tails in memory."""

    def __init__(self, log: _Log, stdout_limit: int, combined: _Tail) -> None:
        self.log = log
        self.stdout = _Tail(stdout_limit)
        self.combined = combined

    def add(self, chunk: bytes, is_stdout: bool) -> None:
        self.log.write(chunk)
        self.combined.add(chunk)
        if is_stdout:
            self.stdout.add(chunk)


# --------------------------------------------------------------------------- launcher


class AgentLauncher:
    """Starts agent processes for one hive from one dedicated, long-lived thread.

    Guarantees:

    - every agent is spawned by the same thread (:attr:`thread`), which lives until
      :meth:`close`; on Linux each agent has ``PR_SET_PDEATHSIG=SIGKILL``, armed
      before its program starts, so it dies when that thread (the hive) does — and
      never earlier because a thread idled out;
    - each agent leads its own session and process group (``pgid == pid``), runs with
      ``close_fds``, ``cwd=workspace`` (created if missing) and the environment
      ``os.environ`` + ``extra_env`` + ``HIVE_TASK_JSON``, ``HIVE_TASK_ID``,
      ``HIVE_WORKSPACE``, ``HIVE_ATTEMPT`` (and ``PWD``, the workspace, when started
      through ``setpriv``); no shell ever parses the task's text (the ``/bin/sh``
      check before the agent gets the argv as ``"$@"``);
    - when a run ends, for any reason, the agent's whole process group has been sent
      SIGKILL and the leader has been reaped (no orphans in the group, no zombies);
    - :meth:`close` kills the groups of agents still running and lets the thread exit.

    Usable as a context manager (``with AgentLauncher() as launcher: ...``).
    """

    def __init__(self, *, name: str = "hive-agent-launcher") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._live: set[int] = set()
        self._unreaped: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The thread every agent of this launcher is spawned from."""
        return self._thread

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def live_pgids(self) -> frozenset[int]:
        """Process groups of agents started and not yet reaped."""
        return frozenset(self._live)

    def __enter__(self) -> AgentLauncher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill the process groups of agents still running, then let the thread exit
        (after any spawn already queued). Returns at once; idempotent."""
        if self._closed:
            return
        self._closed = True
        kill_process_groups(sorted(self._live))
        self._reap_leftovers()
        self._queue.put(_STOP)

    # -- the thread ---------------------------------------------------------------

    def _main(self) -> None:
        # How agents get their death signal is found out here, so that the check (it
        # runs a child process, once per hive process) never blocks the trio thread.
        prefix = _pdeathsig_prefix()
        preexec = _pdeathsig_preexec()  # for environments the prefix cannot pass on
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            req, token, task = item
            result = outcome.capture(_spawn_blocking, req, preexec, prefix)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                # Nobody is waiting for this agent any more: do not leave it behind.
                proc = result.unwrap() if isinstance(result, outcome.Value) else None
                if proc is not None and proc.popen is not None:
                    _signal_group(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait()
                    proc.close_fds()
                    proc.log.close()

    async def _spawn(self, req: _SpawnRequest) -> _Proc:
        if self._closed:
            raise RuntimeError("the agent launcher is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        self._queue.put((req, trio.lowlevel.current_trio_token(), task))

        def abort(_: Any) -> trio.lowlevel.Abort:
            # A spawn under way is never abandoned: its process must be killed and
            # reaped by the caller, which gets it back first.
            return trio.lowlevel.Abort.FAILED

        proc: _Proc = await trio.lowlevel.wait_task_rescheduled(abort)
        return proc

    def _reap_leftovers(self) -> None:
        still = []
        for popen in self._unreaped:
            if popen.poll() is None:
                still.append(popen)
            else:
                self._live.discard(popen.pid)
        self._unreaped = still

    # -- public API ---------------------------------------------------------------

    async def run(
        self,
        argv_template: Sequence[str],
        task: Any,
        *,
        workspace: Path,
        attempt: int,
        timeout: float | None,  # noqa: ASYNC109 - contract: a kill + timed_out result, not an exception
        stdin: Literal["prompt", "none"] = "prompt",
        log_path: Path | None = None,
        stdout_limit: int = DEFAULT_STDOUT_LIMIT,
        on_spawn: Callable[[int], Awaitable[None]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        kill_grace: float = DEFAULT_KILL_GRACE,
    ) -> CommandResult:
        """Run one agent for ``task``'s attempt ``attempt`` and return what it produced.

        ``argv_template`` is rendered with :func:`render_argv` (placeholders
        ``{prompt}``, ``{title}``, ``{task_id}``, ``{workspace}``, ``{feedback}`` — ""
        when there is none — and ``{attempt}``), each element becoming exactly one
        argv element. ``stdin="prompt"`` writes the prompt's exact UTF-8 bytes and
        closes stdin (an agent that never reads it is fine); ``"none"`` gives
        ``/dev/null``. All output is appended to ``log_path`` (default
        ``<workspace>/attempt-<attempt>.log``). ``on_spawn(pgid)`` is awaited once the
        agent has started (to record its process group); if it raises, the agent is
        killed and the exception propagates.

        After ``timeout`` seconds of the trio clock (so not under ``autojump_clock``,
        which would see the wait for the process as idle time) the process group gets SIGTERM, then
        SIGKILL after ``kill_grace`` seconds, and the result has ``timed_out=True``
        and ``exit_code=None``. If the calling task is cancelled, the group is killed
        the same way (within ``kill_grace`` plus a moment), the leader is reaped and
        ``Cancelled`` propagates. A program that cannot be started gives a result with
        exit code 127 (not found) or 126 and ``error`` set, rather than an exception.
        Raises ``ValueError`` for a malformed template or ``stdin`` value and
        ``RuntimeError`` once the launcher is closed.
        """
        deadline = _deadline(timeout)
        combined = _Tail(OUTPUT_TAIL_LIMIT)
        return await self._run_one(
            argv_template,
            task,
            workspace=Path(workspace),
            attempt=attempt,
            deadline=deadline,
            timeout=timeout,
            stdin=stdin,
            log_path=log_path,
            stdout_limit=stdout_limit,
            on_spawn=on_spawn,
            extra_env=extra_env,
            kill_grace=kill_grace,
            header=b"",
            combined=combined,
            phase=None,
        )

    async def run_phases(
        self,
        phases: Sequence[tuple[str, Sequence[str]]],
        task: Any,
        *,
        workspace: Path,
        attempt: int,
        timeout: float | None,  # noqa: ASYNC109 - contract: a kill + timed_out result, not an exception
        stdin: Literal["prompt", "none"] = "prompt",
        log_path: Path | None = None,
        stdout_limit: int = DEFAULT_STDOUT_LIMIT,
        on_spawn: Callable[[int], Awaitable[None]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        kill_grace: float = DEFAULT_KILL_GRACE,
    ) -> CommandResult:
        """Run ``phases`` — ``(name, argv_template)`` pairs — one after another in the
        same workspace, as one attempt, within one overall ``timeout``.

        Each phase is run like :meth:`run` (same stdin, environment, ``on_spawn`` per
        phase) and appends to the same log file after a header line
        ``=== hive phase <name>: <argv> ===``. Stops at the first phase that is not
        ``ok`` (including a timeout) and returns its result with ``phase`` set to its
        name and ``error`` naming it; when all succeed, returns the last phase's result
        with ``phase`` set to the last name. In both cases ``duration`` covers every
        phase run and ``output_tail`` is the tail of all of their output.
        """
        if not phases:
            raise ValueError("phases must not be empty")
        for entry in phases:
            if not (
                isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)
            ):
                raise ValueError(f"each phase must be a (name, argv template) pair, got {entry!r}")
        for name, template in phases:
            _check_template(template, f"phase {name!r}: ")
        deadline = _deadline(timeout)
        combined = _Tail(OUTPUT_TAIL_LIMIT)
        started = time.monotonic()
        result: CommandResult | None = None
        for name, template in phases:
            header = (
                f"=== hive phase {name}: {json.dumps(list(template), ensure_ascii=False)} ===\n"
            )
            result = await self._run_one(
                template,
                task,
                workspace=Path(workspace),
                attempt=attempt,
                deadline=deadline,
                timeout=timeout,
                stdin=stdin,
                log_path=log_path,
                stdout_limit=stdout_limit,
                on_spawn=on_spawn,
                extra_env=extra_env,
                kill_grace=kill_grace,
                header=header.encode("utf-8", errors="replace"),
                combined=combined,
                phase=name,
            )
            if not result.ok:
                return attrs.evolve(
                    result,
                    duration=time.monotonic() - started,
                    error=f"phase {name!r} failed: {result.error}",
                )
        assert result is not None
        return attrs.evolve(result, duration=time.monotonic() - started)

    async def _run_one(
        self,
        argv_template: Sequence[str],
        task: Any,
        *,
        workspace: Path,
        attempt: int,
        deadline: float,
        timeout: float | None,  # noqa: ASYNC109 - only reported; `deadline` is enforced
        stdin: str,
        log_path: Path | None,
        stdout_limit: int,
        on_spawn: Callable[[int], Awaitable[None]] | None,
        extra_env: Mapping[str, str] | None,
        kill_grace: float,
        header: bytes,
        combined: _Tail,
        phase: str | None,
    ) -> CommandResult:
        if stdin not in ("prompt", "none"):
            raise ValueError(f"stdin must be 'prompt' or 'none', got {stdin!r}")
        if stdout_limit < 0:
            raise ValueError("stdout_limit must be >= 0")
        _check_template(argv_template, "")
        if not workspace.is_absolute():
            workspace = Path(os.getcwd(), workspace)  # one cheap syscall, no disk I/O
        values = {
            "prompt": task.prompt,
            "title": task.title,
            "task_id": task.id,
            "workspace": str(workspace),
            "feedback": task.feedback or "",
            "attempt": attempt,
        }
        argv = render_argv(argv_template, values)
        if log_path is None:
            log_path = workspace / f"attempt-{attempt}.log"
        log_path = Path(log_path)
        env = dict(os.environ)
        for key, value in (extra_env or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"extra_env must map str to str, got {key!r}: {value!r}")
            env[key] = value
        task_json, full_json = _task_json(task)
        env.update(
            HIVE_TASK_JSON=task_json,
            HIVE_TASK_ID=str(task.id),
            HIVE_WORKSPACE=str(workspace),
            HIVE_ATTEMPT=str(attempt),
        )
        task_file = None
        if full_json is not None:
            path = log_path.with_name(log_path.stem + ".task.json")
            env["HIVE_TASK_JSON_FILE"] = str(path)
            task_file = (path, full_json)
        else:
            env.pop("HIVE_TASK_JSON_FILE", None)
        req = _SpawnRequest(argv, workspace, env, stdin, log_path, header, task_file)  # type: ignore[arg-type]
        stdin_bytes = (task.prompt or "").encode("utf-8", errors="replace")

        started = time.monotonic()
        proc = await self._spawn(req)
        if proc.popen is None:
            proc.log.close()
            message = proc.spawn_error or "cannot start the agent"
            combined.add(f"hive: {message}\n".encode("utf-8", errors="replace"))
            return CommandResult(
                argv=tuple(argv),
                exit_code=proc.spawn_exit_code,
                result={"exit_code": proc.spawn_exit_code, "stdout": ""},
                stdout="",
                stdout_truncated=False,
                output_tail=_text_tail(combined.value(), OUTPUT_TAIL_LIMIT),
                duration=time.monotonic() - started,
                timed_out=False,
                pgid=None,
                log_path=req.log_path,
                phase=phase,
                error=message,
            )

        popen = proc.popen
        pgid = popen.pid
        self._live.add(pgid)
        capture = _Capture(proc.log, stdout_limit, combined)
        timed_out = False
        finished = False
        try:
            failure: Exception | None = None
            async with trio.open_nursery() as io:
                # Drain from the start, so on_spawn may take its time.
                out_fd, proc.stdout_fd = proc.stdout_fd, None
                err_fd, proc.stderr_fd = proc.stderr_fd, None
                io.start_soon(_drain, out_fd, capture, True)
                io.start_soon(_drain, err_fd, capture, False)
                if proc.stdin_fd is not None:
                    in_fd, proc.stdin_fd = proc.stdin_fd, None
                    io.start_soon(_feed, in_fd, stdin_bytes)
                with trio.CancelScope(deadline=deadline) as waiting:
                    if on_spawn is not None:
                        try:
                            await on_spawn(pgid)
                        except Exception as exc:
                            # Re-raised below, bare (not in a nursery's ExceptionGroup),
                            # after the cleanup has killed the agent.
                            failure = exc
                    if failure is None:
                        await _wait_exited(proc)
                if failure is not None:
                    io.cancel_scope.cancel()
                else:
                    if waiting.cancelled_caught:
                        timed_out = True
                        await _terminate(proc, pgid, kill_grace)
                    # The leader has exited (not yet reaped, so the pgid cannot be
                    # reused): whatever it left behind in its group dies now.
                    _signal_group(pgid, signal.SIGKILL)
                    # The readers get a bounded time to reach EOF; only a process that
                    # left the group can keep the pipes open that long.
                    io.cancel_scope.deadline = trio.current_time() + _DRAIN_GRACE
            if failure is not None:
                raise failure
            finished = True
        finally:
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + kill_grace + _CLEANUP_BUDGET
                if not finished:
                    proc.log.write(
                        f"\nhive: run interrupted; stopping process group {pgid}\n".encode()
                    )
                if not proc.exited:
                    await _terminate(proc, pgid, kill_grace)
            _signal_group(pgid, signal.SIGKILL)
            if proc.exited and popen.poll() is not None:
                self._live.discard(pgid)
            else:
                self._unreaped.append(popen)
            self._reap_leftovers()
            proc.close_fds()
            if timed_out:
                proc.log.write(
                    f"\nhive: timed out after {timeout}s; process group {pgid} killed\n".encode()
                )
            proc.log.close()
        duration = time.monotonic() - started

        exit_code = None if timed_out else popen.returncode
        stdout = capture.stdout.value().decode("utf-8", errors="replace")
        if timed_out:
            error = f"timed out after {timeout}s"
        elif exit_code is None:
            error = "the agent could not be reaped"
        elif exit_code < 0:
            error = f"killed by signal {_signal_name(-exit_code)}"
        elif exit_code != 0:
            error = f"exit code {exit_code}"
        else:
            error = None
        return CommandResult(
            argv=tuple(argv),
            exit_code=exit_code,
            result=_parse_result(stdout, exit_code),
            stdout=stdout,
            stdout_truncated=capture.stdout.truncated,
            output_tail=_text_tail(combined.value(), OUTPUT_TAIL_LIMIT),
            duration=duration,
            timed_out=timed_out,
            pgid=pgid,
            log_path=req.log_path,
            phase=phase,
            error=error,
        )


def _deadline(timeout: float | None) -> float:
    if timeout is None:
        return math.inf
    if timeout < 0 or math.isnan(timeout):
        raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
    return trio.current_time() + timeout


def _check_template(template: Sequence[str], prefix: str) -> None:
    problems = template_problems(template)
    if problems:
        raise ValueError(f"{prefix}bad argv template: " + "; ".join(problems))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
