"""Properties of the whole hive: the real Queen, Workers, Reviewer, Planner and DB
actor, with scripted Python backends, under hypothesis-chosen task graphs, fault
schedules and (through trio's scheduler, seeded by hypothesis) interleavings.

Each example is its own ``trio.run`` under an autojump clock, with the store inline
on the trio thread, so an example replays exactly and a failure shrinks. After the
hive goes idle (a person approving or sending back escalated tasks), every rule of
the task state machine is checked (``hive_actors.testing.check_invariants``); with
faults that cannot change outcomes, each task must also end as the scripts say
(``predict``).
"""

from __future__ import annotations

import trio
from hypothesis import example, given, note
from hypothesis import strategies as st

from hive_actors.hive import HiveConfig, KindConfig
from hive_actors.testing import (
    FaultSpec,
    Script,
    ScriptedBackend,
    ScriptedPlanner,
    ScriptedReviewer,
    TaskGraph,
    TaskSpec,
    apply_faults,
    check_invariants,
    fault_schedules,
    open_test_hive,
    planned_tasks,
    predict,
    run_autojump,
    submit_graph,
    survive_injected_crash,
    task_graphs,
)

KINDS = ("a", "b")
LEASE = 30.0
TIMEOUT_B = 30.0  # kind "b" has a timeout (hangs and long sleeps fail); "a" has none
LIMIT = 3_000.0  # virtual seconds: a bound on a stuck hive, never a timing expectation


def make_config(backend, reviewer, planner, *, concurrency_a=2, concurrency_b=1):
    return HiveConfig(
        kinds={
            "a": KindConfig(backend=backend, concurrency=concurrency_a, review=False,
                            retry_delay=0.0),
            "b": KindConfig(backend=backend, concurrency=concurrency_b, timeout=TIMEOUT_B,
                            retry_delay=0.0),
        },
        reviewer=reviewer,
        planner=planner,
        lease_seconds=LEASE,
    )


async def run_scenario(graph: TaskGraph, faults, *, concurrency_a=2, concurrency_b=1):
    """Run ``graph`` under ``faults`` to idle; check invariants; return final statuses
    by key and the report."""
    backend, reviewer, planner = ScriptedBackend(), ScriptedReviewer(), ScriptedPlanner()
    config = make_config(backend, reviewer, planner, concurrency_a=concurrency_a,
                         concurrency_b=concurrency_b)
    async with open_test_hive(config, autojump=True, tick=1.0, grace=5.0) as hive:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                stored = await submit_graph(hive, graph)
                await apply_faults(hive, faults, stored, nursery)
                await survive_injected_crash(hive.wait_idle)
                # A person decides escalations: first sends odd ones back, then
                # approves whatever is escalated again.
                for round_ in range(2):
                    escalated = await survive_injected_crash(lambda: hive.list(status="escalated"))
                    for task in escalated:
                        approve = round_ == 1 or task.id % 2 == 0
                        await survive_injected_crash(lambda t=task, a=approve: hive.review(
                            t.id, approve=a, feedback=None if a else "person: redo"))
                    await survive_injected_crash(hive.wait_idle)
                nursery.cancel_scope.cancel()
            hive.system.faults.clear()
            # Let zombies (workers whose lease was expired under them) notice.
            await trio.sleep(LEASE)
            await hive.wait_idle()
            report = await check_invariants(hive, backends=[backend, reviewer, planner])
            by_key = await planned_tasks(hive, stored)
            final = {key: report.tasks[task.id].status for key, task in by_key.items()}
    return final, report


def expected(graph: TaskGraph) -> dict[str, str]:
    want = predict(
        graph,
        reviewed=lambda kind: kind == "b",
        timeouts={"a": None, "b": TIMEOUT_B},
        max_attempts={"a": 3, "b": 3},
    )
    # Escalated tasks are approved by the person in the end.
    return {key: "done" if status == "escalated" else status for key, status in want.items()}


graphs = task_graphs(KINDS, max_tasks=7, hang_kinds=("b",), plan=True)


@given(graph=graphs, faults=fault_schedules(KINDS, outcome_preserving=True),
       concurrency=st.tuples(st.integers(1, 3), st.integers(1, 2)))
@example(graph=TaskGraph((TaskSpec("t0", "a"),)), faults=[], concurrency=(1, 1))
@example(  # found: a SlotFree sent before a Queen restart freed a busy slot (fixed)
    graph=TaskGraph((
        TaskSpec("t0", "b", max_attempts=1, script=Script(hang=True)),
        TaskSpec("t1", "a", depends_on=("t0",), max_attempts=1),
        TaskSpec("t2", "b", script=Script(hang=True)),
        TaskSpec("t3", "a", depends_on=("t0",)),
        TaskSpec("t5", "b", script=Script(garbage=True)),
        TaskSpec("t6", "b", depends_on=("t0",), max_attempts=2, script=Script(hang=True)),
    )),
    faults=[FaultSpec("delay", "b", nth=5, seconds=20.0),
            FaultSpec("delay", "queen", nth=4, seconds=20.0),
            FaultSpec("crash", "queen", nth=10)],
    concurrency=(2, 1),
)
def test_tasks_end_as_their_scripts_say(graph, faults, concurrency):
    """With faults that cannot change outcomes (crashes of slots, of the Queen, of
    the DB actor while claiming; delays), every task ends as the model predicts and
    every invariant holds."""
    note(f"graph={graph!r}\nfaults={faults!r}")
    final, _ = run_autojump(lambda: run_scenario(graph, faults, concurrency_a=concurrency[0],
                                                 concurrency_b=concurrency[1]))
    want = expected(graph)
    if graph.planned:
        want["plan"] = "done"
    assert final == want


@given(graph=graphs, faults=fault_schedules(KINDS, task_keys=[f"t{i}" for i in range(7)]))
@example(
    graph=TaskGraph((TaskSpec("t0", "a", script=Script(sleep=45.0)),)),
    faults=[FaultSpec("expire", at=5.0, task="t0")],
)
@example(
    graph=TaskGraph((TaskSpec("t0", "b", script=Script(sleep=2.0)),
                     TaskSpec("t1", "a", depends_on=("t0",)))),
    faults=[FaultSpec("cancel", at=1.0, task="t0")],
)
@example(  # found: a restarted Queen handed work to a busy slot (fixed)
    graph=TaskGraph(tuple(TaskSpec(f"t{i}", "a", priority=int(i == 3), max_attempts=1,
                                   script=Script(sleep=45.0 if i == 3 else 0.0, garbage=True))
                          for i in range(5))),
    faults=[FaultSpec("crash", "queen", nth=1)],
)
@example(  # found: a failed heartbeat took the hive down (fixed)
    graph=TaskGraph((TaskSpec("t0", "a", max_attempts=1, script=Script(sleep=45.0)),)),
    faults=[FaultSpec("crash", "store", nth=1, message="Heartbeat")],
)
@example(  # a retried failure and a retried cancel
    graph=TaskGraph((TaskSpec("t0", "a", max_attempts=1, script=Script(fail_first=1)),
                     TaskSpec("t1", "a", depends_on=("t0",)))),
    faults=[FaultSpec("retry", at=5.0, task="t0"), FaultSpec("retry", at=6.0, task="t1")],
)
def test_invariants_hold_under_any_faults(graph, faults):
    """Under any fault schedule (crashes anywhere, stalls, expired leases, cancels)
    the hive still goes idle and every state-machine invariant holds."""
    note(f"graph={graph!r}\nfaults={faults!r}")
    run_autojump(lambda: run_scenario(graph, faults))
