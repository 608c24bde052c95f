"""The store through its facade and DB actor, as the Hive layer uses it."""

import os
import pathlib
import random
import sqlite3
import subprocess
import sys

import pytest
import trio

import hive_actors
from hive_actors.store import (
    MAX_BACKOFF,
    OUTPUT_TAIL_BYTES,
    SCHEMA_VERSION,
    DatabaseLocked,
    DependencyError,
    Event,
    IllegalTransition,
    InvalidPlan,
    PlannedTask,
    StaleLease,
    TaskNotFound,
    messages,
    open_store,
)
from hive_actors.store._engine import Engine
from hive_actors.store._schema import APPLICATION_ID, MIGRATIONS, _split


def read_db(path, sql, args=()):
    """Read through a separate connection: sees only what is committed."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


class Recorder(hive_actors.Actor):
    """Subscriber that notes each published event and whether its row was already
    committed (visible to another connection) when it arrived."""

    def __init__(self, path, expected, done):
        self.path = path
        self.seen = []
        self.expected = expected
        self.done = done

    async def handle(self, message):
        if message == "get":
            return self.seen
        event = message.payload
        committed = None
        if event.seq is not None:
            committed = bool(read_db(self.path, "SELECT 1 FROM events WHERE seq = ?", (event.seq,)))
        self.seen.append((message.topic, event, committed))
        if len(self.seen) == self.expected:
            self.done.send_nowait(list(self.seen))


async def test_submit_is_on_disk_when_it_returns(store, db_path):
    task = await store.submit("echo", "hello", "say hi", priority=3, metadata={"a": 1})
    assert (task.status, task.kind, task.title, task.prompt) == ("queued", "echo", "hello", "say hi")
    assert task.attempts == 0 and task.metadata == {"a": 1} and task.depends_on == ()
    assert read_db(db_path, "SELECT status, priority FROM tasks WHERE id = ?", (task.id,)) == [
        ("queued", 3)
    ]
    assert await store.get(task.id) == task


async def test_get_unknown_task(store):
    with pytest.raises(TaskNotFound):
        await store.get(12345)


async def test_claim_order_priority_then_age_and_leases(store, clock):
    low = await store.submit("k", "low")
    high = await store.submit("k", "high", priority=5)
    other = await store.submit("other", "x")
    low2 = await store.submit("k", "low2")
    claimed = await store.claim("k", 2, "w1", 30)
    assert [t.id for t in claimed] == [high.id, low.id]
    for t in claimed:
        assert (t.status, t.attempts, t.fencing_token, t.lease_owner) == ("running", 1, 1, "w1")
        assert t.lease_expires_at == clock.now + 30
    assert [t.id for t in await store.claim("k", 5, "w2", 30)] == [low2.id]
    assert await store.claim("k", 5, "w2", 30) == []
    assert (await store.get(other.id)).status == "queued"


async def test_concurrent_claims_never_share_a_task(store):
    for i in range(60):
        await store.submit("k", f"t{i}")
    got = []

    async def worker(name):
        while claimed := await store.claim("k", 1, name, 30):
            got.extend(t.id for t in claimed)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(worker, f"w{i}")
    assert sorted(got) == list(range(1, 61))


async def test_dependencies_gate_claims(store):
    a = await store.submit("k", "a")
    b = await store.submit("k", "b", depends_on=[a.id])
    assert b.depends_on == (a.id,)
    [ta] = await store.claim("k", 5, "w", 30)
    assert ta.id == a.id  # b waits for a
    assert await store.claim("k", 5, "w", 30) == []
    await store.succeed(a.id, ta.fencing_token, {"ok": True})
    [tb] = await store.claim("k", 5, "w", 30)
    assert tb.id == b.id


async def test_unknown_dependency_is_rejected_and_stores_nothing(store):
    with pytest.raises(DependencyError) as info:
        await store.submit("k", "x", depends_on=[999])
    assert info.value.task_ids == (999,)
    assert (await store.counts())["counts"]["queued"] == 0
    assert await store.events_since(0) == []


async def test_stale_lease_after_expiry_discards_zombie_result(store, clock):
    task = await store.submit("k", "t", retry_delay=0)
    [first] = await store.claim("k", 1, "zombie", 10)
    clock.advance(11)
    [swept] = await store.sweep_leases()
    assert swept.status == "queued" and "expired" in swept.error
    [second] = await store.claim("k", 1, "fresh", 10)
    assert second.fencing_token == first.fencing_token + 1
    with pytest.raises(StaleLease):
        await store.heartbeat(task.id, first.fencing_token, 10)
    with pytest.raises(StaleLease):
        await store.succeed(task.id, first.fencing_token, {"zombie": True})
    done = await store.succeed(task.id, second.fencing_token, {"fresh": True})
    assert done.status == "done" and done.result == {"fresh": True}
    runs = await store.runs(task.id)
    assert [(r.attempt, r.worker, r.outcome) for r in runs] == [
        (1, "zombie", "expired"), (2, "fresh", "succeeded")
    ]


async def test_heartbeat_extends_lease(store, clock):
    await store.submit("k", "t")
    [t] = await store.claim("k", 1, "w", 10)
    clock.advance(8)
    assert await store.heartbeat(t.id, t.fencing_token, 10) == clock.now + 10
    clock.advance(8)
    assert await store.sweep_leases() == []
    assert (await store.get(t.id)).status == "running"


async def test_fail_backs_off_exponentially_then_fails(store, clock):
    task = await store.submit("k", "t", max_attempts=3, retry_delay=2.0)
    delays = []
    for _ in range(2):
        [t] = await store.claim("k", 1, "w", 30)
        after = await store.fail(t.id, t.fencing_token, "boom")
        assert after.status == "queued" and after.error == "boom"
        delays.append(after.not_before - clock.now)
        assert await store.claim("k", 1, "w", 30) == []  # not before the backoff
        clock.advance(delays[-1])
    assert 2.0 * 0.75 <= delays[0] <= 2.0 * 1.25
    assert 4.0 * 0.75 <= delays[1] <= 4.0 * 1.25
    [t] = await store.claim("k", 1, "w", 30)
    final = await store.fail(t.id, t.fencing_token, "boom again")
    assert (final.status, final.attempts) == ("failed", 3)
    types = [e.type for e in await store.events_since(0, task_id=task.id)]
    assert types.count("task.retrying") == 2 and types[-1] == "task.failed"


async def test_backoff_is_capped(store, clock):
    await store.submit("k", "t", max_attempts=20, retry_delay=100.0)
    for _ in range(5):
        [t] = await store.claim("k", 1, "w", 30)
        after = await store.fail(t.id, t.fencing_token, "x")
        delay = after.not_before - clock.now
        assert delay <= MAX_BACKOFF
        clock.advance(MAX_BACKOFF)
    assert delay >= 0.75 * MAX_BACKOFF  # 100 * 2**4 would be 1600 s


async def test_fail_without_retry_cascades_to_dependents(store):
    a = await store.submit("k", "a")
    b = await store.submit("k", "b", depends_on=[a.id])
    c = await store.submit("k", "c", depends_on=[b.id])
    unrelated = await store.submit("j", "u")
    [t] = await store.claim("k", 1, "w", 30)
    await store.fail(a.id, t.fencing_token, "fatal", retry=False)
    assert (await store.get(b.id)).status == "cancelled"
    assert (await store.get(c.id)).error == f"dependency {b.id} cancelled"
    assert (await store.get(unrelated.id)).status == "queued"
    late = await store.submit("k", "late", depends_on=[a.id])
    assert late.status == "cancelled"
    with pytest.raises(DependencyError):
        await store.retry(b.id)  # a is still failed
    assert (await store.retry(a.id)).status == "queued"
    # what the cascade cancelled because of a comes back with it, transitively
    for task in (b, c, late):
        back = await store.get(task.id)
        assert (back.status, back.error) == ("queued", None)


async def test_retry_leaves_dependents_cancelled_for_another_reason(store):
    a = await store.submit("k", "a")
    other = await store.submit("k", "other")
    both = await store.submit("k", "needs a and other", depends_on=[a.id, other.id])
    mine = await store.submit("k", "cancelled by a person", depends_on=[a.id])
    await store.cancel(mine.id)
    await store.cancel(other.id)  # cancels `both` too (its error names `other`)
    await store.cancel(a.id)
    await store.retry(a.id)
    assert (await store.get(mine.id)).status == "cancelled"  # a person's decision
    assert (await store.get(both.id)).status == "cancelled"  # `other` is still cancelled
    await store.retry(other.id)
    assert (await store.get(both.id)).status == "queued"
    events = [e for e in await store.events_since(0) if e.task_id == both.id]
    assert events[-1].type == "task.queued" and events[-1].payload["cause"] == other.id
    assert events[-1].payload["retry"] is True
    with pytest.raises(IllegalTransition):
        await store.retry(both.id)  # already queued again


async def test_review_cycle(store):
    task = await store.submit("k", "t", max_attempts=2)
    [t] = await store.claim("k", 1, "w", 30)
    in_review = await store.succeed(t.id, t.fencing_token, {"v": 1}, review=True)
    assert in_review.status == "review" and in_review.result == {"v": 1}
    [r] = await store.claim_review(1, "reviewer", 30)
    back = await store.reject(task.id, "needs tests", token=r.fencing_token)
    assert (back.status, back.feedback, back.not_before) == ("queued", "needs tests", back.updated_at)
    [t] = await store.claim("k", 1, "w", 30)  # rework is not delayed
    assert t.feedback == "needs tests" and t.attempts == 2
    await store.succeed(t.id, t.fencing_token, {"v": 2}, review=True)
    [r] = await store.claim_review(1, "reviewer", 30)
    with pytest.raises(StaleLease):
        await store.approve(task.id, token=r.fencing_token - 1)
    final = await store.reject(task.id, "still no", token=r.fencing_token)
    assert final.status == "failed"  # the rejection used up the attempts


async def test_escalation_and_person_decision(store):
    task = await store.submit("k", "t")
    [t] = await store.claim("k", 1, "w", 30)
    await store.succeed(t.id, t.fencing_token, "r", review=True)
    assert (await store.escalate(task.id, "unsure")).status == "escalated"
    with pytest.raises(IllegalTransition):
        await store.approve(task.id)
    done = await store.decide(task.id, approve=True, actor="person")
    assert done.status == "done"
    with pytest.raises(IllegalTransition):
        await store.decide(task.id, approve=False)
    events = await store.events_since(0, task_id=task.id)
    assert [e.type for e in events][-2:] == ["task.approved", "task.done"]
    assert events[-1].actor == "person"


async def test_cancel_running_invalidates_token_and_reports_pgid(store):
    task = await store.submit("k", "t")
    [t] = await store.claim("k", 1, "w", 30)
    await store.record_run(t.id, t.fencing_token, pgid=4242)
    cancelled = await store.cancel(task.id, "user asked")
    assert cancelled.status == "cancelled" and cancelled.error == "user asked"
    with pytest.raises(StaleLease):
        await store.heartbeat(t.id, t.fencing_token, 30)
    event = (await store.events_since(0, task_id=task.id))[-1]
    assert event.type == "task.cancelled" and event.payload["pgid"] == 4242
    with pytest.raises(IllegalTransition):
        await store.cancel(task.id)


async def test_release_does_not_use_an_attempt(store):
    await store.submit("k", "t", max_attempts=1)
    [t] = await store.claim("k", 1, "w", 30)
    released = await store.release(t.id, t.fencing_token, "shutdown")
    assert released.status == "queued"
    [t] = await store.claim("k", 1, "w", 30)
    after = await store.fail(t.id, t.fencing_token, "boom", retry=True)
    assert after.status == "failed"  # one attempt allowed, and it was this one


async def test_runs_record_exit_code_duration_and_output_tail(store, clock):
    await store.submit("k", "t")
    [t] = await store.claim("k", 1, "w", 30)
    clock.advance(2.5)
    big = "x" * OUTPUT_TAIL_BYTES + "END"
    await store.succeed(t.id, t.fencing_token, None, exit_code=0, output_tail=big)
    [run] = await store.runs(t.id)
    assert (run.attempt, run.exit_code, run.duration, run.outcome) == (1, 0, 2.5, "succeeded")
    assert len(run.output_tail.encode()) == OUTPUT_TAIL_BYTES and run.output_tail.endswith("END")


async def test_plan_is_stored_atomically(store):
    existing = await store.submit("k", "pre")
    plan = await store.submit("plan", "make a thing")
    [p] = await store.claim("plan", 1, "planner", 30)
    stored = await store.store_plan(p.id, p.fencing_token, [
        {"key": "design", "title": "Design", "kind": "k", "prompt": "d"},
        PlannedTask("build", "Build", "k", depends_on=["design", existing.id], priority=2),
        {"key": "test", "title": "Test", "kind": "k", "depends_on": ["build"]},
    ])
    assert stored.plan.status == "done" and stored.plan.id == plan.id
    ids = {k: t.id for k, t in stored.tasks.items()}
    assert stored.tasks["build"].depends_on == tuple(sorted((ids["design"], existing.id)))
    assert all(t.parent_id == plan.id for t in stored.tasks.values())
    assert stored.plan.result == {"tasks": ids}
    assert [t.id for t in await store.list(parent_id=plan.id)] == sorted(ids.values())
    types = [e.type for e in await store.events_since(0)]
    assert "plan.stored" in types and types[-1] == "task.done"


@pytest.mark.parametrize(
    ("subtasks", "reason"),
    [
        ([{"key": "a", "title": "A", "kind": "k", "depends_on": ["b"]},
          {"key": "b", "title": "B", "kind": "k", "depends_on": ["a"]}], "cycle"),
        ([{"key": "a", "title": "A", "kind": "k", "depends_on": ["zzz"]}], "unknown key"),
        ([{"key": "a", "title": "A", "kind": "k", "depends_on": [777]}], "unknown task"),
        ([{"key": "a", "title": "A"}], "no 'kind'"),
        ([{"key": "a", "title": "A", "kind": "k", "colour": "red"}], "unknown fields"),
        ([{"key": "a", "title": "A", "kind": "k"}, {"key": "a", "title": "B", "kind": "k"}],
         "duplicate key"),
        (["not an object"], "not an object"),
        ([{"key": "a", "title": "", "kind": "k"}], "title must be"),
        ([{"key": "a", "title": "A", "kind": "k", "depends_on": ["a"]}], "itself"),
    ],
)
async def test_invalid_plan_stores_nothing(store, subtasks, reason):
    await store.submit("plan", "p")
    [p] = await store.claim("plan", 1, "planner", 30)
    before = await store.events_since(0)
    with pytest.raises(InvalidPlan, match=reason):
        await store.store_plan(p.id, p.fencing_token, subtasks)
    assert await store.events_since(0) == before
    assert [t.id for t in await store.list()] == [p.id]
    assert (await store.get(p.id)).status == "running"


async def test_events_published_only_after_commit(system, store, db_path):
    done_send, done_receive = trio.open_memory_channel(1)
    recorder = await system.spawn(Recorder, db_path, 5, done_send)
    await system.bus.subscribe("task.*", recorder)
    task = await store.submit("k", "t")
    [t] = await store.claim("k", 1, "w", 30)
    await store.heartbeat(t.id, t.fencing_token, 30)
    await store.succeed(t.id, t.fencing_token, 1)
    with trio.fail_after(5):
        seen = await done_receive.receive()
    assert [topic for topic, _, _ in seen] == [
        "task.queued", "task.started", "task.heartbeat", "task.succeeded", "task.done"
    ]
    assert all(isinstance(e, Event) and e.task_id == task.id for _, e, _ in seen)
    assert [c for _, _, c in seen] == [True, True, None, True, True]


async def test_watchers_see_each_commit_of_their_own_store_only(system, store, tmp_path, caplog):
    seen, other_seen = [], []

    def broken(events):
        raise RuntimeError("watcher bug")

    stop = store.watch(seen.append)
    store.watch(broken)
    async with open_store(system, str(tmp_path / "other.db"), name="other-store") as other:
        other.watch(other_seen.append)
        task = await store.submit("k", "t")
        await other.submit("k", "elsewhere")
        [t] = await store.claim("k", 1, "w", 30)
        await store.succeed(t.id, t.fencing_token, None)
    assert [[e.type for e in batch] for batch in seen] == [
        ["task.queued"], ["task.started"], ["task.succeeded", "task.done"]]
    assert all(e.task_id == task.id and e.seq is not None for batch in seen for e in batch)
    assert [[e.type for e in batch] for batch in other_seen] == [["task.queued"]]
    assert "watcher bug" in caplog.text  # logged; the store went on
    stop()
    await store.submit("k", "unwatched")
    assert len(seen) == 3


async def test_group_commit_isolates_a_failing_operation(system, store):
    good = [messages.Submit("k", f"g{i}") for i in range(20)]
    bad = messages.Submit("k", "bad", depends_on=[424242])
    results = {}

    async def send(i, msg):
        try:
            results[i] = await store.execute(msg)
        except DependencyError as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i, msg in enumerate(good[:10] + [bad] + good[10:]):
            nursery.start_soon(send, i, msg)
    assert isinstance(results.pop(10), DependencyError)
    assert sorted(t.title for t in results.values()) == sorted(m.title for m in good)
    assert (await store.counts())["counts"]["queued"] == 20


def test_engine_batch_outcomes_in_order(db_path):
    engine, _, _ = Engine.open(db_path, clock=lambda: 5.0)
    try:
        results, events = engine.execute([
            messages.Submit("k", "a"),
            messages.Cancel(99),
            messages.Submit("k", "b", depends_on=[1]),
            "not a message",
        ])
        assert results[0].value.id == 1 and results[2].value.depends_on == (1,)
        assert isinstance(results[1].error, TaskNotFound)
        assert isinstance(results[3].error, TypeError)
        assert [(e.seq, e.type, e.task_id) for e in events] == [
            (1, "task.queued", 1), (2, "task.queued", 2)
        ]
    finally:
        engine.close()
    assert read_db(db_path, "SELECT count(*) FROM tasks") == [(2,)]


async def test_counts_and_list_filters(store):
    a = await store.submit("x", "a")
    await store.submit("y", "b")
    await store.cancel(a.id)
    counts = await store.counts()
    assert counts["counts"]["queued"] == 1 and counts["counts"]["cancelled"] == 1
    assert counts["kinds"]["x"]["cancelled"] == 1 and counts["kinds"]["y"]["queued"] == 1
    assert [t.title for t in await store.list(status="queued")] == ["b"]
    assert [t.title for t in await store.list(status=["queued", "cancelled"], kind="x")] == ["a"]
    with pytest.raises(ValueError):
        await store.list(status="nope")
    some = await store.counts(statuses=["queued", "running"])
    assert some == {"counts": {"queued": 1, "running": 0}, "kinds": {"y": {"queued": 1, "running": 0}}}
    with pytest.raises(ValueError):
        await store.counts(statuses=["nope"])


def test_message_validation_at_the_boundary():
    with pytest.raises(ValueError):
        messages.Submit("", "t")
    with pytest.raises(ValueError):
        messages.Claim("k", 0, "w", 30)
    with pytest.raises(ValueError):
        messages.Claim("k", 1, "w", -1)
    with pytest.raises(ValueError):
        messages.Submit("k", "t", depends_on=["x"])
    with pytest.raises(ValueError):
        messages.Submit("k", "t", max_attempts=0)


# -- recovery -------------------------------------------------------------------


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_recovery_requeues_tasks_of_a_dead_hive(system, db_path, clock):
    async with open_store(system, db_path, clock=clock, name="s1") as first:
        kept = await first.submit("k", "kept", max_attempts=3)
        last = await first.submit("k", "last try", max_attempts=1)
        [t1] = await first.claim("k", 1, "w", 30)
        [t2] = await first.claim("k", 1, "w", 30)
        await first.record_run(t1.id, t1.fencing_token, pgid=777)
        dead = first.hive_id
    pretend_died(db_path, dead)
    async with open_store(system, db_path, clock=clock, name="s2") as second:
        report = second.recovery
        assert report.dead_hives == (dead,)
        assert report.requeued == (kept.id,) and report.failed == (last.id,)
        assert report.pgids == (777,)
        assert (await second.get(kept.id)).status == "queued"
        assert (await second.get(last.id)).status == "failed"
        recovered = [e for e in await second.events_since(0) if e.type == "task.recovered"]
        assert [e.task_id for e in recovered] == [kept.id, last.id]
        with pytest.raises(StaleLease):  # the dead hive's token is worthless now
            await second.succeed(t1.id, t1.fencing_token, None)
        [again] = await second.claim("k", 1, "w", 30)
        assert again.id == kept.id and again.attempts == 2
    assert t2.id == last.id


async def test_recovery_leaves_a_live_hive_alone(system, db_path, clock):
    async with open_store(system, db_path, clock=clock, name="s1") as first:
        task = await first.submit("k", "t")
        await first.claim("k", 1, "w", 30)
        async with open_store(system, db_path, clock=clock, name="s2") as second:
            assert second.recovery.requeued == () and second.recovery.dead_hives == ()
            assert (await second.get(task.id)).status == "running"


async def test_clean_close_then_reopen_recovers_running_tasks(system, db_path, clock):
    async with open_store(system, db_path, clock=clock, name="s1") as first:
        task = await first.submit("k", "t")
        await first.claim("k", 1, "w", 30)
    async with open_store(system, db_path, clock=clock, name="s2") as second:
        assert second.recovery.requeued == (task.id,)


async def test_an_admin_open_recovers_nothing(system, db_path, clock):
    async with open_store(system, db_path, clock=clock, name="s1") as first:
        task = await first.submit("k", "t")
        await first.claim("k", 1, "w", 30)
    async with open_store(system, db_path, clock=clock, name="admin", register=False) as admin:
        assert admin.recovery.requeued == () and admin.recovery.dead_hives == ()
        assert (await admin.get(task.id)).status == "running"
    assert read_db(db_path, "SELECT count(*) FROM hives") == [(1,)]  # not recorded
    async with open_store(system, db_path, clock=clock, name="s2") as second:
        assert second.recovery.requeued == (task.id,)


async def test_hive_heartbeat_is_refreshed(system, db_path, autojump_clock):
    wall = [100.0]
    async with open_store(system, db_path, clock=lambda: wall[0], hive_heartbeat=5.0) as store:
        wall[0] = 200.0
        await trio.sleep(6)
        await store.counts()  # a barrier: the touch was queued before this
        rows = read_db(db_path, "SELECT heartbeat_at FROM hives WHERE id = ?", (store.hive_id,))
        assert rows == [(200.0,)]


async def test_inline_mode_works_the_same(system, db_path):
    async with open_store(system, db_path, inline=True, rng=random.Random(0)) as store:
        t = await store.submit("k", "t")
        [c] = await store.claim("k", 1, "w", 30)
        assert (await store.succeed(c.id, c.fencing_token, 1)).status == "done"
        assert t.id == c.id


def test_synchronous_full_is_applied(db_path):
    engine, _, _ = Engine.open(db_path, clock=lambda: 1.0, synchronous="FULL")
    try:
        (value,), _ = engine.execute([messages.Counts()])
        assert value.value["counts"]["queued"] == 0
        assert engine._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        engine.close()
    assert os.path.exists(db_path)


def test_an_operation_failing_after_it_wrote_is_undone_alone(db_path):
    engine, _, _ = Engine.open(db_path, clock=lambda: 5.0)
    real_submit = engine._handlers[messages.Submit]

    def submit_then_explode(op, now):
        task = real_submit(op, now)  # the row and its event are written...
        if op.title == "boom":
            raise RuntimeError("exploded after writing")  # ...then the op fails
        return task

    engine._handlers[messages.Submit] = submit_then_explode
    try:
        results, events = engine.execute([
            messages.Submit("k", "a"),
            messages.Submit("k", "boom", depends_on=[1]),
            messages.Submit("k", "c"),
        ])
        assert isinstance(results[1].error, RuntimeError)
        a, c = results[0].value, results[2].value
        assert [(e.type, e.task_id) for e in events] == [
            ("task.queued", a.id), ("task.queued", c.id)
        ]
        (listed,), _ = engine.execute([messages.ListTasks()])
        assert [(t.title, t.depends_on) for t in listed.unwrap()] == [("a", ()), ("c", ())]
        (again,), _ = engine.execute([messages.Submit("k", "d")])
        assert again.value.depends_on == ()  # a rolled-back id's dependencies are forgotten
    finally:
        engine.close()
    assert read_db(db_path, "SELECT title FROM tasks ORDER BY id") == [("a",), ("c",), ("d",)]
    assert read_db(db_path, "SELECT count(*) FROM events") == [(3,)]


def test_engine_sees_writes_of_another_connection(db_path):
    """The engine keeps rows of leased tasks in memory; a change committed by another
    connection (the CLI, another hive) must be seen, and event seqs must continue."""
    now = [10.0]
    a, _, _ = Engine.open(db_path, clock=lambda: now[0])
    b, _, _ = Engine.open(db_path, clock=lambda: now[0])
    try:
        (sub,), _ = a.execute([messages.Submit("k", "t")])
        (claimed,), _ = a.execute([messages.Claim("k", 1, "w", 60.0)])
        task = claimed.unwrap()[0]
        (cancelled,), events_b = b.execute([messages.Cancel(task.id, "by b")])
        assert cancelled.unwrap().status == "cancelled"
        # One operation a batch: a failing one would make the batch run again.
        for message in (messages.Succeed(task.id, task.fencing_token, "late"),
                        messages.Heartbeat(task.id, task.fencing_token, 60.0),
                        messages.Fail(task.id, task.fencing_token, "late")):
            (result,), events = a.execute([message])
            assert isinstance(result.error, StaleLease) and events == []
        _, events_a = a.execute([messages.Submit("k", "u")])
        (got,), _ = a.execute([messages.Get(task.id)])
        got = got.unwrap()
        assert got.status == "cancelled" and got.result is None
        assert [e.seq for e in events_a] == [events_b[-1].seq + 1]
        (stored,), _ = b.execute([messages.EventsSince(0)])
        assert [e.seq for e in stored.unwrap()] == list(range(1, events_a[-1].seq + 1))
    finally:
        a.close()
        b.close()


def test_event_seqs_never_reused_after_deletes(db_path):
    engine, _, _ = Engine.open(db_path, clock=lambda: 5.0)
    try:
        engine.execute([messages.Submit("k", "a"), messages.Submit("k", "b")])
        conn = sqlite3.connect(db_path)
        conn.execute("DELETE FROM events")
        conn.commit()
        conn.close()
        _, events = engine.execute([messages.Submit("k", "c")])
        assert [e.seq for e in events] == [3]
    finally:
        engine.close()


async def test_waits_for_a_write_lock_held_by_another_connection(system, db_path, clock):
    """With its thread, the store waits for another process's write lock there: the
    trio loop keeps running meanwhile (inline, it would be blocked). Past busy_timeout
    the batch fails as locked, changing nothing, and the store works again once the
    lock is gone."""
    async with open_store(system, db_path, clock=clock, busy_timeout=0.5,
                          hive_heartbeat=None) as store:
        await store.submit("k", "before")
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await trio.sleep(0.01)
                    ticks += 1

            async def release():
                await trio.sleep(0.2)
                other.execute("COMMIT")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                nursery.start_soon(release)
                task = await store.submit("k", "waited")
                nursery.cancel_scope.cancel()
            assert task.id == 2
            assert ticks >= 5  # the loop ran while the store waited
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(DatabaseLocked):
                await store.submit("k", "too late")
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert (await store.submit("k", "after")).id == 3
        assert [t.title for t in await store.list()] == ["before", "waited", "after"]


async def test_wal_is_checkpointed_by_the_store_thread(system, db_path, clock, tmp_path, monkeypatch):
    """COMMIT on the trio thread never checkpoints; the store's thread copies the WAL
    into the database file in the background."""
    from hive_actors.store import _store

    monkeypatch.setattr(_store, "CHECKPOINT_INTERVAL", 0.05)
    async with open_store(system, db_path, clock=clock, hive_heartbeat=None) as store:
        for i in range(50):
            await store.submit("k", f"t{i}")
        await trio.sleep(0.3)
        copy = tmp_path / "copy.db"
        copy.write_bytes(pathlib.Path(db_path).read_bytes())  # the file alone, no WAL
        assert read_db(str(copy), "SELECT count(*) FROM tasks") == [(50,)]


@pytest.mark.parametrize("result", [
    {"ok": True, "n": 1.5}, [1, "two", None], {"nested": {"a": [1]}}, (1, 2), {1: "int key"},
    "text", 7, None,
])
async def test_succeed_returns_the_result_as_get_reads_it_back(store, result):
    # The returned Task is built without re-reading the row; it must still hold what
    # the JSON column holds (tuples as lists, int keys as strings), in a fresh object.
    await store.submit("k", "t")
    (task,) = await store.claim("k", 1, "w", 30)
    done = await store.succeed(task.id, task.fencing_token, result)
    stored = await store.get(task.id)
    assert done.result == stored.result
    assert type(done.result) is type(stored.result)
    if isinstance(result, dict | list):
        assert done.result is not result


async def test_retry_revives_a_dependent_blocked_along_two_paths(store):
    # Found in review: Z waits for X and V, both cancelled (through P) when A failed.
    # Z comes back once both are back, whichever of them its error names.
    a = await store.submit("k", "a")
    x = await store.submit("k", "x", depends_on=[a.id])
    p = await store.submit("k", "p", depends_on=[a.id])
    v = await store.submit("k", "v", depends_on=[p.id])
    z = await store.submit("k", "z", depends_on=[x.id, v.id])
    [t] = await store.claim("k", 1, "w", 30)
    await store.fail(a.id, t.fencing_token, "fatal", retry=False)
    assert {(await store.get(i)).status for i in (x.id, p.id, v.id, z.id)} == {"cancelled"}
    await store.retry(a.id)
    assert [(await store.get(i)).status for i in (a.id, x.id, p.id, v.id, z.id)] == ["queued"] * 5


@pytest.mark.parametrize("order", ["a first", "b first"])
async def test_retries_bring_back_the_same_tasks_in_any_order(store, order):
    a = await store.submit("k", "a")
    b = await store.submit("k", "b")
    both = await store.submit("k", "both", depends_on=[a.id, b.id])
    await store.cancel(a.id)  # cancels `both` (its error names a)
    await store.cancel(b.id)
    first, second = (a, b) if order == "a first" else (b, a)
    await store.retry(first.id)
    assert (await store.get(both.id)).status == "cancelled"  # the other is still cancelled
    await store.retry(second.id)
    assert (await store.get(both.id)).status == "queued"


async def test_a_persons_cancel_reason_may_read_like_the_cascade(store):
    a = await store.submit("k", "a")
    mine = await store.submit("k", "mine", depends_on=[a.id])
    theirs = await store.submit("k", "theirs", depends_on=[a.id])
    reason = f"dependency {a.id} failed"
    assert (await store.cancel(mine.id, reason=reason)).error == reason
    [t] = await store.claim("k", 1, "w", 30)
    await store.fail(a.id, t.fencing_token, "fatal", retry=False)
    assert (await store.get(theirs.id)).error == reason  # the cascade's, word for word
    await store.retry(a.id)
    assert (await store.get(theirs.id)).status == "queued"
    back = await store.get(mine.id)
    assert (back.status, back.error) == ("cancelled", reason)  # a person's decision


async def test_a_version_1_database_upgrades_and_keeps_its_cascade_cancellations(
    system, db_path, clock
):
    # Version 1 had no cancel_cause: a cascade cancellation was known by its error
    # text alone, which the upgrade turns into the column.
    conn = sqlite3.connect(db_path, isolation_level=None)
    for statement in _split(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    rows = [  # id, title, status, error, depends on
        (1, "a", "failed", "fatal", None),
        (2, "cascade", "cancelled", "dependency 1 failed", 1),
        (3, "person", "cancelled", "no longer needed", 1),
        (4, "grandchild", "cancelled", "dependency 2 cancelled", 2),
        (5, "an agent's own words", "failed", "dependency 1 failed", None),
        (6, "waiting", "queued", None, None),
    ]
    for task_id, title, status, error, dep in rows:
        conn.execute(
            "INSERT INTO tasks (id, kind, title, prompt, status, attempts, max_attempts, "
            "retry_delay, error, created_at, updated_at) VALUES (?, 'k', ?, '', ?, 1, 3, "
            "1.0, ?, 1.0, 1.0)",
            (task_id, title, status, error),
        )
        if dep is not None:
            conn.execute("INSERT INTO task_deps VALUES (?, ?)", (task_id, dep))
    conn.close()

    async with open_store(system, db_path, clock=clock) as store:
        assert read_db(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        causes = read_db(db_path, "SELECT id, cancel_cause FROM tasks ORDER BY id")
        assert causes == [(1, None), (2, 1), (3, None), (4, 2), (5, None), (6, None)]
        await store.retry(1)
        statuses = [(t.id, t.status) for t in await store.list()]
        assert statuses == [(1, "queued"), (2, "queued"), (3, "cancelled"), (4, "queued"),
                            (5, "failed"), (6, "queued")]
        assert (await store.get(3)).error == "no longer needed"
        causes = read_db(db_path, "SELECT id, cancel_cause FROM tasks ORDER BY id")
        assert causes == [(1, None), (2, None), (3, None), (4, None), (5, None), (6, None)]


async def test_a_claim_for_named_workers_leases_each_task_to_its_own(store):
    for i in range(3):
        await store.submit("k", f"t{i}")
    claimed = await store.claim("k", 3, "pool", 30, workers=("a", "b", "c"))
    assert [t.lease_owner for t in claimed] == ["a", "b", "c"]
    assert [(await store.runs(t.id))[0].worker for t in claimed] == ["a", "b", "c"]
    fewer = await store.claim("k", 2, "pool", 30, workers=("d", "e"))
    assert fewer == []
    with pytest.raises(ValueError, match="workers"):
        await store.claim("k", 2, "pool", 30, workers=("only one",))


# -- review runs ----------------------------------------------------------------


async def in_review(store, title="t"):
    """A task (of kind ``title``) whose first attempt succeeded and now waits for a
    reviewer."""
    task = await store.submit(title, title)
    [t] = await store.claim(title, 1, "k-0", 30)
    await store.succeed(t.id, t.fencing_token, {"v": 1}, review=True)
    return task


def summary(runs):
    return [(r.attempt, r.review, r.worker, r.outcome) for r in runs]


@pytest.mark.parametrize("verdict, outcome", [
    ("approve", "approved"), ("reject", "rejected"), ("escalate", "escalated"),
])
async def test_a_review_claim_is_a_run_closed_with_its_verdict(store, clock, verdict, outcome):
    task = await in_review(store)
    [r] = await store.claim_review(1, "reviewer", 30, workers=("review-1",))
    assert r.lease_owner == "review-1"
    [work, review] = await store.runs(task.id)
    assert (review.attempt, review.review, review.worker, review.fencing_token) == (
        1, True, "review-1", r.fencing_token)
    assert (review.hive_id, review.started_at, review.ended_at) == (store.hive_id, clock.now, None)
    assert not work.review and work.outcome == "succeeded"
    clock.advance(4)
    if verdict == "approve":
        await store.approve(task.id, token=r.fencing_token)
    elif verdict == "reject":
        await store.reject(task.id, "needs tests", token=r.fencing_token)
    else:
        await store.escalate(task.id, "unsure", token=r.fencing_token)
    [_, review] = await store.runs(task.id)
    assert (review.outcome, review.duration, review.ended_at) == (outcome, 4.0, clock.now)


async def test_every_review_claim_has_its_own_run_after_the_attempt_it_reviews(store):
    task = await in_review(store)
    [r] = await store.claim_review(1, "reviewer", 30)
    await store.reject(task.id, "again", token=r.fencing_token)
    [t] = await store.claim("t", 1, "k-0", 30)
    await store.succeed(t.id, t.fencing_token, {"v": 2}, review=True)
    [r] = await store.claim_review(1, "reviewer", 30)
    await store.approve(task.id, token=r.fencing_token)
    assert summary(await store.runs(task.id)) == [
        (1, False, "k-0", "succeeded"), (1, True, "reviewer", "rejected"),
        (2, False, "k-0", "succeeded"), (2, True, "reviewer", "approved"),
    ]


async def test_a_review_claim_for_named_workers_leases_each_task_to_its_own(store):
    tasks = [await in_review(store, f"t{i}") for i in range(3)]
    claimed = await store.claim_review(3, "reviewer", 30, workers=("a", "b", "c"))
    assert [t.id for t in claimed] == [t.id for t in tasks]
    assert [t.lease_owner for t in claimed] == ["a", "b", "c"]
    assert [(await store.runs(t.id))[-1].worker for t in claimed] == ["a", "b", "c"]
    assert await store.claim_review(2, "reviewer", 30, workers=("d", "e")) == []
    with pytest.raises(ValueError, match="workers"):
        await store.claim_review(2, "reviewer", 30, workers=("only one",))


async def test_an_expired_review_lease_closes_its_run(store, clock):
    swept = await in_review(store, "swept")
    [r] = await store.claim_review(1, "r1", 10)
    clock.advance(11)
    await store.sweep_leases()
    assert summary(await store.runs(swept.id))[-1] == (1, True, "r1", "expired")
    with pytest.raises(StaleLease):
        await store.approve(swept.id, token=r.fencing_token)
    # A lease that ran out and was not swept yet: the next review claim ends its run.
    [r] = await store.claim_review(1, "r2", 10)
    clock.advance(11)
    [again] = await store.claim_review(1, "r3", 10)
    assert again.fencing_token == r.fencing_token + 1
    assert summary(await store.runs(swept.id))[1:] == [
        (1, True, "r1", "expired"), (1, True, "r2", "expired"), (1, True, "r3", None)]


async def test_cancelling_a_task_under_review_closes_its_run_and_reports_the_reviewers_pgid(store):
    task = await in_review(store)
    [r] = await store.claim_review(1, "reviewer", 30)
    await store.record_run(task.id, r.fencing_token, pgid=4343, exit_code=None)
    assert (await store.runs(task.id))[-1].pgid == 4343
    cancelled = await store.cancel(task.id)
    assert cancelled.status == "cancelled"
    event = (await store.events_since(0, task_id=task.id))[-1]
    assert event.type == "task.cancelled" and event.payload["pgid"] == 4343
    [work, review] = await store.runs(task.id)
    assert (review.outcome, review.pgid) == ("cancelled", 4343)
    assert work.outcome == "succeeded"  # the attempt's own run is left as it was
    with pytest.raises(StaleLease):
        await store.record_run(task.id, r.fencing_token, pgid=1)
    # Waiting for a reviewer, nobody's: no pgid, and the attempt's run is left alone.
    waiting = await in_review(store, "waiting")
    await store.cancel(waiting.id)
    event = (await store.events_since(0, task_id=waiting.id))[-1]
    assert event.type == "task.cancelled" and "pgid" not in event.payload
    assert summary(await store.runs(waiting.id)) == [(1, False, "k-0", "succeeded")]


async def test_a_persons_decision_ends_a_review_under_way(store):
    decided = await in_review(store, "decided")
    [r] = await store.claim_review(1, "reviewer", 30)
    assert (await store.decide(decided.id, approve=False, feedback="no")).status == "queued"
    assert summary(await store.runs(decided.id))[-1] == (1, True, "reviewer", "decided")
    with pytest.raises(StaleLease):
        await store.reject(decided.id, "late", token=r.fencing_token)
    # approve or reject without a token is a person's decision too
    approved = await in_review(store, "approved")
    await store.claim_review(1, "reviewer", 30)
    await store.approve(approved.id)
    assert summary(await store.runs(approved.id))[-1] == (1, True, "reviewer", "decided")
    # and so is escalating without a token
    handed_up = await in_review(store, "handed-up")
    await store.claim_review(1, "reviewer", 30)
    assert (await store.escalate(handed_up.id, "a person looks")).status == "escalated"
    assert summary(await store.runs(handed_up.id))[-1] == (1, True, "reviewer", "decided")
    # an escalated task's review run was closed by the escalation, and stays so
    escalated = await in_review(store, "escalated")
    [r] = await store.claim_review(1, "reviewer", 30)
    await store.escalate(escalated.id, "?", token=r.fencing_token)
    await store.decide(escalated.id, approve=True)
    assert summary(await store.runs(escalated.id))[-1] == (1, True, "reviewer", "escalated")


async def test_a_reviewer_gives_its_review_back_for_another(store):
    task = await in_review(store)
    [r] = await store.claim_review(1, "review-0", 30)
    await store.record_run(task.id, r.fencing_token, pgid=4444)
    events = len(await store.events_since(0))
    back = await store.release(task.id, r.fencing_token, "hive shutting down")
    assert (back.status, back.lease_owner, back.attempts) == ("review", None, 1)
    assert len(await store.events_since(0)) == events  # no status changed
    assert summary(await store.runs(task.id))[-1] == (1, True, "review-0", "released")
    with pytest.raises(StaleLease):
        await store.release(task.id, r.fencing_token)
    [again] = await store.claim_review(1, "review-1", 30)
    assert again.id == task.id and again.fencing_token == r.fencing_token + 2


async def test_the_finished_attempts_token_holds_no_lease_on_its_review(store):
    # A worker's heartbeat racing its own succeed(review=True) must not lease the
    # review to nobody (claim_review would skip the task for a whole lease), nor may
    # that token release a review it never held.
    task = await in_review(store)
    [work] = await store.runs(task.id)
    with pytest.raises(StaleLease):
        await store.heartbeat(task.id, work.fencing_token, 30)
    with pytest.raises(StaleLease):
        await store.release(task.id, work.fencing_token, "not mine")
    [r] = await store.claim_review(1, "reviewer", 30)
    assert r.id == task.id
    assert await store.heartbeat(task.id, r.fencing_token, 30) > 0


async def test_record_run_needs_the_review_lease_of_a_task_in_review(store):
    task = await in_review(store)
    [work] = await store.runs(task.id)
    with pytest.raises(StaleLease):  # nobody reviews it: the token is the finished attempt's
        await store.record_run(task.id, work.fencing_token, pgid=5)
    [r] = await store.claim_review(1, "reviewer", 30)
    await store.record_run(task.id, r.fencing_token, pgid=6, exit_code=1, output_tail="FAILED")
    runs = await store.runs(task.id)
    assert [(x.pgid, x.exit_code, x.output_tail) for x in runs] == [
        (None, None, None), (6, 1, "FAILED")]


async def test_recovery_returns_the_pgid_of_a_dead_hives_reviewer(system, db_path, clock):
    async with open_store(system, db_path, clock=clock, name="s1") as first:
        task = await in_review(first)
        [r] = await first.claim_review(1, "review-0", 30)
        await first.record_run(task.id, r.fencing_token, pgid=888)
        dead = first.hive_id
    pretend_died(db_path, dead)
    async with open_store(system, db_path, clock=clock, name="s2") as second:
        report = second.recovery
        assert report.dead_hives == (dead,) and report.pgids == (888,)
        assert report.requeued == () and report.failed == ()
        back = await second.get(task.id)
        assert (back.status, back.lease_owner) == ("review", None)  # for the next reviewer
        assert summary(await second.runs(task.id))[-1] == (1, True, "review-0", "recovered")
        with pytest.raises(StaleLease):
            await second.approve(task.id, token=r.fencing_token)
        [again] = await second.claim_review(1, "review-0", 30)
        await second.approve(task.id, token=again.fencing_token)
        assert [r.outcome for r in await second.runs(task.id)] == [
            "succeeded", "recovered", "approved"]


async def test_a_version_2_database_upgrades_its_runs_as_attempts(system, db_path, clock):
    conn = sqlite3.connect(db_path, isolation_level=None)
    for migration in MIGRATIONS[:2]:
        for statement in _split(migration):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("INSERT INTO tasks (id, kind, title, prompt, status, attempts, max_attempts, "
                 "retry_delay, created_at, updated_at) VALUES (1, 'k', 't', '', 'review', 1, 3, "
                 "1.0, 1.0, 1.0)")
    conn.execute("INSERT INTO runs (task_id, attempt, fencing_token, worker, started_at, "
                 "ended_at, outcome) VALUES (1, 1, 1, 'w', 1.0, 2.0, 'succeeded')")
    conn.close()
    async with open_store(system, db_path, clock=clock) as store:
        assert read_db(db_path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        [r] = await store.claim_review(1, "reviewer", 30)
        await store.approve(1, token=r.fencing_token)
        assert summary(await store.runs(1)) == [
            (1, False, "w", "succeeded"), (1, True, "reviewer", "approved")]


def pretend_died(db_path: str, hive_id: str) -> None:
    """Make the hive ``hive_id`` look like a process that died without closing."""
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE hives SET stopped_at = NULL, pid = ? WHERE id = ?", (dead_pid(), hive_id))
    conn.commit()
    conn.close()
