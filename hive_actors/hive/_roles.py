"""The Hive's actors: the Queen, and the slot actors (Worker, Reviewer, Planner).

Each slot actor runs one attempt at a time: the Queen claims ready tasks from the
store for free slots and hands each to a slot with ``Assign``; the slot runs the
backend, heartbeats the lease, reports with the fencing token, then tells the Queen
it is free again.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ..actors import Actor, ActorRef, ActorStopped, MailboxFull
from ..store import InvalidPlan, StaleLease, StoreError, Task
from ._model import Assign, Pump, SlotFree, Tick, Verdict, json_problem

if TYPE_CHECKING:
    from ._hive import _Runtime

log = logging.getLogger("hive_actors.hive")

PLAN_KIND = "plan"
REVIEW_POOL = "review"

# Events that wake the Queen: anything that can make a task claimable or a slot free.
QUEEN_TOPICS = frozenset({"task.queued", "task.done", "task.review", "task.cancelled",
                          "plan.stored", "task.recovered", "task.retrying", "task.rejected"})


class _Slot(Actor):
    """One slot of a pool: runs one attempt at a time (base of the three roles)."""

    def __init__(self, runtime: _Runtime, pool: str) -> None:
        self.rt = runtime
        self.pool = pool
        self.current: tuple[Task, trio.CancelScope] | None = None
        self.release_reason: str | None = None  # set when the attempt is cancelled

    async def started(self) -> None:
        # After a restart (a crash), give back a task handed to us that we never
        # reported (we crashed before starting it), then offer ourselves again; at
        # first start the Queen already counts every slot as free.
        task = self.rt.assigned.get(self.ref)
        if task is not None:
            # Forgotten only once given back: if the store call itself fails, this
            # start crashes and the next restart tries again.
            await self._report(self.rt.store.release, task, "worker crashed before the attempt")
            self.rt.assigned.pop(self.ref, None)
        if self.rt.queen is not None:
            await self.rt.queen.tell(SlotFree(self.pool, self.ref, restarted=True))

    async def handle(self, message: Any) -> None:
        if not isinstance(message, Assign):
            raise TypeError(f"{self.ref.name} got {message!r}, expected Assign")
        task = message.task
        try:
            await self._attempt(task)
        except BaseException:
            # A crash (or hard cancellation) mid-task: give the task back at once
            # rather than after its lease runs out.
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._report(self.rt.store.release, task, "worker stopped mid-attempt")
            raise
        # Free in the shared books first: a SlotFree lost with a crashing Queen
        # must not keep this slot busy for ever.
        self.rt.assigned.pop(self.ref, None)
        if self.rt.queen is not None:
            self.rt.queen.tell_nowait(SlotFree(self.pool, self.ref))  # unbounded mailbox

    async def _attempt(self, task: Task) -> None:
        rt = self.rt
        self.release_reason = None
        if not await self._still_ours(task):
            return
        with trio.CancelScope() as scope:
            rt.attempt_started(task.id, self)
            self.current = (task, scope)
            try:
                await self.run(task)
            finally:
                self.current = None
                rt.attempt_ended(task.id)
        if scope.cancelled_caught and self.release_reason == "shutdown":
            await self._report(self.rt.store.release, task, "hive shutting down")

    async def _still_ours(self, task: Task) -> bool:
        """Whether the claim behind an ``Assign`` still holds, checked before the agent
        starts: the message may have waited in a stalled mailbox while the task was
        cancelled, or its lease ran out and the task was swept or claimed again."""
        rt = self.rt
        margin = rt.lease_seconds / 3  # a lease this close to its end is verified
        if task.lease_expires_at is None or rt.clock() >= task.lease_expires_at - margin:
            try:
                await rt.store.heartbeat(task.id, task.fencing_token, rt.lease_seconds)
            except StaleLease:
                log.warning("%s: task %s is no longer ours; not starting it", self.ref.name, task.id)
                rt.cancelled.discard(task.id)
                return False
        if task.id in rt.cancelled:  # checked last: a cancel may land during the heartbeat
            rt.cancelled.discard(task.id)
            return False
        return True

    def cancel_attempt(self, reason: str) -> None:
        """Cancel the running attempt (its agent is killed); ``reason`` says why."""
        if self.current is not None:
            self.release_reason = reason
            self.current[1].cancel()

    async def heartbeat(self) -> None:
        """Extend the lease of the running attempt; a lost lease cancels it."""
        if self.current is None:
            return
        task = self.current[0]
        try:
            await self.rt.store.heartbeat(task.id, task.fencing_token, self.rt.lease_seconds)
        except StaleLease:
            # Re-claimed, cancelled (possibly by another process) or finished.
            if self.current is not None and self.current[0] is task:
                log.warning("%s: lease on task %s lost; stopping its attempt", self.ref.name, task.id)
                self.cancel_attempt("stale")
        except Exception as exc:
            # The store could not take this heartbeat (locked database, a DB actor
            # crash on this batch...): the next one, a third of a lease later, will
            # do. Raising here would take the whole hive down from _keep_leases.
            log.warning("%s: heartbeat of task %s failed: %r", self.ref.name, task.id, exc)

    async def _report(self, operation: Callable[..., Any], task: Task, *args: Any, **kw: Any) -> Any:
        """Call a store operation with this attempt's token; a stale token is logged."""
        try:
            return await operation(task.id, task.fencing_token, *args, actor=self.ref.name, **kw)
        except StaleLease as exc:
            log.warning("%s: %s", self.ref.name, exc)
        except StoreError as exc:
            log.warning("%s: could not report task %s: %s", self.ref.name, task.id, exc)
        return None

    async def run(self, task: Task) -> None:
        """Run one attempt of ``task`` and report its outcome to the store."""
        raise NotImplementedError

    # -- helpers shared by the roles --------------------------------------------

    def workspace(self, task: Task) -> Path:
        path = self.rt.workspaces / str(task.id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def call_backend(self, backend: Any, loop: str, task: Task) -> Any:
        if loop == "asyncio":
            import trio_asyncio

            return await trio_asyncio.aio_as_trio(backend)(task)
        return await backend(task)

    async def run_command(self, argv: Any, task: Task, *, timeout: float | None, stdin: str,  # noqa: ASYNC109
                          log_name: str, phases: Any = None, record: bool = True) -> Any:
        """Run a command agent for ``task`` in its workspace; with ``record``, its
        process group is written on the run row of the attempt (or review) that
        ``task.fencing_token`` holds (so it can be killed from another process, or
        after a crash)."""

        async def record_pgid(pgid: int) -> None:
            try:
                await self.rt.store.record_run(task.id, task.fencing_token, pgid=pgid)
            except StoreError as exc:  # stale: the attempt is being cancelled anyway
                log.warning("%s: could not record agent pgid %s: %s", self.ref.name, pgid, exc)

        workspace = self.workspace(task)
        kw = dict(workspace=workspace, attempt=task.attempts, timeout=timeout, stdin=stdin,
                  log_path=workspace / log_name, on_spawn=record_pgid if record else None)
        if phases:
            steps = [(phase.name, phase.command) for phase in phases]
            return await self.rt.launcher.run_phases(steps, task, **kw)
        return await self.rt.launcher.run(argv, task, **kw)


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _command_failure(result: Any) -> str:
    """Why a command attempt failed: the runner's reason and the agent's last words."""
    reason = result.error or f"exit code {result.exit_code}"
    lines = [line for line in result.output_tail.splitlines() if line.strip()]
    return f"{reason}: {lines[-1].strip()[:300]}" if lines and not result.timed_out else reason


class Worker(_Slot):
    """Runs attempts of one kind with the kind's backend or command."""

    async def run(self, task: Task) -> None:
        rt = self.rt
        kind = rt.config.kinds[task.kind]
        review = rt.config.needs_review(task.kind)
        if kind.backend is not None:
            result, error = None, None
            try:
                if kind.timeout is None:
                    result = await self.call_backend(kind.backend, kind.loop, task)
                else:
                    with trio.fail_after(kind.timeout):
                        result = await self.call_backend(kind.backend, kind.loop, task)
            except trio.TooSlowError:
                error = f"timeout: the backend ran longer than {kind.timeout} s"
            except Exception as exc:
                error = _error_text(exc)
            if error is None:
                error = json_problem(result)
            if error is not None:
                await self._report(rt.store.fail, task, error)
            else:
                await self._report(rt.store.succeed, task, result, review=review)
            return
        outcome = await self.run_command(
            kind.command, task, timeout=kind.timeout, stdin=kind.stdin,
            log_name=f"attempt-{task.attempts}.log", phases=kind.phases,
        )
        if outcome.ok:
            await self._report(rt.store.succeed, task, outcome.result, review=review,
                               exit_code=outcome.exit_code, output_tail=outcome.output_tail)
        else:
            await self._report(rt.store.fail, task, _command_failure(outcome),
                               exit_code=outcome.exit_code, output_tail=outcome.output_tail)


def verdict_from(value: Any) -> Verdict:
    """A reviewer backend's answer as a Verdict: a Verdict, a bool, or a mapping."""
    if isinstance(value, Verdict):
        return value
    if isinstance(value, bool):
        return Verdict(approved=value)
    if isinstance(value, Mapping):
        return Verdict(approved=bool(value.get("approved", False)),
                       feedback=value.get("feedback") or "",
                       escalate=bool(value.get("escalate", False)))
    raise TypeError(f"a reviewer must return a Verdict, a bool or a mapping, got {value!r}")


class Reviewer(_Slot):
    """Reviews finished attempts: approve → done, reject → rework, escalate → a person."""

    async def run(self, task: Task) -> None:
        rt = self.rt
        reviewer = rt.config.reviewer
        try:
            if reviewer.backend is not None:
                verdict = verdict_from(await self.call_backend(reviewer.backend, reviewer.loop, task))
            else:
                verdict = await self._command_verdict(task)
        except Exception as exc:
            # A reviewer that cannot decide hands the decision to a person.
            verdict = Verdict(escalate=True, feedback=f"reviewer failed: {_error_text(exc)}")
        store = rt.store
        if verdict.escalate:
            await self._report(_with_token(store.escalate), task, verdict.feedback)
        elif verdict.approved:
            await self._report(_with_token(store.approve), task)
        else:
            await self._report(_with_token(store.reject), task, verdict.feedback or "rejected")

    async def _command_verdict(self, task: Task) -> Verdict:
        reviewer = self.rt.config.reviewer
        outcome = await self.run_command(
            reviewer.command, task, timeout=reviewer.timeout, stdin=reviewer.stdin,
            log_name=f"review-{task.attempts}.log",
        )
        try:  # on the review's run row, which the verdict closes
            await self.rt.store.record_run(task.id, task.fencing_token, exit_code=outcome.exit_code,
                                           output_tail=outcome.output_tail)
        except StoreError as exc:  # stale: the verdict will be refused too
            log.warning("%s: could not record the review of task %s: %s", self.ref.name, task.id, exc)
        if outcome.timed_out:
            raise TimeoutError("the reviewer command timed out")
        result = outcome.result
        if isinstance(result, Mapping) and ("approved" in result or "escalate" in result):
            return verdict_from(result)
        return Verdict(approved=outcome.exit_code == 0, feedback=outcome.stdout.strip()[-8000:])


def _with_token(operation: Callable[..., Any]) -> Callable[..., Any]:
    """Adapt approve/reject/escalate (token as keyword) to _report's calling style."""

    async def call(task_id: int, token: int, *args: Any, **kw: Any) -> Any:
        return await operation(task_id, *args, token=token, **kw)

    return call


def parse_plan(value: Any, kinds: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Check a planner's answer; return its subtasks or raise InvalidPlan naming the problem."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InvalidPlan(f"the planner's output is not JSON: {exc}") from None
    if isinstance(value, Mapping):
        if "tasks" not in value:
            raise InvalidPlan('the planner\'s JSON object has no "tasks" list')
        value = value["tasks"]
    if not isinstance(value, list):
        raise InvalidPlan(f"a plan must be a list of subtasks, got {type(value).__name__}")
    subtasks = []
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise InvalidPlan(f"subtask {index} is not an object: {entry!r:.200}")
        for field in ("key", "title", "kind"):
            if not isinstance(entry.get(field), str) or not entry.get(field):
                raise InvalidPlan(f"subtask {index} has no {field!r} (a non-empty string)")
        kind = entry["kind"]
        if kind not in kinds:
            raise InvalidPlan(
                f"subtask {entry['key']!r} has unknown kind {kind!r}; known: {', '.join(sorted(kinds))}"
            )
        depends_on = entry.get("depends_on", [])
        if isinstance(depends_on, str) or not isinstance(depends_on, list | tuple):
            raise InvalidPlan(f"subtask {entry['key']!r}: depends_on must be a list of keys")
        priority = entry.get("priority", 0)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InvalidPlan(f"subtask {entry['key']!r}: priority must be an integer")
        prompt = entry.get("prompt", "")
        if not isinstance(prompt, str):
            raise InvalidPlan(f"subtask {entry['key']!r}: prompt must be a string")
        config = kinds[kind]
        subtasks.append({
            "key": entry["key"], "title": entry["title"], "kind": kind, "prompt": prompt,
            "depends_on": list(depends_on), "priority": priority,
            "max_attempts": config.max_attempts, "retry_delay": config.retry_delay,
        })
    return subtasks


class Planner(_Slot):
    """Turns a ``plan`` task into subtasks with dependencies, stored atomically."""

    async def run(self, task: Task) -> None:
        rt = self.rt
        planner = rt.config.planner
        try:
            if planner.backend is not None:
                answer = await self.call_backend(planner.backend, planner.loop, task)
            else:
                outcome = await self.run_command(
                    planner.command, task, timeout=planner.timeout, stdin=planner.stdin,
                    log_name=f"attempt-{task.attempts}.log",
                )
                if not outcome.ok:
                    await self._report(rt.store.fail, task, "planner " + _command_failure(outcome),
                                       exit_code=outcome.exit_code,
                        output_tail=outcome.output_tail)
                    return
                # The whole stdout is the plan; a plan on the last line after some
                # chatter is accepted too.
                last_line = outcome.result
                answer = last_line if isinstance(last_line, Mapping) and "tasks" in last_line \
                    else outcome.stdout
            subtasks = parse_plan(answer, rt.config.kinds)
            stored = await rt.store.store_plan(
                task.id, task.fencing_token, subtasks, result={"subtasks": len(subtasks)},
                actor=self.ref.name,
            )
            log.info("%s: plan %s stored with %d subtasks", self.ref.name, task.id, len(stored.tasks))
        except InvalidPlan as exc:
            await self._report(rt.store.fail, task, f"invalid plan: {exc}", retry=False)
        except StaleLease as exc:
            log.warning("%s: %s", self.ref.name, exc)
        except Exception as exc:
            await self._report(rt.store.fail, task, f"planner failed: {_error_text(exc)}")


class Queen(Actor):
    """Hands ready tasks to free slots, per pool, by priority then age.

    Reacts to store events (a ``Pump`` from the runtime's store watcher), freed slots
    and a periodic tick, on which it also sweeps expired leases.  It takes its mailbox
    in batches: every message already waiting is read first, then one claim pass
    serves them all.  It never waits on a slot: it only assigns to slots it knows are
    free.  Which slot holds which task lives in the runtime (``rt.assigned``), not in
    the Queen, so a restarted Queen does not hand work to busy slots.
    """

    def __init__(self, runtime: _Runtime, pools: Mapping[str, list[ActorRef]]) -> None:
        self.rt = runtime
        busy = runtime.assigned
        self.free = {pool: deque(s for s in slots if s not in busy) for pool, slots in pools.items()}
        self.free_set = {pool: set(free) for pool, free in self.free.items()}
        # Each slot's lease name (``k-0`` for ``k-0-140...``), worked out once.
        self.labels = {slot: slot.name.rsplit("-", 1)[0] for slots in pools.values() for slot in slots}
        self.assigned = busy  # slot -> the task it was given and has not finished

    async def started(self) -> None:
        # Events reach the runtime's store watcher (``_Runtime.on_events``), which stops
        # cancelled attempts at once and asks the Queen for a claim pass with a Pump:
        # none is lost while the Queen restarts. A first pass for work already waiting
        # (at the first start, ``rt.queen`` is not set yet):
        self.ref.tell_nowait(Pump())  # unbounded mailbox
        self.rt.pump_pending = True

    async def handle_batch(self, messages: list[Any]) -> None:
        rt = self.rt
        rt.pump_pending = False  # events from now on ask for another pass
        sweep = False
        unknown = []
        for message in messages:
            if isinstance(message, SlotFree):
                self._slot_free(message)
            elif isinstance(message, Tick):
                sweep = sweep or message.sweep
            elif not isinstance(message, Pump):
                unknown.append(message)
        if unknown:  # after the others were handled: a crash loses only these
            raise TypeError(f"the Queen got {unknown[0]!r}")
        if sweep and not rt.closing:
            await rt.store.sweep_leases()
        await self._claim()

    def _slot_free(self, message: SlotFree) -> None:
        # A slot clears its own entry in the books (giving back, after a crash, a
        # task it never started) before it says it is free: an entry there now is a
        # newer assignment and this SlotFree is stale (sent before a restart of the
        # Queen, which rebuilt its free lists from the books).
        if message.slot in self.assigned:
            log.debug("stale SlotFree from %s ignored", message.slot.name)
        elif message.slot not in self.free_set[message.pool]:
            self.free_set[message.pool].add(message.slot)
            self.free[message.pool].append(message.slot)

    async def _claim(self) -> None:
        rt = self.rt
        if rt.closing:
            return
        for pool, free in self.free.items():
            if not free:
                continue
            # Leased in the slots' names (``k-0``, ``review-0``...): that is what
            # runs.worker shows.
            workers = tuple(map(self.labels.__getitem__, free))
            if pool == REVIEW_POOL:
                tasks = await rt.store.claim_review(
                    len(free), "reviewer", rt.lease_seconds, kinds=tuple(rt.config.kinds),
                    actor="queen", workers=workers)
            else:
                tasks = await rt.store.claim(pool, len(free), pool, rt.lease_seconds, actor="queen",
                                             workers=workers)
            for task in tasks:
                slot = free.popleft()
                self.free_set[pool].discard(slot)
                self.assigned[slot] = task
                try:
                    slot.tell_nowait(Assign(task))
                except ActorStopped:
                    del self.assigned[slot]
                    await self._give_back(task)

    async def _give_back(self, task: Task) -> None:
        """Re-queue a task whose slot crashed or vanished (no-op if already reported)."""
        try:
            await self.rt.store.release(task.id, task.fencing_token,
                                        "worker crashed mid-attempt", actor="queen")
        except StoreError:
            pass  # the slot reported (or released) it before going down: nothing to do


async def tick_queen(queen: ActorRef, interval: float) -> None:
    """Send the Queen a Tick every ``interval`` seconds (a sweep every few ticks)."""
    n = 0
    while True:
        await trio.sleep(interval)
        n += 1
        try:
            queen.tell_nowait(Tick(sweep=n % 4 == 0))
        except ActorStopped:
            return
        except MailboxFull:
            log.debug("queen mailbox full; tick skipped (the next one will do)")
