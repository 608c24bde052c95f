"""The store against the pure-Python model, under random operation sequences.

Operations go through ``Engine.execute``, the exact code the DB actor runs, alone or
several in one batch (one transaction, a savepoint each), with a clock the test
moves. After every step the statuses, attempts and tokens of every task, and the
events table, must match the model.
"""

import random

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hive_actors.store import messages as m
from hive_actors.store._engine import Engine

from .model import Model

KINDS = ("a", "b")
LEASE = 10.0
MISSING = 10_000

# An operation spec: (name, params); turned into a message against the model's state
# just before the batch runs.
task_ref = st.integers(min_value=0, max_value=40)
op_specs = st.one_of(
    st.tuples(st.just("submit"), st.fixed_dictionaries({
        "kind": st.sampled_from(KINDS),
        "priority": st.integers(0, 2),
        "deps": st.lists(task_ref, max_size=3),
        "max_attempts": st.integers(1, 3),
        "retry_delay": st.sampled_from([0.0, 1.0, 5.0]),
    })),
    st.tuples(st.just("claim"), st.fixed_dictionaries({
        "kind": st.sampled_from(KINDS), "n": st.integers(1, 3)})),
    st.tuples(st.just("claim_review"), st.fixed_dictionaries({"n": st.integers(1, 2)})),
    st.tuples(st.just("heartbeat"), st.fixed_dictionaries({
        "task": task_ref, "stale": st.booleans()})),
    st.tuples(st.just("succeed"), st.fixed_dictionaries({
        "task": task_ref, "stale": st.booleans(), "review": st.booleans()})),
    st.tuples(st.just("fail"), st.fixed_dictionaries({
        "task": task_ref, "stale": st.booleans(), "retry": st.booleans()})),
    st.tuples(st.just("release"), st.fixed_dictionaries({"task": task_ref})),
    st.tuples(st.just("approve"), st.fixed_dictionaries({
        "task": task_ref, "token": st.sampled_from(["none", "current", "stale"])})),
    st.tuples(st.just("reject"), st.fixed_dictionaries({
        "task": task_ref, "token": st.sampled_from(["none", "current", "stale"])})),
    st.tuples(st.just("escalate"), st.fixed_dictionaries({
        "task": task_ref, "token": st.sampled_from(["none", "current"])})),
    st.tuples(st.just("decide"), st.fixed_dictionaries({
        "task": task_ref, "approve": st.booleans()})),
    st.tuples(st.just("cancel"), st.fixed_dictionaries({"task": task_ref})),
    st.tuples(st.just("retry"), st.fixed_dictionaries({"task": task_ref})),
    st.tuples(st.just("sweep"), st.just({})),
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now = 1000.0
        self.engine, _, _ = Engine.open(
            ":memory:", clock=lambda: self.now, rng=random.Random(0)
        )
        self.model = Model()
        self.last_seq = 0
        self.done_events: dict[int, int] = {}

    def teardown(self):
        self.engine.close()

    # -- turning specs into messages ---------------------------------------

    def _task(self, ref):
        ids = sorted(self.model.tasks)
        if not ids or ref >= 38:
            return MISSING
        return ids[ref % len(ids)]

    def _token(self, task_id, mode):
        t = self.model.tasks.get(task_id)
        current = t.token if t else 1
        return {"none": None, "current": current, "stale": current - 1}[mode]

    def _message(self, name, p):
        if name == "submit":
            return m.Submit(p["kind"], "t", priority=p["priority"],
                            depends_on=[self._task(r) for r in p["deps"]],
                            max_attempts=p["max_attempts"], retry_delay=p["retry_delay"])
        if name == "claim":
            return m.Claim(p["kind"], p["n"], "w", LEASE)
        if name == "claim_review":
            return m.ClaimReview(p["n"], "r", LEASE)
        if name == "sweep":
            return m.SweepLeases()
        task_id = p["id"] if "id" in p else self._task(p["task"])
        if name == "heartbeat":
            return m.Heartbeat(task_id, self._token(task_id, "stale" if p["stale"] else "current"),
                               LEASE)
        if name == "succeed":
            return m.Succeed(task_id, self._token(task_id, "stale" if p["stale"] else "current"),
                             {"r": task_id}, review=p["review"])
        if name == "fail":
            return m.Fail(task_id, self._token(task_id, "stale" if p["stale"] else "current"),
                          "boom", retry=p["retry"])
        if name == "release":
            return m.Release(task_id, self._token(task_id, "current"))
        if name == "approve":
            return m.Approve(task_id, self._token(task_id, p["token"]))
        if name == "reject":
            return m.Reject(task_id, "redo", self._token(task_id, p["token"]))
        if name == "escalate":
            return m.Escalate(task_id, "?", self._token(task_id, p["token"]))
        if name == "decide":
            return m.Decide(task_id, p["approve"], "person says")
        if name == "cancel":
            return m.Cancel(task_id)
        if name == "retry":
            return m.Retry(task_id)
        raise AssertionError(name)

    def _apply_model(self, msg, result, events):
        """Apply ``msg`` to the model; return its value or raised exception."""
        model, now = self.model, self.now
        delays = _not_befores(result)
        try:
            if isinstance(msg, m.Submit):
                return model.submit(now, msg.kind, msg.priority, msg.depends_on,
                                    msg.max_attempts, msg.retry_delay, events)
            if isinstance(msg, m.Claim):
                return model.claim(now, msg.kind, msg.n, msg.lease_seconds, events)
            if isinstance(msg, m.ClaimReview):
                return model.claim_review(now, msg.n, msg.lease_seconds, events)
            if isinstance(msg, m.Heartbeat):
                return model.heartbeat(now, msg.task_id, msg.token, msg.lease_seconds, events)
            if isinstance(msg, m.Succeed):
                return model.succeed(now, msg.task_id, msg.token, msg.review, events)
            if isinstance(msg, m.Fail):
                return model.fail(now, msg.task_id, msg.token, msg.retry, delays, events)
            if isinstance(msg, m.Release):
                return model.release(now, msg.task_id, msg.token, events)
            if isinstance(msg, m.Approve):
                return model.approve(now, msg.task_id, msg.token, events)
            if isinstance(msg, m.Reject):
                return model.reject(now, msg.task_id, msg.token, msg.feedback, events)
            if isinstance(msg, m.Escalate):
                return model.escalate(now, msg.task_id, msg.token, events)
            if isinstance(msg, m.Decide):
                return model.decide(now, msg.task_id, msg.approve, msg.feedback, events)
            if isinstance(msg, m.Cancel):
                return model.cancel(now, msg.task_id, events)
            if isinstance(msg, m.Retry):
                return model.retry(now, msg.task_id, events)
            if isinstance(msg, m.SweepLeases):
                return model.sweep(now, delays, events)
        except Exception as exc:  # the model's verdict: this op must fail like this
            return exc
        raise AssertionError(msg)

    def _run(self, specs):
        messages = [self._message(name, p) for name, p in specs]
        results, published = self.engine.execute(messages)
        assert len(results) == len(messages)
        expected_events = []
        for msg, result in zip(messages, results, strict=True):
            events: list = []
            value = result.value if hasattr(result, "value") else None
            want = self._apply_model(msg, value, events)
            if isinstance(want, Exception):
                assert hasattr(result, "error"), (msg, result)
                assert type(result.error) is type(want), (msg, result.error, want)
                continue
            assert hasattr(result, "value"), (msg, result.error)
            expected_events += events
            _compare_value(msg, result.value, want)
        got = [(e.type, e.task_id) for e in published]
        assert got == expected_events
        # Persisted events continue the sequence without gaps; only heartbeats are
        # published without a row.
        persisted = [e for e in published if e.seq is not None]
        assert all(e.type == "task.heartbeat" for e in published if e.seq is None)
        assert [e.seq for e in persisted] == list(
            range(self.last_seq + 1, self.last_seq + 1 + len(persisted))
        )
        (stored,), _ = self.engine.execute([m.EventsSince(self.last_seq, limit=10_000)])
        stored = stored.unwrap()
        # What was published is exactly what was stored, field for field.
        assert stored == persisted
        if len(messages) == 1 and hasattr(results[0], "value"):
            # A returned task is the task as stored after the change, every field.
            for task in _tasks_in(results[0].value):
                (now,), _ = self.engine.execute([m.Get(task.id)])
                assert now.unwrap() == task
        if persisted:
            self.last_seq = persisted[-1].seq
        for e in persisted:
            if e.type == "task.done":
                self.done_events[e.task_id] = self.done_events.get(e.task_id, 0) + 1

    # -- rules ----------------------------------------------------------------

    @rule(spec=op_specs)
    def one(self, spec):
        self._run([spec])

    @precondition(lambda self: self.model.tasks)
    @rule(specs=st.lists(op_specs, min_size=2, max_size=6))
    def batch(self, specs):
        self._run(specs)

    @rule(kind=st.sampled_from(KINDS))
    def submit_then_claim(self, kind):
        self._run([("submit", {"kind": kind, "priority": 0, "deps": [], "max_attempts": 2,
                               "retry_delay": 1.0})])
        self._run([("claim", {"kind": kind, "n": 1})])

    @rule(
        max_attempts=st.integers(1, 2),
        verdicts=st.lists(
            st.tuples(st.sampled_from(["approve", "reject", "escalate", "decide"]),
                      st.sampled_from(["none", "current"]), st.booleans()),
            min_size=1, max_size=3,
        ),
        fail_first=st.booleans(),
    )
    def review_path(self, max_attempts, verdicts, fail_first):
        """Drive one task of its own kind through work, review and verdicts."""
        self._run([("submit", {"kind": "c", "priority": 5, "deps": [],
                               "max_attempts": max_attempts, "retry_delay": 0.0})])
        task_id = max(self.model.tasks)
        for verdict, token, flag in verdicts:
            self._run([("claim", {"kind": "c", "n": 1})])
            if fail_first:
                self._run([("fail", {"id": task_id, "stale": False, "retry": True})])
                self._run([("claim", {"kind": "c", "n": 1})])
            self._run([("succeed", {"id": task_id, "stale": False, "review": True})])
            if flag:
                self._run([("claim_review", {"n": 1})])
                self.a_run_is_open_exactly_while_its_lease_is_held()  # the review's
            if verdict == "decide":
                self._run([("escalate", {"id": task_id, "token": token})])
                self._run([("decide", {"id": task_id, "approve": flag})])
            else:
                self._run([(verdict, {"id": task_id, "token": token})])

    @rule(dt=st.sampled_from([0.5, 3.0, LEASE + 1, 60.0]))
    def advance_clock(self, dt):
        self.now += dt

    # -- invariants -------------------------------------------------------------

    @invariant()
    def same_tasks_as_model(self):
        (listed,), _ = self.engine.execute([m.ListTasks()])
        tasks = listed.unwrap()
        assert [t.id for t in tasks] == sorted(self.model.tasks)  # no task lost
        for t in tasks:
            mt = self.model.tasks[t.id]
            assert (t.status, t.attempts, t.fencing_token, t.depends_on) == (
                mt.status, mt.attempts, mt.token, mt.deps), t
            assert (t.lease_expires_at is None) == (mt.lease is None), t

    @invariant()
    def done_at_most_once(self):
        assert all(n == 1 for n in self.done_events.values())
        for task_id in self.done_events:
            assert self.model.tasks[task_id].status == "done"

    @invariant()
    def a_cascade_cancellation_always_has_its_reason(self):
        # Declarative, apart from the model: a task the cascade cancelled records, in
        # the cancel_cause column, the dependency whose end cancelled it, and always has
        # a dependency that is failed or cancelled; once none is (retries), it is
        # queued, with no cause. Then the column against the model's cause.
        (listed,), _ = self.engine.execute([m.ListTasks()])
        tasks = listed.unwrap()
        status = {t.id: t.status for t in tasks}
        cause = dict(self.engine._conn.execute("SELECT id, cancel_cause FROM tasks"))
        for t in tasks:
            if cause[t.id] is not None:
                assert t.status == "cancelled" and cause[t.id] in t.depends_on, t
                assert any(status[d] in ("failed", "cancelled") for d in t.depends_on), t
            assert cause[t.id] == self.model.tasks[t.id].cause, t

    @invariant()
    def a_run_is_open_exactly_while_its_lease_is_held(self):
        # Declarative: every holder of a lease (a worker on a running task, a reviewer
        # on a task in review) has one open run, of the lease's token and in its name
        # (a review's marked as such); every other run is closed, with an outcome
        # that says how its attempt or review ended.
        conn = self.engine._conn
        held = sorted(conn.execute(
            "SELECT id, fencing_token, lease_owner, status = 'review' FROM tasks "
            "WHERE lease_owner IS NOT NULL"))
        running = sorted(conn.execute(
            "SELECT task_id, fencing_token, worker, review FROM runs WHERE ended_at IS NULL"))
        assert running == held
        ends = {0: {"succeeded", "failed", "expired", "cancelled", "released", "recovered"},
                1: {"approved", "rejected", "escalated", "decided", "released", "expired",
                    "cancelled", "recovered"}}
        for review, outcome in conn.execute(
                "SELECT review, outcome FROM runs WHERE ended_at IS NOT NULL"):
            assert outcome in ends[review], (review, outcome)

    @invariant()
    def counts_agree(self):
        (counts,), _ = self.engine.execute([m.Counts()])
        want: dict[str, int] = {}
        for t in self.model.tasks.values():
            want[t.status] = want.get(t.status, 0) + 1
        assert {s: n for s, n in counts.unwrap()["counts"].items() if n} == want


def _tasks_in(value):
    if isinstance(value, list):
        return value
    if hasattr(value, "fencing_token"):
        return [value]
    return []


def _not_befores(value):
    """Backoff times chosen by the store (with jitter), in the order it chose them."""
    if isinstance(value, list):
        return [t.not_before for t in value if t.status == "queued"]
    if value is not None and hasattr(value, "not_before") and value.status == "queued":
        return [value.not_before]
    return []


def _compare_value(msg, value, want):
    if isinstance(msg, m.Claim | m.ClaimReview | m.SweepLeases):
        assert [t.id for t in value] == [t.id for t in want]
        for got, mt in zip(value, want, strict=True):
            assert (got.status, got.fencing_token) == (mt.status, mt.token)
    elif isinstance(msg, m.Heartbeat):
        assert value == want.lease
    else:
        assert (value.id, value.status, value.attempts, value.fencing_token) == (
            want.id, want.status, want.attempts, want.token)


TestStoreMachine = StoreMachine.TestCase
