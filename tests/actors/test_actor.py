"""Behaviour of single actors: tell, ask, stop, mailboxes, dead letters, stats."""

import math

import outcome
import pytest
import trio
import trio.lowlevel

import hive_actors
from hive_actors import ActorError, ActorStopped, AskTimeout, MailboxFull


class Recorder(hive_actors.Actor):
    def __init__(self, log=None):
        self.seen = [] if log is None else log

    async def handle(self, message):
        if message == "get":
            return list(self.seen)
        if message == "boom":
            raise ValueError("boom")
        if isinstance(message, tuple) and message[0] == "sleep":
            await trio.sleep(message[1])
            return "slept"
        self.seen.append(message)
        return message


async def test_contract_example():
    class Counter(hive_actors.Actor):
        def __init__(self, start=0):
            self.n = start

        async def handle(self, message):
            if message == "get":
                return self.n
            self.n += message

    async with hive_actors.open_actor_system() as system:
        counter = await system.spawn(Counter, 10, name="counter", mailbox_size=128)
        await counter.tell(5)
        assert await counter.ask("get", timeout=1.0) == 15
        assert system.lookup("counter") is counter
        assert system.lookup("nobody") is None


async def test_tell_keeps_order_and_ask_replies():
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Recorder)
        for i in range(1000):
            await ref.tell(i)
        assert await ref.ask("get") == list(range(1000))
        stats = system.stats().actors[ref.name]
        assert stats.processed == 1001 and stats.mailbox == 0 and stats.restarts == 0


async def test_handler_exception_reaches_asker_and_restarts_actor():
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Recorder, name="r")
        await ref.tell("a")
        with pytest.raises(ValueError, match="boom"):
            await ref.ask("boom")
        # the crash built a fresh actor: state is gone, the ref still works
        assert await ref.ask("get") == []
        assert system.stats().actors["r"].restarts == 1
        assert ref.alive


async def test_ask_timeout(autojump_clock):
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Recorder)
        with pytest.raises(AskTimeout):
            await ref.ask(("sleep", 10), timeout=1)
        # the actor goes on and the late reply is dropped
        assert await ref.ask("x") == "x"


async def test_tell_nowait_and_mailbox_bound(autojump_clock):
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Recorder, mailbox_size=2)
        ref.tell_nowait(("sleep", 5))
        await trio.sleep(0.1)  # now being handled: it no longer counts as waiting
        ref.tell_nowait(1)
        ref.tell_nowait(2)
        assert system.stats().actors[ref.name].mailbox == 2
        with pytest.raises(MailboxFull):
            ref.tell_nowait(3)
        with trio.move_on_after(1) as scope:
            await ref.tell(3)  # backpressure: waits while full
        assert scope.cancelled_caught
        assert await ref.ask("get") == [1, 2]


async def test_stop_finishes_current_message_and_dead_letters_the_rest(autojump_clock):
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Recorder, name="r")
        results = {}

        async def ask(key, message):
            try:
                results[key] = await ref.ask(message)
            except ActorStopped as exc:
                results[key] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "slow", ("sleep", 1))
            await trio.sleep(0.01)
            nursery.start_soon(ask, "waiting", "w")
            await trio.sleep(0.01)
            await ref.stop()
        assert results["slow"] == "slept"
        assert isinstance(results["waiting"], ActorStopped)
        assert not ref.alive and system.lookup("r") is None
        with pytest.raises(ActorStopped):
            await ref.tell("late")
        with pytest.raises(ActorStopped):
            ref.tell_nowait("late")
        assert system.stats().dead_letters == 3
        assert "r" not in system.stats().actors


async def test_stop_cancels_a_hung_message_after_shutdown_timeout(autojump_clock):
    async with hive_actors.open_actor_system(shutdown_timeout=2) as system:
        ref = await system.spawn(Recorder)
        async with trio.open_nursery() as nursery:

            async def hung():
                with pytest.raises(ActorStopped):
                    await ref.ask(("sleep", 1000))

            nursery.start_soon(hung)
            await trio.sleep(0.1)
            start = trio.current_time()
            await ref.stop()
            assert trio.current_time() - start == pytest.approx(2, abs=0.01)


async def test_actor_can_stop_itself():
    class Quitter(hive_actors.Actor):
        async def handle(self, message):
            await self.ref.stop()
            return "bye"

    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Quitter)
        assert await ref.ask("quit") == "bye"
        with trio.fail_after(1):
            while ref.alive:
                await trio.lowlevel.checkpoint()


async def test_hooks_run_in_order_and_survive_restart():
    log = []

    class Hooked(hive_actors.Actor):
        async def started(self):
            log.append(("started", self.ref.name))

        async def stopped(self):
            log.append(("stopped", self.ref.name))

        async def handle(self, message):
            raise RuntimeError("crash")

    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Hooked, name="h")
        ref.tell_nowait("x")
        with trio.fail_after(1):
            while system.stats().actors["h"].restarts < 1:
                await trio.lowlevel.checkpoint()
    assert log == [("started", "h"), ("stopped", "h"), ("started", "h"), ("stopped", "h")]


async def test_messages_sent_during_restart_wait_in_the_mailbox(autojump_clock):
    class SlowStart(hive_actors.Actor):
        async def started(self):
            await trio.sleep(1)

        async def handle(self, message):
            if message == "boom":
                raise RuntimeError("boom")
            return message

    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(SlowStart)
        await ref.tell("boom")
        await trio.sleep(0.5)  # being restarted now: started() sleeps
        assert await ref.ask("hello") == "hello"


async def test_ask_self_is_refused():
    class Narcissus(hive_actors.Actor):
        async def handle(self, message):
            return await self.ref.ask("again")

    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Narcissus)
        with pytest.raises(ActorError, match="asked itself"):
            await ref.ask("x")


async def test_bad_spawn_arguments_are_named():
    async with hive_actors.open_actor_system() as system:
        with pytest.raises(ValueError, match="restart"):
            await system.spawn(Recorder, restart="sometimes")
        with pytest.raises(ValueError, match="mailbox_size"):
            await system.spawn(Recorder, mailbox_size=-1)
        with pytest.raises(TypeError):
            await system.spawn(42)
        await system.spawn(Recorder, name="dup")
        with pytest.raises(ActorError, match="dup"):
            await system.spawn(Recorder, name="dup")
        with pytest.raises(ValueError, match="strategy"):
            await system.spawn_supervisor("s", strategy="all_for_none")


async def test_unbounded_mailbox_allowed():
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Recorder, mailbox_size=math.inf)
        for i in range(5000):
            ref.tell_nowait(i)
        assert len(await ref.ask("get")) == 5000


async def test_handle_batch_gets_waiting_messages_together():
    class Batcher(hive_actors.Actor):
        def __init__(self):
            self.sizes = []

        async def handle_batch(self, messages):
            self.sizes.append(len(messages))
            results = []
            for m in messages:
                if m == "sizes":
                    results.append(outcome.Value(list(self.sizes)))
                elif m == "bad":
                    results.append(outcome.Error(KeyError("bad")))
                else:
                    results.append(outcome.Value(m * 2))
            return results

    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Batcher, name="b")
        got = {}

        async def ask(i):
            got[i] = await ref.ask(i)

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(ask, i)
        assert got == {i: i * 2 for i in range(100)}
        with pytest.raises(KeyError):
            await ref.ask("bad")  # an Error outcome is not a crash
        sizes = await ref.ask("sizes")
        assert max(sizes) > 1  # the burst was batched
        assert system.stats().actors["b"].restarts == 0
        assert system.stats().actors["b"].processed == 102


async def test_handle_batch_may_return_none_for_all_none_replies():
    class Counter(hive_actors.Actor):
        def __init__(self):
            self.seen = []

        async def handle_batch(self, messages):
            self.seen.extend(messages)
            return None

    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Counter, name="c")
        ref.tell_nowait("told")
        results = {}

        async def ask(i):
            results[i] = await ref.ask(i)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(ask, i)
        assert results == {i: None for i in range(10)}
        assert system.stats().actors["c"].processed == 11
        assert system.stats().actors["c"].restarts == 0


async def test_system_in_a_user_nursery():
    async with trio.open_nursery() as nursery:
        async with hive_actors.open_actor_system(nursery=nursery) as system:
            ref = await system.spawn(Recorder)
            assert await ref.ask(1) == 1
        assert not ref.alive


async def test_leaving_the_block_stops_in_reverse_start_order():
    log = []

    class Named(hive_actors.Actor):
        async def started(self):
            log.append(("start", self.ref.name))

        async def stopped(self):
            log.append(("stop", self.ref.name))

    async with hive_actors.open_actor_system() as system:
        await system.spawn(Named, name="a")
        sup = await system.spawn_supervisor("s")
        await sup.spawn(Named, name="b")
        await sup.spawn(Named, name="c")
        await system.spawn(Named, name="d")
    assert log == [
        ("start", "a"), ("start", "b"), ("start", "c"), ("start", "d"),
        ("stop", "d"), ("stop", "c"), ("stop", "b"), ("stop", "a"),
    ]
