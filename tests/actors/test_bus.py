"""The bus: glob patterns, bounded per-subscriber buffers, Missed counts, no deadlock."""

import trio
import trio.lowlevel

import hive_actors
from hive_actors import Missed, Published


class Inbox(hive_actors.Actor):
    def __init__(self, gate=None):
        self.got = []
        self.gate = gate

    async def handle(self, message):
        if message == "get":
            return list(self.got)
        if self.gate is not None:
            await self.gate.wait()
        self.got.append(message)


async def wait_for(ref, n):
    with trio.fail_after(5):
        while len(got := await ref.ask("get")) < n:
            await trio.lowlevel.checkpoint()
    return got


async def test_glob_patterns():
    async with hive_actors.open_actor_system() as system:
        tasks = await system.spawn(Inbox)
        everything = await system.spawn(Inbox)
        await system.bus.subscribe("task.*", tasks)
        await system.bus.subscribe("*", everything)
        assert await system.bus.publish("task.done", {"id": 1}) == 2
        assert await system.bus.publish("plan.stored", 2) == 1
        assert await wait_for(tasks, 1) == [Published("task.done", {"id": 1})]
        got = await wait_for(everything, 2)
        assert [m.topic for m in got] == ["task.done", "plan.stored"]


async def test_slow_subscriber_never_blocks_and_is_told_what_it_missed():
    gate = trio.Event()
    async with hive_actors.open_actor_system() as system:
        slow = await system.spawn(Inbox, gate, mailbox_size=1)
        await system.bus.subscribe("t", slow, buffer=3)
        await trio.lowlevel.checkpoint()
        for i in range(20):
            system.bus.publish_nowait("t", i)  # never blocks
            await trio.lowlevel.checkpoint()
        gate.set()
        got = await wait_for(slow, 1)
        with trio.fail_after(5):
            while not any(isinstance(m, Missed) for m in got):
                await trio.lowlevel.checkpoint()
                got = await slow.ask("get")
        payloads = [m.payload for m in got if isinstance(m, Published)]
        missed = sum(m.count for m in got if isinstance(m, Missed))
        assert payloads == sorted(payloads)
        assert len(payloads) + missed == 20
        # the Missed message stands where the drops happened
        idx = next(i for i, m in enumerate(got) if isinstance(m, Missed))
        assert all(isinstance(m, Published) for m in got[:idx])
        # then it receives new messages again
        system.bus.publish_nowait("t", "after")
        got = await wait_for(slow, len(got) + 1)
        assert got[-1] == Published("t", "after")


async def test_publish_from_inside_a_handler_to_itself_does_not_deadlock():
    class Echo(hive_actors.Actor):
        def __init__(self):
            self.got = []

        async def handle(self, message):
            if message == "get":
                return self.got
            if isinstance(message, Published):
                self.got.append(message.payload)
                if message.payload < 500:
                    await self.system.bus.publish("echo", message.payload + 1)
                return None
            await self.system.bus.publish("echo", 0)

    async with hive_actors.open_actor_system() as system:
        echo = await system.spawn(Echo, mailbox_size=1)
        await system.bus.subscribe("echo", echo, buffer=1)
        await echo.tell("go")
        with trio.fail_after(5):
            while len(await echo.ask("get")) < 501:
                await trio.lowlevel.checkpoint()


async def test_subscription_of_a_stopped_actor_ends():
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Inbox)
        sub = await system.bus.subscribe("x", ref)
        await ref.stop()
        system.bus.publish_nowait("x", 1)
        with trio.fail_after(1):
            while sub in system.bus._subscriptions:
                await trio.lowlevel.checkpoint()
        assert system.bus.publish_nowait("x", 2) == 0

