"""Supervision: strategies, restart types, intensity, nesting, escalation, death watch."""

import pytest
import trio
import trio.lowlevel

import hive_actors
from hive_actors import SupervisorGaveUp, Terminated


class Child(hive_actors.Actor):
    """Counts its incarnations in a shared dict; crashes on 'crash'."""

    def __init__(self, starts):
        self.starts = starts

    async def started(self):
        self.starts[self.ref.name] = self.starts.get(self.ref.name, 0) + 1

    async def handle(self, message):
        if message == "crash":
            raise RuntimeError(f"{self.ref.name} crashed")
        return message


class Collector(hive_actors.Actor):
    def __init__(self):
        self.got = []

    async def handle(self, message):
        if message == "get":
            return list(self.got)
        self.got.append(message)


async def crash(ref):
    await ref.tell("crash")
    await ref.ask("ping")  # returns once the restarted actor serves again


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [
        ("one_for_one", {"a": 1, "b": 2, "c": 1}),
        ("one_for_all", {"a": 2, "b": 2, "c": 2}),
        ("rest_for_one", {"a": 1, "b": 2, "c": 2}),
    ],
)
async def test_strategies(strategy, restarted):
    starts = {}
    async with hive_actors.open_actor_system() as system:
        sup = await system.spawn_supervisor("sup", strategy=strategy)
        refs = {n: await sup.spawn(Child, starts, name=n) for n in "abc"}
        await crash(refs["b"])
        for ref in refs.values():
            assert await ref.ask("ping") == "ping"
        assert starts == restarted


async def test_restart_types():
    starts = {}
    async with hive_actors.open_actor_system() as system:
        sup = await system.spawn_supervisor("sup")
        perm = await sup.spawn(Child, starts, name="perm", restart="permanent")
        trans = await sup.spawn(Child, starts, name="trans", restart="transient")
        temp = await sup.spawn(Child, starts, name="temp", restart="temporary")
        await crash(perm)
        await crash(trans)
        await temp.tell("crash")
        with trio.fail_after(1):
            while temp.alive:
                await trio.lowlevel.checkpoint()
        assert starts == {"perm": 2, "trans": 2, "temp": 1}
        # stopped on request: never restarted, whatever the type
        await perm.stop()
        assert not perm.alive and starts["perm"] == 2


async def test_temporary_sibling_is_dropped_by_one_for_all():
    starts = {}
    async with hive_actors.open_actor_system() as system:
        sup = await system.spawn_supervisor("sup", strategy="one_for_all")
        a = await sup.spawn(Child, starts, name="a")
        temp = await sup.spawn(Child, starts, name="temp", restart="temporary")
        await crash(a)
        assert not temp.alive
        assert starts == {"a": 2, "temp": 1}


async def test_intensity_window_uses_trio_clock(autojump_clock):
    starts = {}
    async with hive_actors.open_actor_system() as system:
        sup = await system.spawn_supervisor("sup", max_restarts=2, within=10)
        ref = await sup.spawn(Child, starts, name="a")
        for _ in range(6):  # 6 crashes, but never more than 2 within 10 s
            await crash(ref)
            await trio.sleep(6)
        assert starts["a"] == 7


async def test_top_level_supervisor_giving_up_stops_the_system(autojump_clock):
    starts = {}
    stopped = []

    class Bystander(hive_actors.Actor):
        async def stopped(self):
            stopped.append(self.ref.name)

    with pytest.RaisesGroup(SupervisorGaveUp):
        async with hive_actors.open_actor_system() as system:
            by = await system.spawn(Bystander, name="bystander")
            sup = await system.spawn_supervisor("sup", max_restarts=2, within=5)
            ref = await sup.spawn(Child, starts, name="a")
            await crash(ref)
            await crash(ref)
            await ref.tell("crash")  # the third within 5 s: gives up
            await trio.sleep(1000)
            pytest.fail("the block should have been cancelled")
    assert starts["a"] == 3
    assert stopped == ["bystander"]
    assert not by.alive and not ref.alive


async def test_root_gives_up_after_three_restarts_within_five_seconds(autojump_clock):
    starts = {}
    with pytest.RaisesGroup(SupervisorGaveUp):
        async with hive_actors.open_actor_system() as system:
            ref = await system.spawn(Child, starts, name="a")
            for _ in range(3):
                await crash(ref)
            await ref.tell("crash")
            await trio.sleep(1000)
    assert starts["a"] == 4


async def test_nested_supervisor_giving_up_is_one_crash_of_its_parent(autojump_clock):
    starts = {}
    with pytest.RaisesGroup(SupervisorGaveUp):
        async with hive_actors.open_actor_system() as system:
            top = await system.spawn_supervisor("top", max_restarts=1, within=60)
            inner = await top.spawn_supervisor("inner", max_restarts=1, within=60)
            a = await inner.spawn(Child, starts, name="a")
            b = await inner.spawn(Child, starts, name="b")
            await crash(a)  # inner restarts a
            await crash(a)  # inner gives up; top restarts inner, which rebuilds a and b
            assert await b.ask("ping") == "ping" and system.lookup("b") is b
            assert starts == {"a": 3, "b": 2}
            await crash(a)  # the rebuilt inner has a fresh window: restarts a
            assert starts == {"a": 4, "b": 2}
            await a.tell("crash")  # inner gives up again: top's 2nd restart in 60 s
            await trio.sleep(1000)  # top gives up: the system stops
    assert starts == {"a": 4, "b": 2}


async def test_escalation_chain_reaches_the_system(autojump_clock):
    starts = {}
    with pytest.RaisesGroup(SupervisorGaveUp):
        async with hive_actors.open_actor_system() as system:
            top = await system.spawn_supervisor("top", max_restarts=0, within=60)
            inner = await top.spawn_supervisor("inner", max_restarts=0, within=60)
            a = await inner.spawn(Child, starts, name="a")
            await a.tell("crash")
            await trio.sleep(1000)
    assert starts == {"a": 1}


async def test_death_watch():
    starts = {}
    async with hive_actors.open_actor_system() as system:
        watcher = await system.spawn(Collector)
        a = await system.spawn(Child, starts)
        temp = await system.spawn(Child, starts, restart="temporary")
        await system.watch(a, watcher)
        await system.watch(temp, watcher)
        await crash(a)  # restarted: not terminated
        await a.stop()
        await temp.tell("crash")
        with trio.fail_after(1):
            while len(await watcher.ask("get")) < 2:
                await trio.lowlevel.checkpoint()
        first, second = await watcher.ask("get")
        assert first == Terminated(a, None) or (first.ref is a and first.reason is None)
        assert second.ref is temp and isinstance(second.reason, RuntimeError)
        await system.watch(a, watcher)  # already gone: told at once
        with trio.fail_after(1):
            while len(await watcher.ask("get")) < 3:
                await trio.lowlevel.checkpoint()


async def test_supervisor_stop_stops_children_in_reverse():
    order = []

    class Tracked(hive_actors.Actor):
        async def stopped(self):
            order.append(self.ref.name)

    async with hive_actors.open_actor_system() as system:
        sup = await system.spawn_supervisor("sup")
        refs = [await sup.spawn(Tracked, name=n) for n in "xyz"]
        await sup.stop()
        assert order == ["z", "y", "x"]
        assert not any(r.alive for r in refs) and not sup.alive
        with pytest.raises(hive_actors.ActorStopped):
            await sup.spawn(Tracked)
