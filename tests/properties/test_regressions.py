"""Cases the whole-hive properties found, kept as plain tests.

An injected DB actor crash reaches every asker of its batch, the test's own reads
included: those go through ``survive_injected_crash``.
"""

from __future__ import annotations

import trio

from hive_actors.hive import HiveConfig, KindConfig
from hive_actors.hive._model import SlotFree, Tick
from hive_actors.store import messages
from hive_actors.testing import (
    Script,
    ScriptedBackend,
    actor_pattern,
    check_invariants,
    crash_actor,
    survive_injected_crash,
)


def one_slot_config(backend):
    return HiveConfig(kinds={"k": KindConfig(backend=backend, concurrency=1, max_attempts=1,
                                             review=False, retry_delay=0.0)},
                      lease_seconds=30)


async def test_restarted_queen_does_not_hand_work_to_a_busy_slot(autojump_hive, autojump_clock):
    # Found by test_invariants_hold_under_any_faults: the Queen kept its free-slot
    # books in itself, so after a crash it took every slot for free and queued a
    # second task behind a long one in the busy slot's mailbox, where its lease ran
    # out unheartbeated (a lost attempt) and the agent then ran for a failed task.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        slow = await hive.submit(kind="k", title="slow", prompt=Script(sleep=45.0).prompt())
        while not hive.running():
            await trio.sleep(0.1)
        crash = crash_actor(hive, "queen", message_type="Tick")
        quick = await hive.submit(kind="k", title="quick")
        await hive.wait_idle(timeout=1000)
        assert crash.hits == 1
        assert (await hive.get(slow.id)).status == "done"
        assert (await hive.get(quick.id)).status == "done"
        await check_invariants(hive, backends=[backend])


async def test_a_slot_free_lost_with_a_crashing_queen_does_not_shrink_the_pool(autojump_hive, autojump_clock):
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        crash = crash_actor(hive, "queen", message_type=SlotFree)
        tasks = [await hive.submit(kind="k", title=f"t{i}") for i in range(3)]
        await hive.wait_idle(timeout=1000)
        assert crash.hits == 1
        assert [(await hive.get(t.id)).status for t in tasks] == ["done"] * 3
        await check_invariants(hive, backends=[backend])


async def test_a_db_actor_crash_does_not_kill_the_store_liveness_task(autojump_hive, autojump_clock):
    # Found by test_invariants_hold_under_any_faults: an injected crash of the DB
    # actor reaches every asker of its batch; the store's background liveness touch
    # did not catch it, so one DB actor crash (which supervision absorbs) took the
    # whole hive down with the touch's exception.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        crash = crash_actor(hive, "store", message_type="TouchHive")
        await trio.sleep(25)  # the touch runs every 10 s
        assert crash.hits == 1
        task = await hive.submit(kind="k", title="after the crash")
        done = await survive_injected_crash(lambda: hive.wait(task.id, timeout=100))
        assert done.status == "done"


async def test_a_slot_does_not_start_an_agent_for_a_lost_claim(autojump_hive, autojump_clock):
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        stall = hive.system.faults.stall(actor_pattern(hive, "k"))
        task = await hive.submit(kind="k", title="waits in the mailbox")
        await trio.sleep(40)  # past the 30 s lease: swept, failed (max_attempts=1)
        assert (await hive.get(task.id)).status == "failed"
        stall.release()
        await hive.wait_idle(timeout=100)
        await trio.sleep(1)
        await check_invariants(hive, backends=[backend])


async def test_a_failed_heartbeat_does_not_take_the_hive_down(autojump_hive, autojump_clock):
    # Found by test_invariants_hold_under_any_faults: a heartbeat that failed with
    # anything but StaleLease (here an injected DB actor crash; in production a
    # locked database) escaped _keep_leases and took the whole hive down.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        crash = crash_actor(hive, "store", message_type="Heartbeat")
        task = await hive.submit(kind="k", title="long", prompt=Script(sleep=45.0).prompt())
        done = await survive_injected_crash(lambda: hive.wait(task.id, timeout=1000))
        assert crash.hits == 1
        assert done.status == "done"
        await check_invariants(hive, backends=[backend])


async def test_a_crashed_slot_gives_its_task_back_even_if_the_first_try_fails(
        autojump_hive, autojump_clock):
    # Found by test_tasks_end_as_their_scripts_say: a slot that crashed before
    # starting its task gives it back when it restarts; when that store call failed
    # too, the task was forgotten and waited for its lease to expire (a lost
    # attempt: with max_attempts=1 the task failed).
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        crash_actor(hive, "k", message_type="Assign")
        crash_actor(hive, "store", message_type="Release")
        task = await hive.submit(kind="k", title="survives two crashes")
        done = await survive_injected_crash(lambda: hive.wait(task.id, timeout=1000))
        assert done.status == "done"
        report = await check_invariants(hive, backends=[backend])
        assert not [e for e in report.events if e.payload.get("expired")]


async def test_a_task_cancelled_before_its_attempt_started_never_runs(autojump_hive,
                                                                      autojump_clock):
    # Found by test_invariants_hold_under_any_faults (stress profile): a cancel that
    # landed after the claim but before the slot started the attempt missed it (the
    # Queen and Hive.cancel only stop attempts already running), and the agent ran
    # for a cancelled task.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        stall = hive.system.faults.stall(actor_pattern(hive, "k"))
        task = await hive.submit(kind="k", title="cancelled in the mailbox")
        while (await hive.get(task.id)).status != "running":
            await trio.sleep(0.1)
        await hive.cancel(task.id)
        await trio.sleep(1)
        stall.release()
        other = await hive.submit(kind="k", title="the slot still works")
        assert (await hive.wait(other.id, timeout=100)).status == "done"
        assert [call.task_id for call in backend.calls] == [other.id]
        await check_invariants(hive, backends=[backend])


async def test_a_queen_crashing_repeatedly_leaves_the_db_actor_alone(autojump_hive, autojump_clock):
    # The Queen has a supervisor of its own: five crashes in a row (more than the root
    # supervisor allows in its window) are restarts of the Queen, not the end of the
    # system, and the DB actor keeps its own restart budget.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        crash = crash_actor(hive, "queen", nth=None, message_type="Tick", times=5)
        task = await hive.submit(kind="k", title="t")
        await hive.wait_idle(timeout=1000)
        while crash.hits < 5:
            await trio.sleep(1)
        assert (await hive.get(task.id)).status == "done"
        later = await hive.submit(kind="k", title="after the crashes")
        assert (await hive.wait(later.id, timeout=1000)).status == "done"
        await check_invariants(hive, backends=[backend])


async def test_a_cancel_lost_in_a_queen_crash_still_stops_the_attempt(autojump_hive, autojump_clock):
    # Found in review: the Queen took its mailbox in batches, so a crash dropped the
    # task.cancelled event of the same batch and the attempt ran on until a heartbeat
    # (lease/3) found it cancelled. Cancellations now reach the slots from the runtime's
    # store watcher, whatever the Queen is doing.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        slow = await hive.submit(kind="k", title="slow", prompt=Script(sleep=1000.0).prompt())
        while not hive.running():
            await trio.sleep(0.1)
        faults, pattern = hive.system.faults, actor_pattern(hive, "queen")
        busy, fatal = Tick(sweep=False), Tick(sweep=False)
        faults.delay(pattern, 1.0, when=lambda m: m is busy, times=1)  # the Queen is held...
        crash = faults.crash(pattern, when=lambda m: m is fatal, times=1)
        hive._rt.queen.tell_nowait(busy)
        await trio.sleep(0.1)
        start = trio.current_time()
        await hive.store.cancel(slow.id, actor="another process")  # ...while these queue up
        hive._rt.queen.tell_nowait(fatal)
        while hive.running():
            await trio.sleep(0.01)
        assert trio.current_time() - start < 2.0  # a heartbeat would take lease/3 = 10 s
        while crash.hits < 1:  # then the Queen crashes on the batch that held the event
            await trio.sleep(0.1)
        later = await hive.submit(kind="k", title="after the crash")
        assert (await hive.wait(later.id, timeout=1000)).status == "done"


async def test_a_cancel_during_the_start_check_keeps_the_agent_from_starting(autojump_hive, autojump_clock):
    # Found in review: an Assign that waited past 2/3 of the lease makes the slot
    # heartbeat before starting; a cancel in the same DB batch, after that heartbeat,
    # was noted for the slot but the check had already passed, and the agent ran.
    backend = ScriptedBackend()
    async with autojump_hive(one_slot_config(backend)) as hive:
        faults = hive.system.faults
        slot_stall = faults.stall(actor_pattern(hive, "k"))
        task = await hive.submit(kind="k", title="t", prompt=Script(sleep=1000.0).prompt())
        while (await hive.get(task.id)).status != "running":
            await trio.sleep(0.1)
        await trio.sleep(25)  # the Assign waits in the stalled mailbox: the lease ages
        marker = messages.Get(task.id)
        store_stall = faults.stall(actor_pattern(hive, "store"), when=lambda msg: msg is marker)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hive.store.ref.ask, marker)
            await trio.sleep(0.1)
            slot_stall.release()
            await trio.sleep(0.1)  # the slot's heartbeat waits in the store's mailbox...
            nursery.start_soon(hive.store.cancel, task.id)
            await trio.sleep(0.1)  # ...with the cancel behind it: one batch
            store_stall.release()
        await trio.sleep(5)
        assert not hive.running() and not backend.calls
        assert (await hive.get(task.id)).status == "cancelled"
        assert task.id not in hive._rt.cancelled
