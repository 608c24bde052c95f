"""Fault injection: crash on the Nth message or a predicate, delay, stall."""

import pytest
import trio

import hive_actors
from hive_actors import InjectedCrash


class Echo(hive_actors.Actor):
    async def handle(self, message):
        return message


async def test_crash_on_nth_message_restarts_the_actor():
    async with hive_actors.open_actor_system() as system:
        fault = system.faults.crash("echo", nth=3)
        ref = await system.spawn(Echo, name="echo")
        assert await ref.ask(1) == 1
        assert await ref.ask(2) == 2
        with pytest.raises(InjectedCrash):
            await ref.ask(3)
        assert await ref.ask(4) == 4
        assert fault.hits == 1
        assert system.stats().actors["echo"].restarts == 1


async def test_crash_when_predicate_matches_with_custom_error():
    async with hive_actors.open_actor_system() as system:
        system.faults.crash("e*", when=lambda m: m == "poison", times=None, error=lambda: KeyError("x"))
        ref = await system.spawn(Echo, name="echo")
        for _ in range(2):
            with pytest.raises(KeyError):
                await ref.ask("poison")
        assert await ref.ask("fine") == "fine"
        assert system.stats().actors["echo"].restarts == 2


async def test_delay_and_stall(autojump_clock):
    async with hive_actors.open_actor_system() as system:
        system.faults.delay("slow", 5)
        stall = system.faults.stall("stuck")
        slow = await system.spawn(Echo, name="slow")
        stuck = await system.spawn(Echo, name="stuck")
        start = trio.current_time()
        assert await slow.ask("x") == "x"
        assert trio.current_time() - start == pytest.approx(5)
        with trio.move_on_after(100):
            await stuck.ask("y")
            pytest.fail("a stalled actor must not answer")
        stall.release()
        assert await stuck.ask("z") == "z"


async def test_no_fault_means_untouched():
    async with hive_actors.open_actor_system() as system:
        ref = await system.spawn(Echo)
        assert not system.faults.active
        fault = system.faults.crash("other")
        assert system.faults.active
        fault.remove()
        assert not system.faults.active
        assert await ref.ask(1) == 1
