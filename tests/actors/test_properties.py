"""Properties checked under hypothesis-chosen interleavings and crash schedules.

pytest-trio runs each example in its own trio run, and trio's scheduler draws its
choices from a random source that hypothesis seeds, so a failing interleaving
shrinks and replays.
"""

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hive_actors
from hive_actors import SupervisorGaveUp


class Sink(hive_actors.Actor):
    def __init__(self):
        self.got = []

    async def handle(self, message):
        if message == "get":
            return self.got
        self.got.append(message)


senders_st = st.lists(
    st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=40),
    min_size=1,
    max_size=6,
)


@given(senders=senders_st, mailbox_size=st.integers(min_value=0, max_value=8), use_nowait=st.booleans())
async def test_per_sender_order_nothing_lost_nothing_duplicated(senders, mailbox_size, use_nowait):
    async with hive_actors.open_actor_system() as system:
        sink = await system.spawn(Sink, mailbox_size=mailbox_size)

        async def sender(sender_id, pauses):
            for seq, pause in enumerate(pauses):
                for _ in range(pause):
                    await trio.lowlevel.checkpoint()
                if use_nowait:
                    while True:
                        try:
                            sink.tell_nowait((sender_id, seq))
                            break
                        except hive_actors.MailboxFull:
                            await trio.lowlevel.checkpoint()
                else:
                    await sink.tell((sender_id, seq))

        async with trio.open_nursery() as nursery:
            for sender_id, pauses in enumerate(senders):
                nursery.start_soon(sender, sender_id, pauses)
        got = await sink.ask("get")
    assert sorted(got) == sorted((i, s) for i, p in enumerate(senders) for s in range(len(p)))
    for sender_id, pauses in enumerate(senders):
        assert [s for i, s in got if i == sender_id] == list(range(len(pauses)))


# -- supervision against a pure-Python model of OTP semantics ---------------------


class OTPModel:
    """What an OTP supervisor does, written as plainly as possible."""

    def __init__(self, types, strategy, max_restarts, within):
        self.types = types
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = within
        self.alive = [True] * len(types)
        self.starts = [1] * len(types)
        self.history = []
        self.gave_up = False

    def crash(self, i, now):
        if self.types[i] == "temporary":
            self.alive[i] = False
            return
        self.history = [t for t in self.history if t > now - self.within]
        if len(self.history) >= self.max_restarts:
            self.gave_up = True
            return
        self.history.append(now)
        living = [c for c in range(len(self.types)) if self.alive[c]]
        if self.strategy == "one_for_one":
            group = [i]
        elif self.strategy == "one_for_all":
            group = living
        else:
            group = [c for c in living if c >= i]
        for c in group:
            if c != i and self.types[c] == "temporary":
                self.alive[c] = False
        for c in group:
            if self.alive[c]:
                self.starts[c] += 1


class Crashy(hive_actors.Actor):
    def __init__(self, index, starts):
        self.index = index
        self.starts = starts

    async def started(self):
        self.starts[self.index] += 1

    async def handle(self, message):
        raise RuntimeError(f"child {self.index} crashes")


steps_st = st.lists(
    st.one_of(
        st.tuples(st.just("crash"), st.integers(min_value=0, max_value=4)),
        st.tuples(st.just("sleep"), st.sampled_from([0.5, 1.0, 3.0, 7.0])),
    ),
    max_size=25,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    types=st.lists(st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=5),
    strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
    max_restarts=st.integers(min_value=0, max_value=4),
    within=st.sampled_from([1.0, 5.0, 10.0]),
    steps=steps_st,
)
async def test_supervisor_matches_otp_model(autojump_clock, types, strategy, max_restarts, within, steps):
    model = OTPModel(types, strategy, max_restarts, within)
    starts = [0] * len(types)
    refs = []
    try:
        async with hive_actors.open_actor_system() as system:
            sup = await system.spawn_supervisor(
                "sup", strategy=strategy, max_restarts=max_restarts, within=within
            )
            for i, restart in enumerate(types):
                refs.append(await sup.spawn(Crashy, i, starts, restart=restart))
            for action, arg in steps:
                if action == "sleep":
                    await trio.sleep(arg)
                    continue
                i = arg % len(types)
                if not model.alive[i]:
                    continue
                model.crash(i, trio.current_time())
                await refs[i].tell("crash")
                await trio.testing.wait_all_tasks_blocked()
                assert starts == model.starts
                assert [r.alive for r in refs] == model.alive
                if model.gave_up:
                    await trio.sleep(1)
                    pytest.fail("the system should have stopped when the supervisor gave up")
    except* SupervisorGaveUp:
        assert model.gave_up
    else:
        assert not model.gave_up
    assert starts == model.starts
