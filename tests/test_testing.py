"""The public test kit, ``hive_actors.testing``, as a user's tests would use it."""

from __future__ import annotations

import sqlite3

import pytest
import trio
from hypothesis import given, settings

from hive_actors.hive import HiveConfig, KindConfig
from hive_actors.testing import (
    InvariantViolation,
    Script,
    ScriptedBackend,
    ScriptedReviewer,
    TaskGraph,
    TaskSpec,
    actor_pattern,
    check_invariants,
    crash_actor,
    expire_lease_now,
    failing_backend,
    fault_schedules,
    garbage_backend,
    hang_backend,
    predict,
    task_graphs,
)


def config_for(backend, **kind):
    kind.setdefault("retry_delay", 0.0)
    return HiveConfig(kinds={"k": KindConfig(backend=backend, **kind)})


async def test_hive_factory_gives_a_working_hive(hive_factory, tmp_path):
    async with hive_factory(config_for(failing_backend(0))) as hive:
        task = await hive.submit(kind="k", title="t")
        assert (await hive.wait(task.id, timeout=10)).status == "done"
        assert hive.path.startswith(str(tmp_path))


async def test_autojump_hive_requires_the_autojump_clock(autojump_hive):
    with pytest.raises(RuntimeError, match="autojump_clock"):
        autojump_hive(config_for(failing_backend(0)))


async def test_failing_backend_fails_n_times_then_succeeds(autojump_hive, autojump_clock):
    backend = failing_backend(2, result={"fine": True})
    async with autojump_hive(config_for(backend, max_attempts=3)) as hive:
        task = await hive.submit(kind="k", title="t")
        done = await hive.wait(task.id, timeout=100)
        assert (done.status, done.attempts, done.result) == ("done", 3, {"fine": True})
        await check_invariants(hive)


async def test_hang_backend_is_stopped_by_the_timeout(autojump_hive, autojump_clock):
    backend = hang_backend()
    async with autojump_hive(config_for(backend, timeout=5, max_attempts=2)) as hive:
        task = await hive.submit(kind="k", title="t")
        done = await hive.wait(task.id, timeout=100)
        assert done.status == "failed" and "timeout" in done.error
        assert (backend.calls, backend.cancelled, backend.running) == (2, 2, 0)


@pytest.mark.parametrize("kind", ["object", "nan", "bytes", "set", "cycle"])
async def test_garbage_results_fail_the_attempt_clearly(autojump_hive, autojump_clock, kind):
    async with autojump_hive(config_for(garbage_backend(kind), max_attempts=1)) as hive:
        task = await hive.submit(kind="k", title="t")
        done = await hive.wait(task.id, timeout=100)
        assert done.status == "failed" and "JSON" in done.error, done.error
        await check_invariants(hive)


async def test_crash_actor_crashes_the_worker_and_the_task_survives(autojump_hive, autojump_clock):
    backend = ScriptedBackend()
    async with autojump_hive(config_for(backend, max_attempts=1)) as hive:
        fault = crash_actor(hive, "k", message_type="Assign")
        assert actor_pattern(hive, "k").startswith("k-*-")
        task = await hive.submit(kind="k", title="t")
        done = await hive.wait(task.id, timeout=100)
        assert fault.hits == 1 and done.status == "done"
        assert len(backend.calls) == 1  # the crashed slot never ran the backend
        await check_invariants(hive, backends=[backend])


async def test_actor_pattern_rejects_unknown_roles(autojump_hive, autojump_clock):
    async with autojump_hive(config_for(ScriptedBackend())) as hive:
        assert actor_pattern(hive, "store") == "store"
        assert actor_pattern(hive, "queen").startswith("queen-")
        with pytest.raises(ValueError, match="no role or pool"):
            actor_pattern(hive, "nope")


async def test_expire_lease_now_makes_the_worker_a_zombie(autojump_hive, autojump_clock):
    backend = ScriptedBackend()
    async with autojump_hive(config_for(backend, max_attempts=3)) as hive:
        task = await hive.submit(kind="k", title="t", prompt=Script(sleep=5.0).prompt())
        while not hive.running():
            await trio.sleep(0.1)
        swept = await expire_lease_now(hive, task.id)
        assert swept.status == "queued" and swept.error.startswith("lease of")
        done = await hive.wait(task.id, timeout=100)
        assert done.status == "done" and done.attempts == 2
        assert done.result["token"] == 2  # the zombie's result (token 1) was refused
        await check_invariants(hive, backends=[backend])
        with pytest.raises(ValueError, match="holds no lease"):
            await expire_lease_now(hive, task.id)


async def test_scripted_reviewer_rejects_then_approves(autojump_hive, autojump_clock):
    backend, reviewer = ScriptedBackend(), ScriptedReviewer()
    config = HiveConfig(kinds={"k": KindConfig(backend=backend, retry_delay=0.0)},
                        reviewer=reviewer)
    async with autojump_hive(config) as hive:
        task = await hive.submit(kind="k", title="t", prompt=Script(reject_first=1).prompt())
        done = await hive.wait(task.id, timeout=100)
        assert done.status == "done" and done.feedback == "rework 1"
        assert [c.number for c in reviewer.calls_for(task.id)] == [1, 2]
        await check_invariants(hive, backends=[backend, reviewer])


async def test_check_invariants_catches_a_second_task_done(autojump_hive, autojump_clock):
    async with autojump_hive(config_for(ScriptedBackend())) as hive:
        task = await hive.submit(kind="k", title="t")
        await hive.wait(task.id, timeout=100)
        await check_invariants(hive)
        conn = sqlite3.connect(hive.path)  # tamper behind the store's back
        conn.execute("INSERT INTO events (ts, type, task_id, payload) VALUES "
                     "(0, 'task.done', ?, '{\"kind\": \"k\", \"status\": \"done\"}')", (task.id,))
        conn.commit()
        conn.close()
        with pytest.raises(InvariantViolation, match="task.done 2 times"):
            await check_invariants(hive)


def test_predict_follows_scripts_and_dependencies():
    graph = TaskGraph((
        TaskSpec("a", "k", max_attempts=2, script=Script(fail_first=1)),
        TaskSpec("b", "k", max_attempts=2, script=Script(fail_first=2)),
        TaskSpec("c", "k", depends_on=("b",)),
        TaskSpec("d", "k", depends_on=("a",), script=Script(reject_first=1, escalate=True)),
    ))
    assert predict(graph) == {"a": "done", "b": "failed", "c": "cancelled", "d": "done"}
    assert predict(graph, reviewed=lambda kind: True)["d"] == "escalated"


@settings(max_examples=50)
@given(graph=task_graphs(("x", "y"), max_tasks=10, plan=True), faults=fault_schedules(("x", "y")))
def test_strategies_draw_valid_graphs_and_schedules(graph, faults):
    keys = [spec.key for spec in graph.tasks]
    assert len(set(keys)) == len(keys)
    seen: set[str] = set()
    needed = {d for spec in graph.tasks for d in spec.depends_on}
    for spec in graph.tasks:
        assert set(spec.depends_on) <= seen  # a DAG, in submission order
        assert not (spec.script.escalate and spec.key in needed)
        if spec.key in graph.planned:
            assert all(d in graph.planned for d in spec.depends_on)
        seen.add(spec.key)
    assert sum(f.target in ("queen", "store") and f.action == "crash" for f in faults) <= 1
