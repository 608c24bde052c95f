"""Helpers for testing code built on hive_actors: fake backends, fault injection,
hypothesis strategies, an invariant checker and pytest fixtures.

Everything here is test-only machinery; nothing in the runtime imports it. Fault
injection uses the actor system's injector (``system.faults``), which is inert --
one boolean test per message -- until a test registers a fault.

Fake backends
    :class:`ScriptedBackend`, :class:`ScriptedReviewer` and :class:`ScriptedPlanner`
    behave per task as the task's :class:`Script` says (fail the first N calls,
    sleep, hang, return garbage, get rejected N times, be escalated), and record
    every call. :func:`failing_backend`, :func:`hang_backend` and
    :func:`garbage_backend` are the single-purpose versions.

Faults
    :func:`crash_actor` makes a hive's Queen, DB actor or slot actors crash on
    their Nth matching message; :func:`expire_lease_now` makes a running task's
    lease run out now (the worker becomes a zombie whose result is refused).
    :class:`FaultSpec` values (drawn by :func:`fault_schedules`) are applied with
    :func:`apply_faults`.

Strategies (need ``hypothesis``)
    :func:`task_graphs` draws DAGs of tasks with kinds, priorities and scripts;
    :func:`fault_schedules` draws fault schedules. :func:`submit_graph` stores a
    graph in a hive; :func:`predict` says how each task must end when no fault
    that changes outcomes is injected.

Checking
    :func:`check_invariants` reads the tasks, runs and the whole events table of a
    hive and raises :class:`InvariantViolation` listing every broken rule of the task
    state machine (see its docstring).

Pytest
    Fixtures ``hive_factory`` and ``autojump_hive``. Enable them with
    ``pytest_plugins = ["hive_actors.testing"]`` in your top-level ``conftest.py``
    (or import them into a ``conftest.py``). They need ``pytest-trio``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from .actors import Fault, InjectedCrash
from .hive import Hive, HiveConfig, Verdict, open_hive
from .store import DependencyError, IllegalTransition, StaleLease, Task

__all__ = [
    "Call",
    "FaultSpec",
    "HiveReport",
    "InvariantViolation",
    "Script",
    "ScriptedBackend",
    "ScriptedPlanner",
    "ScriptedReviewer",
    "TaskGraph",
    "TaskSpec",
    "actor_pattern",
    "apply_faults",
    "autojump_hive",
    "check_invariants",
    "crash_actor",
    "expire_lease_now",
    "failing_backend",
    "fault_schedules",
    "garbage_backend",
    "hang_backend",
    "hive_factory",
    "open_test_hive",
    "planned_tasks",
    "predict",
    "run_autojump",
    "submit_graph",
    "survive_injected_crash",
    "task_graphs",
]


class ScriptedFailure(RuntimeError):
    """What a fake backend raises when its script says the call fails."""


# =========================================================================== scripts


@attrs.frozen
class Script:
    """How the scripted fakes treat one task.

    ``fail_first``: the backend's first N calls for the task raise
    :class:`ScriptedFailure`. ``sleep``: every call first sleeps this many seconds.
    ``hang``: every call sleeps forever (until the kind's timeout or a cancel).
    ``garbage``: successful calls return a value that is not JSON.
    ``reject_first``: the reviewer rejects the first N reviews of the task.
    ``escalate``: the reviewer escalates the task to a person (after the
    rejections). Stored in the task's metadata (``{"script": {...}}``) or as its
    prompt (a JSON object with a ``"script"`` key), so planned subtasks carry it too.
    """

    fail_first: int = 0
    sleep: float = 0.0
    hang: bool = False
    garbage: bool = False
    reject_first: int = 0
    escalate: bool = False

    def to_json(self) -> dict[str, Any]:
        """The script as a JSON object (only the fields that differ from the default)."""
        default = Script()
        return {
            field.name: getattr(self, field.name)
            for field in attrs.fields(Script)
            if getattr(self, field.name) != getattr(default, field.name)
        }

    def prompt(self) -> str:
        """A prompt carrying this script (what :func:`submit_graph` and plans use)."""
        return json.dumps({"script": self.to_json()}, sort_keys=True)

    @classmethod
    def of(cls, task: Task) -> Script:
        """The script of ``task``: from its metadata, else its prompt, else the default."""
        raw: Any = None
        if isinstance(task.metadata, Mapping):
            raw = task.metadata.get("script")
        if raw is None and task.prompt.startswith("{"):
            try:
                decoded = json.loads(task.prompt)
            except ValueError:
                decoded = None
            if isinstance(decoded, Mapping):
                raw = decoded.get("script")
        if not isinstance(raw, Mapping):
            return cls()
        known = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})


@attrs.frozen
class Call:
    """One call of a scripted fake: which task, attempt and fencing token it ran
    for, and how it ended (``"ok"``, ``"failed"``, ``"garbage"``, ``"cancelled"``;
    ``"running"`` while it runs). ``stale_at_start`` is set when the fake checked
    the store at the start of the call and found the task no longer claimed with
    that token (it was cancelled or re-claimed before the agent started)."""

    role: str
    task_id: int
    attempt: int
    token: int
    number: int
    outcome: str = "running"
    stale_at_start: str | None = None


class _Recorder:
    """Shared call bookkeeping of the scripted fakes."""

    role = "backend"

    def __init__(self, *, check_store: bool = True) -> None:
        self.calls: list[Call] = []
        self.running: dict[int, Call] = {}  # index in calls -> the call, while it runs
        self.counts: Counter[int] = Counter()
        self.check_store = check_store
        self.check_errors: list[str] = []  # store reads at call start that failed
        self.stale_grace = 1.0  # seconds a stale call waits to be cancelled
        self.hive: Hive | None = None

    def bind(self, hive: Hive) -> None:
        """Let the fake read the store at each call start (to detect agents started
        for a task that was already cancelled or re-claimed)."""
        self.hive = hive

    def calls_for(self, task_id: int) -> list[Call]:
        """The calls made for one task, oldest first."""
        return [call for call in self.calls if call.task_id == task_id]

    def _begin(self, task: Task) -> int:
        self.counts[task.id] += 1
        index = len(self.calls)
        call = Call(self.role, task.id, task.attempts, task.fencing_token, self.counts[task.id])
        self.calls.append(call)
        self.running[index] = call
        return index

    async def _check(self, task: Task, index: int) -> None:
        if self.check_store and self.hive is not None:
            try:
                now = await self.hive.store.get(task.id)
            except Exception as exc:  # e.g. an injected DB actor crash hit the read
                self.check_errors.append(f"{type(exc).__name__}: {exc}")
                return
            expected = "running" if self.role != "reviewer" else "review"
            if now.status != expected or now.fencing_token != task.fencing_token:
                self._update(index, stale_at_start=(
                    f"task {task.id} was {now.status} with token {now.fencing_token} "
                    f"when the {self.role} started attempt {task.attempts} with token "
                    f"{task.fencing_token}"))
                # The claim may have gone just after the attempt started: a hive that
                # noticed cancels the call now (check_invariants only flags a stale
                # call that was not stopped).
                await trio.sleep(self.stale_grace)

    def _update(self, index: int, **changes: Any) -> None:
        self.calls[index] = attrs.evolve(self.calls[index], **changes)
        if index in self.running:
            self.running[index] = self.calls[index]

    def _end(self, index: int, outcome: str) -> None:
        self._update(index, outcome=outcome)
        self.running.pop(index, None)


class ScriptedBackend(_Recorder):
    """A worker backend (``KindConfig(backend=...)``) that follows each task's
    :class:`Script` and records every call in ``calls``.

    A successful call returns ``{"task": id, "attempt": n, "token": t, "call": k}``,
    so a test can tell which attempt's result the store accepted.
    """

    role = "backend"

    async def __call__(self, task: Task) -> Any:
        """Run one attempt of ``task`` as its script says."""
        script = Script.of(task)
        index = self._begin(task)
        outcome = "cancelled"
        try:
            await self._check(task, index)
            if script.hang:
                await trio.sleep_forever()
            if script.sleep:
                await trio.sleep(script.sleep)
            number = self.calls[index].number
            if number <= script.fail_first:
                outcome = "failed"
                raise ScriptedFailure(f"scripted failure {number} of {script.fail_first}")
            if script.garbage:
                outcome = "garbage"
                return {"garbage": object()}
            outcome = "ok"
            return {"task": task.id, "attempt": task.attempts, "token": task.fencing_token,
                    "call": number}
        finally:
            self._end(index, outcome)


class ScriptedReviewer(_Recorder):
    """A reviewer backend following each task's :class:`Script`: reject the first
    ``reject_first`` reviews (feedback ``"rework N"``), then escalate if
    ``escalate``, else approve. Records every review in ``calls``."""

    role = "reviewer"

    async def __call__(self, task: Task) -> Verdict:
        """Review one finished attempt."""
        script = Script.of(task)
        index = self._begin(task)
        try:
            await self._check(task, index)
            number = self.calls[index].number
            if number <= script.reject_first:
                return Verdict(approved=False, feedback=f"rework {number}")
            if script.escalate:
                return Verdict(escalate=True, feedback="a person should decide")
            return Verdict(approved=True)
        finally:
            self._end(index, "ok")


class ScriptedPlanner(_Recorder):
    """A planner backend: the plan request's prompt holds the plan (a JSON object
    ``{"tasks": [...]}``, as :meth:`TaskGraph.plan_prompt` writes it), which it
    returns as it is. Records every call in ``calls``."""

    role = "planner"

    async def __call__(self, task: Task) -> Any:
        """Return the plan carried by the request's prompt."""
        index = self._begin(task)
        try:
            await self._check(task, index)
            return json.loads(task.prompt)
        finally:
            self._end(index, "ok")


def failing_backend(n: int, result: Any = None) -> Callable[[Task], Any]:
    """A backend that raises :class:`ScriptedFailure` on its first ``n`` calls for
    each task, then returns ``result`` (default ``{"ok": True}``)."""
    counts: Counter[int] = Counter()

    async def backend(task: Task) -> Any:
        counts[task.id] += 1
        await trio.lowlevel.checkpoint()
        if counts[task.id] <= n:
            raise ScriptedFailure(f"failing call {counts[task.id]} of {n}")
        return {"ok": True} if result is None else result

    backend.counts = counts  # type: ignore[attr-defined]
    return backend


class _Hang:
    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.cancelled = 0

    async def __call__(self, task: Task) -> Any:
        self.calls += 1
        self.running += 1
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


def hang_backend() -> Callable[[Task], Any]:
    """A backend that never returns (until cancelled by the kind's ``timeout``, a
    cancel or shutdown). Its ``calls``, ``running`` and ``cancelled`` attributes
    count what happened to it."""
    return _Hang()


_GARBAGE: dict[str, Callable[[], Any]] = {
    "object": lambda: {"value": object()},
    "nan": lambda: {"value": math.nan},
    "bytes": lambda: b"\xff\xfe not text",
    "set": lambda: {1, 2, 3},
    "cycle": lambda: _cycle(),
}


def _cycle() -> Any:
    value: list[Any] = []
    value.append(value)
    return value


def garbage_backend(kind: str = "object") -> Callable[[Task], Any]:
    """A backend that returns a value the store cannot keep as JSON: ``"object"``
    (an arbitrary object inside a dict), ``"nan"``, ``"bytes"``, ``"set"`` or
    ``"cycle"`` (a list containing itself). The Worker must fail the attempt with a
    clear error rather than crash or store something."""
    make = _GARBAGE[kind]

    async def backend(task: Task) -> Any:
        await trio.lowlevel.checkpoint()
        return make()

    return backend


# =========================================================================== faults


def _hive_suffix(hive: Hive) -> str:
    queen = hive._rt.queen
    if queen is None:  # pragma: no cover - open_hive always sets it
        raise RuntimeError("the hive has no Queen yet")
    return queen.name.removeprefix("queen-")


def actor_pattern(hive: Hive, role: str, index: int | str = "*") -> str:
    """The glob naming a hive's actors of ``role``: ``"queen"``, ``"store"`` (the
    DB actor), or a pool: a kind name, ``"plan"`` (Planner slots) or ``"review"``
    (Reviewer slots); ``index`` picks one slot of the pool."""
    if role == "store":
        return hive.store.ref.name
    suffix = _hive_suffix(hive)
    if role == "queen":
        return f"queen-{suffix}"
    if role not in hive._rt.pools:
        raise ValueError(f"the hive has no role or pool {role!r}; "
                         f"pools: {', '.join(sorted(hive._rt.pools))}")
    return f"{role}-{index}-{suffix}"


def _message_filter(message_type: str | type | None) -> Callable[[Any], bool] | None:
    if message_type is None:
        return None
    if isinstance(message_type, type):
        return lambda message: isinstance(message, message_type)
    return lambda message: type(message).__name__ == message_type


def crash_actor(
    hive: Hive,
    role: str,
    *,
    nth: int | None = 1,
    message_type: str | type | None = None,
    when: Callable[[Any], bool] | None = None,
    times: int | None = 1,
) -> Fault:
    """Make the hive's ``role`` actors (see :func:`actor_pattern`) crash on their
    ``nth`` matching message (per actor), at most ``times`` times overall.

    ``message_type`` (a class or class name, e.g. ``"Assign"`` for a slot's work,
    ``"Succeed"`` for the DB actor) narrows the messages counted; ``when`` is any
    other predicate. The crash happens before the handler sees the message: a
    slot's task is given back at once, a DB actor's operation is not applied and its
    asker gets the error. Returns the registered ``Fault`` (``.hits``, ``.remove()``).
    """
    type_filter = _message_filter(message_type)
    if type_filter is not None and when is not None:
        extra = when

        def predicate(message: Any) -> bool:
            return type_filter(message) and extra(message)
    else:
        predicate = type_filter or when
    return hive.system.faults.crash(actor_pattern(hive, role), nth=nth, when=predicate,
                                    times=times)


async def expire_lease_now(hive: Hive, task_id: int, *, attempts: int = 100) -> Task:
    """Make the current lease of ``task_id`` (running, or claimed for review) run
    out now, as if its worker had stopped heartbeating, and sweep it.

    Uses only the store's public protocol: a heartbeat with the current token and a
    lease of a nanosecond, then a sweep once the store's clock has passed it (a real
    worker's heartbeat slipping in between is retried, at most ``attempts`` times).
    A running task is then re-queued after backoff (or failed when out of attempts)
    exactly as for a dead worker; its worker, still running, becomes a zombie whose
    heartbeat and result get ``StaleLease``. Returns the task after the sweep.
    Raises ``ValueError`` if the task holds no lease.
    """
    store = hive.store
    for _ in range(attempts):
        task = await store.get(task_id)
        if task.lease_expires_at is None:
            raise ValueError(f"task {task_id} holds no lease (it is {task.status})")
        try:
            await store.heartbeat(task_id, task.fencing_token, 1e-9)
        except StaleLease:  # re-claimed or finished in between: look again
            continue
        await trio.sleep(0.001)  # let the store's clock pass the tiny lease
        changed = await store.sweep_leases()
        for swept in changed:
            if swept.id == task_id:
                return swept
    raise RuntimeError(f"could not expire the lease of task {task_id}")


@attrs.frozen
class FaultSpec:
    """One fault of a schedule (see :func:`fault_schedules`, :func:`apply_faults`).

    ``action``:

    - ``"crash"``: the ``target`` actors crash on their ``nth`` message of type
      ``message`` (any type if None);
    - ``"delay"``: the ``target`` actors sleep ``seconds`` before each of their
      next ``nth`` messages;
    - ``"stall"``: the ``target`` actors' mailboxes stop from ``at`` seconds for
      ``seconds`` seconds;
    - ``"expire"``: at ``at`` seconds, the lease of task ``task`` (a graph key)
      runs out, if it holds one;
    - ``"cancel"``: at ``at`` seconds, a person cancels task ``task``;
    - ``"retry"``: at ``at`` seconds, a person retries task ``task`` if it failed or
      was cancelled (and its dependencies allow it).

    ``target`` is a role for :func:`actor_pattern`. Only crashes and delays of
    slots and the Queen, and delays of the DB actor, leave :func:`predict`'s
    outcomes unchanged; :attr:`changes_outcomes` says so.
    """

    action: str
    target: str = ""
    nth: int = 1
    seconds: float = 0.0
    at: float = 0.0
    task: str | None = None
    message: str | None = None

    @property
    def changes_outcomes(self) -> bool:
        """Whether this fault may change how tasks end (versus :func:`predict`)."""
        if self.action in ("expire", "cancel", "retry"):
            return True
        if self.action == "crash" and self.target == "store":
            return True  # the crash reaches every asker of its batch
        if self.action == "stall":
            # A long stall of a slot can outlast the lease (the Queen re-claims).
            return True
        if self.action == "delay" and self.target != "queen":
            # Delays add up: a slot's Assign or the DB actor's heartbeats held past
            # the lease lose the claim.
            return self.seconds * self.nth >= 10.0
        return False


async def apply_faults(
    hive: Hive,
    schedule: Iterable[FaultSpec],
    tasks: Mapping[str, Task],
    nursery: trio.Nursery,
) -> list[Fault]:
    """Register the schedule's crashes and delays now and start its timed faults
    (stalls, lease expiries, cancels) in ``nursery``, with times counted from now.
    ``tasks`` maps graph keys to stored tasks. Returns the registered faults."""
    registered = []
    start = trio.current_time()
    for spec in schedule:
        if spec.action == "crash":
            registered.append(crash_actor(hive, spec.target, nth=spec.nth,
                                          message_type=spec.message))
        elif spec.action == "delay":
            registered.append(hive.system.faults.delay(
                actor_pattern(hive, spec.target), spec.seconds, times=spec.nth))
        elif spec.action in ("stall", "expire", "cancel", "retry"):
            nursery.start_soon(_timed_fault, hive, spec, tasks, start)
        else:
            raise ValueError(f"unknown fault action {spec.action!r}")
    return registered


async def survive_injected_crash(call: Callable[[], Any], tries: int = 3) -> Any:
    """Await ``call()``, calling again (up to ``tries`` times in all) when an
    injected crash hit it: an injected crash of the DB actor reaches every asker of
    the batch it fires in, the test's own reads included."""
    for _ in range(tries - 1):
        try:
            return await call()
        except InjectedCrash:
            continue
    return await call()


async def _timed_fault(hive: Hive, spec: FaultSpec, tasks: Mapping[str, Task],
                       start: float) -> None:
    await trio.sleep_until(start + spec.at)
    await survive_injected_crash(lambda: _fire(hive, spec, tasks))


async def _fire(hive: Hive, spec: FaultSpec, tasks: Mapping[str, Task]) -> None:
    if spec.action == "stall":
        fault = hive.system.faults.stall(actor_pattern(hive, spec.target))
        try:
            await trio.sleep(spec.seconds)
        finally:
            fault.release()
        return
    task = tasks.get(spec.task or "")
    if task is None and "plan" in tasks:  # a planned subtask, known by its title
        for child in await hive.store.list(parent_id=tasks["plan"].id):
            if child.title == spec.task:
                task = child
    if task is None:
        return
    current = await hive.store.get(task.id)
    # A person acting on a task that changed meanwhile gets a clear refusal
    # (IllegalTransition, DependencyError): that is an outcome, not a failure.
    if spec.action == "cancel":
        if not current.terminal:
            with contextlib.suppress(IllegalTransition):
                await hive.cancel(task.id)
    elif spec.action == "retry":
        if current.status in ("failed", "cancelled"):
            with contextlib.suppress(IllegalTransition, DependencyError):
                await hive.retry(task.id)
    elif current.lease_expires_at is not None:
        try:
            await expire_lease_now(hive, task.id)
        except (ValueError, RuntimeError):
            pass  # the lease ended on its own meanwhile


# =========================================================================== graphs


@attrs.frozen
class TaskSpec:
    """One task of a :class:`TaskGraph`: ``depends_on`` names earlier keys."""

    key: str
    kind: str
    priority: int = 0
    depends_on: tuple[str, ...] = ()
    max_attempts: int = 3
    script: Script = Script()


@attrs.frozen
class TaskGraph:
    """A DAG of tasks (each depends only on earlier ones), in submission order.
    ``planned`` keys are submitted through one plan request instead of directly."""

    tasks: tuple[TaskSpec, ...]
    planned: tuple[str, ...] = ()

    def spec(self, key: str) -> TaskSpec:
        """The task with this key."""
        for spec in self.tasks:
            if spec.key == key:
                return spec
        raise KeyError(key)

    def plan_prompt(self) -> str:
        """The plan request prompt (for :class:`ScriptedPlanner`) holding the
        ``planned`` tasks."""
        planned = set(self.planned)
        return json.dumps({"tasks": [
            {"key": spec.key, "title": spec.key, "kind": spec.kind, "priority": spec.priority,
             "prompt": spec.script.prompt(), "depends_on": list(spec.depends_on)}
            for spec in self.tasks if spec.key in planned
        ]})


async def submit_graph(hive: Hive, graph: TaskGraph) -> dict[str, Task]:
    """Submit ``graph`` to ``hive`` and return the stored tasks by key.

    Direct tasks are submitted in order with their scripts as prompts; the
    ``planned`` ones become one plan request (its task under the key ``"plan"``),
    which the hive's planner must be a :class:`ScriptedPlanner` to expand. Planned
    tasks are looked up by title once the plan is stored (see :func:`planned_tasks`).
    """
    planned = set(graph.planned)
    stored: dict[str, Task] = {}
    for spec in graph.tasks:
        if spec.key in planned:
            continue
        stored[spec.key] = await hive.submit(
            kind=spec.kind, title=spec.key, prompt=spec.script.prompt(),
            priority=spec.priority, depends_on=[stored[d].id for d in spec.depends_on],
            max_attempts=spec.max_attempts,
        )
    if planned:
        stored["plan"] = await hive.plan(title="plan", prompt=graph.plan_prompt())
    return stored


async def planned_tasks(hive: Hive, stored: Mapping[str, Task]) -> dict[str, Task]:
    """``stored`` plus the subtasks of its plan request (if stored), by key."""
    result = dict(stored)
    plan = stored.get("plan")
    if plan is not None:
        for task in await hive.store.list(parent_id=plan.id):
            result[task.title] = task
    return result


def predict(
    graph: TaskGraph,
    *,
    reviewed: Callable[[str], bool] = lambda kind: False,
    timeouts: Mapping[str, float | None] | None = None,
    max_attempts: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """How each task of ``graph`` must end with the scripted fakes and no fault that
    changes outcomes: ``"done"``, ``"failed"``, ``"cancelled"`` (a dependency did not
    finish) or ``"escalated"``.

    ``reviewed(kind)`` says whether the kind's results go to the reviewer;
    ``timeouts`` gives each kind's timeout; ``max_attempts`` overrides the specs'
    budget per kind (planned subtasks take their kind's). Escalated tasks count as
    not finished for their dependents (which stay queued until a person decides).
    """
    timeouts = timeouts or {}
    outcome: dict[str, str] = {}
    planned = set(graph.planned)
    for spec in graph.tasks:
        deps = [outcome[d] for d in spec.depends_on]
        if any(d in ("failed", "cancelled") for d in deps):
            outcome[spec.key] = "cancelled"
            continue
        if any(d != "done" for d in deps):
            outcome[spec.key] = "queued"  # waits for a person's decision upstream
            continue
        budget = spec.max_attempts
        if max_attempts is not None and spec.key in planned:
            budget = max_attempts.get(spec.kind, budget)
        outcome[spec.key] = _simulate(spec, budget, reviewed(spec.kind),
                                      timeouts.get(spec.kind))
    return outcome


def _simulate(spec: TaskSpec, budget: int, review: bool, timeout: float | None) -> str:
    script = spec.script
    calls = reviews = 0
    for _attempt in range(budget):
        calls += 1
        timed_out = timeout is not None and (script.hang or script.sleep >= timeout)
        if script.hang and timeout is None:
            return "running"  # never ends; strategies avoid it
        if timed_out or calls <= script.fail_first or script.garbage:
            continue  # a failed attempt: retried while the budget lasts
        if not review:
            return "done"
        reviews += 1
        if reviews <= script.reject_first:
            continue  # rework (counts as an attempt)
        return "escalated" if script.escalate else "done"
    return "failed"


# =========================================================================== strategies


def task_graphs(
    kinds: Sequence[str] = ("a", "b"),
    *,
    min_tasks: int = 1,
    max_tasks: int = 8,
    max_priority: int = 3,
    max_attempts: tuple[int, int] = (1, 3),
    sleeps: Sequence[float] = (0.0, 0.0, 2.0, 45.0),
    hang_kinds: Sequence[str] = (),
    garbage: bool = True,
    max_rejections: int = 2,
    escalations: bool = True,
    plan: bool = False,
) -> Any:
    """A hypothesis strategy for :class:`TaskGraph` values: DAGs of ``min_tasks`` to
    ``max_tasks`` tasks of the given kinds, each depending on a few earlier ones,
    with priorities in ``0..max_priority``, attempt budgets in ``max_attempts`` and
    scripts: failures, sleeps from ``sleeps``, hangs (only for ``hang_kinds``, which
    must have a timeout), garbage results, rejections, escalations (only for tasks
    nothing depends on, so the graph can finish once a person decides). With
    ``plan``, a suffix of the tasks may be submitted through a plan request.
    Shrinks towards fewer tasks, fewer edges and plain scripts."""
    from hypothesis import strategies as st

    @st.composite
    def graphs(draw: Any) -> TaskGraph:
        n = draw(st.integers(min_tasks, max_tasks))
        specs: list[TaskSpec] = []
        for i in range(n):
            kind = draw(st.sampled_from(list(kinds)))
            deps: tuple[str, ...] = ()
            if i:
                picked = draw(st.lists(st.integers(0, i - 1), max_size=min(3, i), unique=True))
                deps = tuple(f"t{j}" for j in sorted(picked))
            script = Script(
                fail_first=draw(st.integers(0, max_attempts[1])),
                sleep=draw(st.sampled_from(list(sleeps))),
                hang=kind in hang_kinds and draw(st.booleans()),
                garbage=garbage and draw(st.integers(0, 9)) == 0,
                reject_first=draw(st.integers(0, max_rejections)),
                escalate=escalations and draw(st.integers(0, 5)) == 0,
            )
            specs.append(TaskSpec(
                key=f"t{i}", kind=kind, priority=draw(st.integers(0, max_priority)),
                depends_on=deps, max_attempts=draw(st.integers(*max_attempts)), script=script,
            ))
        # Escalation only where nothing waits for the task.
        needed = {d for spec in specs for d in spec.depends_on}
        specs = [attrs.evolve(s, script=attrs.evolve(s.script, escalate=False))
                 if s.key in needed and s.script.escalate else s for s in specs]
        planned: tuple[str, ...] = ()
        if plan and draw(st.booleans()):
            # A suffix goes through the planner; its deps stay inside the suffix.
            cut = draw(st.integers(0, n - 1))
            suffix = specs[cut:]
            specs = specs[:cut] + [attrs.evolve(s, depends_on=tuple(
                d for d in s.depends_on if int(d[1:]) >= cut)) for s in suffix]
            planned = tuple(s.key for s in suffix)
        return TaskGraph(tuple(specs), planned)

    return graphs()


def fault_schedules(
    pools: Sequence[str] = ("a", "b"),
    *,
    max_faults: int = 4,
    outcome_preserving: bool = False,
    task_keys: Sequence[str] = tuple(f"t{i}" for i in range(8)),
    horizon: float = 60.0,
) -> Any:
    """A hypothesis strategy for lists of :class:`FaultSpec`: crashes of slot
    actors (on their Nth ``Assign``), of the Queen and of the DB actor (on its Nth
    message of one type), mailbox delays and stalls, and -- unless
    ``outcome_preserving`` -- lease expiries, cancels and retries of tasks in ``task_keys``,
    at times within ``horizon`` seconds. Shrinks towards no faults."""
    from hypothesis import strategies as st

    slot = st.sampled_from(list(pools))
    slot_crash = st.builds(FaultSpec, action=st.just("crash"), target=slot,
                           nth=st.integers(1, 4), message=st.just("Assign"))
    # The Queen and the DB actor are children of the system's root supervisor, which
    # gives up after 3 restarts in 5 s (and a DB actor crash while the Queen asks
    # crashes the Queen too): a schedule holds at most one of these.
    queen_crash = st.builds(FaultSpec, action=st.just("crash"), target=st.just("queen"),
                            nth=st.integers(1, 30))
    # A DB actor crash reaches every asker of its batch: a worker's report in the
    # same batch fails and its attempt is given back and run again, so it may
    # change outcomes (see FaultSpec.changes_outcomes).
    store_crash = st.builds(FaultSpec, action=st.just("crash"), target=st.just("store"),
                            nth=st.integers(1, 5),
                            message=st.sampled_from(["Claim", "ClaimReview", "Succeed", "Fail",
                                                     "Heartbeat", "Approve", "Reject",
                                                     "StorePlan", "TouchHive"]))
    root_crash = queen_crash if outcome_preserving else st.one_of(queen_crash, store_crash)
    # Long delays of slots and of the DB actor add up to lost leases (an Assign or
    # heartbeats held past the lease), so they stay short when outcomes must be
    # preserved.
    long_delays = [0.1, 1.0] if outcome_preserving else [0.1, 1.0, 20.0]
    delay = st.one_of(
        st.builds(FaultSpec, action=st.just("delay"), target=slot, nth=st.integers(1, 5),
                  seconds=st.sampled_from(long_delays)),
        st.builds(FaultSpec, action=st.just("delay"), target=st.just("queen"),
                  nth=st.integers(1, 5), seconds=st.sampled_from([0.1, 1.0, 20.0])),
        st.builds(FaultSpec, action=st.just("delay"), target=st.just("store"),
                  nth=st.integers(1, 5),
                  seconds=st.sampled_from(long_delays)),
    )
    options = [slot_crash, delay]
    if not outcome_preserving:
        at = st.floats(0.0, horizon, allow_nan=False).map(lambda t: round(t, 1))
        key = st.sampled_from(list(task_keys))
        options += [
            st.builds(FaultSpec, action=st.just("stall"),
                      target=st.one_of(slot, st.sampled_from(["queen", "store"])),
                      at=at, seconds=st.sampled_from([1.0, 40.0])),
            st.builds(FaultSpec, action=st.just("expire"), at=at, task=key),
            st.builds(FaultSpec, action=st.just("cancel"), at=at, task=key),
            st.builds(FaultSpec, action=st.just("retry"), at=at, task=key),
        ]
    return st.tuples(
        st.lists(st.one_of(*options), max_size=max_faults),
        st.lists(root_crash, max_size=1),
    ).map(lambda parts: parts[0] + parts[1])


# =========================================================================== checking


class InvariantViolation(AssertionError):
    """:func:`check_invariants` found broken rules; ``problems`` lists them."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("the hive broke its invariants:\n  " + "\n  ".join(problems))
        self.problems = list(problems)


@attrs.frozen
class HiveReport:
    """What :func:`check_invariants` read: the tasks by id, the events in order and
    the runs by task id."""

    tasks: Mapping[int, Task]
    events: tuple[Any, ...]
    runs: Mapping[int, tuple[Any, ...]]


# event type -> (statuses allowed before it, statuses allowed after it); None: inserted
_TRANSITIONS: dict[str, tuple[frozenset[Any], frozenset[str]]] = {
    "task.queued": (frozenset({None, "review", "escalated", "failed", "cancelled"}),
                    frozenset({"queued"})),
    "task.started": (frozenset({"queued"}), frozenset({"running"})),
    "task.succeeded": (frozenset({"running"}), frozenset({"review", "done"})),
    "task.review": (frozenset({"review"}), frozenset({"review"})),
    "task.retrying": (frozenset({"running"}), frozenset({"queued"})),
    "task.failed": (frozenset({"running", "review", "escalated"}), frozenset({"failed"})),
    "task.approved": (frozenset({"review", "escalated"}), frozenset({"done"})),
    "task.done": (frozenset({"done"}), frozenset({"done"})),
    "task.rejected": (frozenset({"review", "escalated"}), frozenset({"queued", "failed"})),
    "task.escalated": (frozenset({"review"}), frozenset({"escalated"})),
    "task.cancelled": (frozenset({None, "queued", "running", "review", "escalated"}),
                       frozenset({"cancelled"})),
    "task.recovered": (frozenset({"running"}), frozenset({"queued", "failed"})),
    "plan.stored": (frozenset({"running"}), frozenset({"running"})),
}


async def check_invariants(
    hive: Hive,
    *,
    backends: Iterable[_Recorder] = (),
    idle: bool = True,
) -> HiveReport:
    """Check the rules of the task state machine on everything the hive stored.

    - the events table replays to the final state: every event is a legal
      transition from the status the previous event left, and the last one leaves
      each task in its stored status; ``task.started`` events count its attempts;
    - ``task.done`` at most once per task (once per ``retry`` epoch is not enough:
      never twice, ever) and only for tasks that are done;
    - dependency order: every claim of a task comes after ``task.done`` of each of
      its dependencies;
    - attempts within budget: per retry epoch, claims not given back (released) are
      at most ``max_attempts`` plus one per rework a person ordered;
    - no stale result: a done task's result, when it names its token (the scripted
      fakes do), carries the token of the task's last claim;
    - every run is closed (with ``idle``), a task has one attempt run per claim,
      and each review run (``Run.review``) reviews one of its attempts;
    - for each scripted fake in ``backends``: every call ran for a claim that exists
      (task, token), no claim ran twice, no call for a claim already gone when it
      started (task cancelled or re-claimed) ran to its end instead of being
      cancelled, and (with ``idle``) no call is still running;
    - with ``idle``: no task is queued, running or in review unless it waits for a
      dependency that a person must decide (escalated upstream).

    Raises :class:`InvariantViolation` listing every problem; returns what it read.
    """
    store = hive.store
    tasks = {task.id: task for task in await store.list()}
    events = []
    async for event in hive.events(0, follow=False):
        events.append(event)
    runs = {task_id: tuple(await store.runs(task_id)) for task_id in tasks}
    problems: list[str] = []
    status: dict[int, str | None] = {}
    last_type: dict[int, str] = {}
    started: dict[int, list[Any]] = defaultdict(list)
    done_at: dict[int, list[int]] = defaultdict(list)
    budget_used: Counter[int] = Counter()
    person_reworks: Counter[int] = Counter()
    for event in events:
        tid = event.task_id
        if tid is None or tid not in tasks:
            problems.append(f"event {event.seq} {event.type} names unknown task {tid}")
            continue
        before = status.get(tid)
        allowed_before, allowed_after = _TRANSITIONS.get(event.type, (None, None))
        after = (event.payload or {}).get("status")
        # A rejection writes task.rejected (leaving the task queued or failed), then
        # task.queued or task.failed for the same change.
        second = (event.type in ("task.queued", "task.failed")
                  and last_type.get(tid) == "task.rejected" and before == after)
        last_type[tid] = event.type
        if allowed_before is None:
            problems.append(f"event {event.seq}: unknown type {event.type}")
        else:
            if before not in allowed_before and not second:
                problems.append(f"task {tid}: {event.type} (seq {event.seq}) from status {before}")
            if after not in allowed_after:
                problems.append(f"task {tid}: {event.type} (seq {event.seq}) left status {after}")
        status[tid] = after
        payload = event.payload or {}
        if event.type == "task.started":
            started[tid].append(event)
            budget_used[tid] += 1
            for dep in tasks[tid].depends_on:
                if not done_at.get(dep) or done_at[dep][-1] > event.seq:
                    problems.append(f"task {tid} was claimed (seq {event.seq}) before its "
                                    f"dependency {dep} was done")
        elif event.type == "task.done":
            done_at[tid].append(event.seq)
        elif event.type == "task.retrying" and "reason" in payload and "error" not in payload:
            budget_used[tid] -= 1  # released: not counted against the budget
        elif event.type == "task.queued" and payload.get("retry"):
            budget_used[tid] = 0
            person_reworks[tid] = 0
        elif event.type == "task.rejected" and event.actor == "person":
            person_reworks[tid] += 1
        if event.type.startswith("task.") and budget_used[tid] > (
                tasks[tid].max_attempts + person_reworks[tid]):
            problems.append(f"task {tid}: {budget_used[tid]} counted attempts exceed "
                            f"max_attempts={tasks[tid].max_attempts} (seq {event.seq})")
            budget_used[tid] = -10**9  # report once
    for tid, task in tasks.items():
        if status.get(tid) != task.status:
            problems.append(f"task {tid}: events replay to {status.get(tid)}, "
                            f"but it is {task.status}")
        if len(started[tid]) != task.attempts:
            problems.append(f"task {tid}: {len(started[tid])} task.started events, "
                            f"attempts={task.attempts}")
        if len(done_at[tid]) > 1:
            problems.append(f"task {tid}: task.done {len(done_at[tid])} times "
                            f"(seqs {done_at[tid]})")
        if done_at[tid] and task.status != "done":
            problems.append(f"task {tid}: task.done was emitted but it is {task.status}")
        if task.status == "done" and not done_at[tid]:
            problems.append(f"task {tid}: done without a task.done event")
        if (task.status == "done" and isinstance(task.result, Mapping)
                and "token" in task.result and started[tid]):
            last = started[tid][-1].payload.get("token")
            if task.result["token"] != last:
                problems.append(f"task {tid}: accepted the result of token "
                                f"{task.result['token']}, but its last claim had token {last}")
        task_runs = runs[tid]
        worked = [run for run in task_runs if not run.review]
        if len(worked) != task.attempts:
            problems.append(f"task {tid}: {len(worked)} attempt runs for {task.attempts} attempts")
        for run in task_runs:
            if run.review and not 1 <= run.attempt <= task.attempts:
                problems.append(f"task {tid}: a review run of attempt {run.attempt}, "
                                f"but it had {task.attempts} attempts")
        if idle:
            for run in task_runs:
                if run.ended_at is None:
                    what = "review run" if run.review else "run"
                    problems.append(f"task {tid}: {what} of attempt {run.attempt} never closed")
    claims = {(tid, ev.payload.get("token")) for tid, evs in started.items() for ev in evs}
    for backend in backends:
        seen: Counter[tuple[int, int]] = Counter()
        for call in backend.calls:
            if call.role == "backend":
                seen[(call.task_id, call.token)] += 1
                if (call.task_id, call.token) not in claims:
                    problems.append(f"{call.role} ran task {call.task_id} with token "
                                    f"{call.token}, which no claim handed out")
            if call.stale_at_start and call.outcome != "cancelled":
                problems.append(f"{call.role} ran to the end for a claim already gone "
                                f"when it started: {call.stale_at_start}")
        for (tid, token), n in seen.items():
            if n > 1:
                problems.append(f"task {tid}: the claim with token {token} ran {n} times")
        if idle:
            for call in backend.running.values():
                problems.append(f"{call.role} call for task {call.task_id} (token "
                                f"{call.token}) still running after the hive went idle")
    if idle:
        served = hive.served_kinds()
        for tid, task in tasks.items():
            if task.kind in served and task.status in ("running", "review"):
                problems.append(f"task {tid} is {task.status} after the hive went idle")
            if task.kind in served and task.status == "queued" and not _blocked_by_person(
                    tasks, tid):
                problems.append(f"task {tid} is queued after the hive went idle")
    if problems:
        raise InvariantViolation(problems)
    return HiveReport(tasks=tasks, events=tuple(events), runs=runs)


def _blocked_by_person(tasks: Mapping[int, Task], task_id: int) -> bool:
    """Whether a queued task waits (transitively) on an escalated task."""
    stack, seen = list(tasks[task_id].depends_on), set()
    while stack:
        dep = stack.pop()
        if dep in seen or dep not in tasks:
            continue
        seen.add(dep)
        if tasks[dep].status == "escalated":
            return True
        if tasks[dep].status != "done":
            stack.extend(tasks[dep].depends_on)
    return False


# =========================================================================== running


@asynccontextmanager
async def open_test_hive(
    config: HiveConfig,
    path: str | os.PathLike[str] | None = None,
    *,
    autojump: bool = False,
    **options: Any,
) -> AsyncIterator[Hive]:
    """``open_hive`` for tests: a database in a fresh temporary directory unless
    ``path`` is given, and with ``autojump`` the settings a test under trio's
    autojump clock needs (the store's clock is ``trio.current_time`` and its
    transactions run inline, so no thread makes virtual time jump early). Scripted
    fakes in the config are bound to the hive (see :meth:`ScriptedBackend.bind`).
    Extra ``options`` go to ``open_hive`` (``grace``, ``tick``, ``system``...)."""
    if autojump:
        options.setdefault("clock", trio.current_time)
        options.setdefault("store_inline", True)
    with tempfile.TemporaryDirectory(prefix="hive-test-") as tmp:
        db = Path(tmp) / "hive.db" if path is None else Path(path)
        async with open_hive(db, config, **options) as hive:
            for role in [*config.kinds.values(), config.reviewer, config.planner]:
                backend = getattr(role, "backend", None)
                if isinstance(backend, _Recorder):
                    backend.bind(hive)
            yield hive


def run_autojump(async_fn: Callable[..., Any], *args: Any) -> Any:
    """``trio.run(async_fn, *args)`` under a fresh autojump ``MockClock``: what a
    hypothesis property calls once per example (each example gets its own run and
    clock; trio's scheduler is seeded by hypothesis, so examples replay)."""
    from trio.testing import MockClock

    return trio.run(async_fn, *args, clock=MockClock(autojump_threshold=0))


# =========================================================================== pytest

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixtures
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def hive_factory(tmp_path: Path) -> Callable[..., Any]:
        """A factory of hives on databases in the test's ``tmp_path``:
        ``async with hive_factory(config) as hive: ...``; pass ``db="name.db"`` to
        share or reopen a database, and any ``open_hive`` option. Real time: use it
        for command backends."""

        counter = iter(range(1_000_000))

        def make(config: HiveConfig, *, db: str | None = None, **options: Any) -> Any:
            path = tmp_path / (db or f"hive-{next(counter)}.db")
            return open_test_hive(config, path, **options)

        return make

    @pytest.fixture
    def autojump_hive(tmp_path: Path) -> Callable[..., Any]:
        """Like ``hive_factory``, for tests under trio's autojump clock: sleeps,
        timeouts, leases and backoff take no real time. The test must also take
        pytest-trio's ``autojump_clock`` fixture as an argument (pytest-trio only
        picks a clock from the test's own arguments); opening a hive without it
        raises ``RuntimeError``. For Python backends only -- a subprocess agent's
        real time would not line up with the virtual clock."""

        counter = iter(range(1_000_000))

        def make(config: HiveConfig, *, db: str | None = None, **options: Any) -> Any:
            from trio.testing import MockClock

            clock = trio.lowlevel.current_clock()
            if not (isinstance(clock, MockClock) and clock.autojump_threshold == 0):
                raise RuntimeError("autojump_hive needs the test to take the "
                                   "autojump_clock fixture as an argument too")
            path = tmp_path / (db or f"hive-{next(counter)}.db")
            return open_test_hive(config, path, autojump=True, **options)

        return make
else:  # pragma: no cover
    hive_factory = autojump_hive = None  # type: ignore[assignment]
