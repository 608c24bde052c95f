"""Durable transitions per second through the DB actor, against two references.

    python benchmarks/store_bench.py [--tasks 3000] [--callers 100] [--repeats 5]

Every case runs the same workload on a fresh WAL database with synchronous=NORMAL:
``--callers`` concurrent callers each loop submit -> claim(1) -> succeed until
``--tasks`` tasks are done; each loop is 3 durable transitions (5 event rows).

* ``store (thread)``: the DB actor through the ``Store`` facade with its SQLite
  thread (the default: lock waits and checkpoints there, operations on the trio
  thread). ``store (inline)``: the same with no thread at all.
* ``raw sqlite3``: the same SQL statements the store runs (event rows in one
  executemany per transaction, no read before succeed), with no actor, no
  savepoints, no token checks and no value objects, in transactions of ``--callers``
  operations (the batch size the actor sees when every caller has one request
  outstanding): the physical limit of the stack.
* ``seed design``: asyncio + aiosqlite, a pool of up to 20 connections (5 opened at
  start) in an ``asyncio.Queue``, callers under a semaphore, a commit per operation.

Then single-caller latency of one ``submit`` (p50, p99). Figures are medians of
``--repeats`` interleaved rounds; compare within one run, as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hive_actors  # noqa: E402
from hive_actors.store import open_store  # noqa: E402
from hive_actors.store._engine import _CLAIM, _CLAIM_UPDATE, _INSERT_RUN  # noqa: E402  (the store's own statements: raw runs exactly these)
from hive_actors.store._schema import MIGRATIONS, _split  # noqa: E402

LEASE = 600.0


def fresh_path() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="store-bench-"), "bench.db")


# -- the DB actor ------------------------------------------------------------------


async def store_case(path: str, tasks: int, callers: int, inline: bool) -> tuple[float, float]:
    async with hive_actors.open_actor_system() as system:
        async with open_store(system, path, inline=inline, hive_heartbeat=None) as store:
            submitted, done = [0], [0]

            async def caller(i: int) -> None:
                worker = f"w{i}"
                while done[0] < tasks:
                    if submitted[0] < tasks:
                        submitted[0] += 1
                        await store.submit("k", "t", "p")
                    for t in await store.claim("k", 1, worker, LEASE):
                        await store.succeed(t.id, t.fencing_token, {"ok": True})
                        done[0] += 1

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(callers):
                    nursery.start_soon(caller, i)
            elapsed = time.perf_counter() - start
            batches, ops = store.commit_stats()
            counts = (await store.counts())["counts"]
            assert counts["done"] == tasks, counts
    return 3 * tasks / elapsed, ops / max(batches, 1)


async def store_latency(path: str, n: int, inline: bool) -> list[float]:
    async with hive_actors.open_actor_system() as system:
        async with open_store(system, path, inline=inline, hive_heartbeat=None) as store:
            lat = []
            for _ in range(n):
                t0 = time.perf_counter()
                await store.submit("k", "t", "p")
                lat.append(time.perf_counter() - t0)
    return lat


# -- raw sqlite3: the same statements, batched -----------------------------------

_INSERT_TASK = (
    "INSERT INTO tasks (kind, title, prompt, status, priority, max_attempts, retry_delay, "
    "not_before, pending_deps, error, parent_id, metadata, created_at, updated_at) "
    "VALUES (?, ?, ?, 'queued', 0, 3, 1.0, ?, 0, NULL, NULL, NULL, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT INTO events (ts, type, task_id, actor, correlation_id, payload) "
    "VALUES (?, ?, ?, NULL, NULL, ?)"
)
# The seed design's claim (its own statements, as it had them).
_SEED_CLAIM = (
    "SELECT id FROM tasks WHERE status = 'queued' AND pending_deps = 0 AND kind = ? "
    "AND not_before <= ? ORDER BY priority DESC, id LIMIT ?"
)
_SEED_CLAIM_UPDATE = (
    "UPDATE tasks SET status = 'running', attempts = attempts + 1, "
    "fencing_token = fencing_token + 1, lease_owner = ?, lease_hive = ?, "
    "lease_expires_at = ?, updated_at = ? WHERE id = ? RETURNING attempts, fencing_token"
)


def open_raw(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("BEGIN")
    for statement in _split(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("COMMIT")
    return conn


def raw_submit(conn: sqlite3.Connection, now: float, events: list) -> int:
    task_id = conn.execute(_INSERT_TASK, ("k", "t", "p", now, now, now)).lastrowid
    events.append((now, "task.queued", task_id, json.dumps({"kind": "k", "status": "queued"})))
    return task_id


def raw_claim(conn: sqlite3.Connection, now: float, worker: str,
              events: list) -> tuple[int, int] | None:
    row = conn.execute(_CLAIM, ("k", now, 1)).fetchone()
    if row is None:
        return None
    task_id, attempts, token = row[0], row[6] + 1, row[15] + 1
    conn.execute(_CLAIM_UPDATE, (attempts, token, worker, "h", now + LEASE, now, task_id))
    conn.execute(_INSERT_RUN, (task_id, attempts, token, worker, "h", now))
    events.append((now, "task.started", task_id, json.dumps(
        {"kind": "k", "status": "running", "attempt": attempts, "token": token})))
    return task_id, token


def raw_succeed(conn: sqlite3.Connection, now: float, task_id: int, token: int,
                events: list) -> None:
    conn.execute(
        "UPDATE runs SET ended_at = ?, duration = ? - started_at, outcome = 'succeeded' "
        "WHERE task_id = ? AND fencing_token = ? AND ended_at IS NULL",
        (now, now, task_id, token),
    )
    conn.execute(
        "UPDATE tasks SET status = 'done', result = ?, lease_owner = NULL, lease_hive = NULL, "
        "lease_expires_at = NULL, updated_at = ? WHERE id = ?",
        (json.dumps({"ok": True}), now, task_id),
    )
    payload = json.dumps({"kind": "k", "status": "done"})
    events.append((now, "task.succeeded", task_id, payload))
    events.append((now, "task.done", task_id, payload))
    conn.execute(
        "UPDATE tasks SET pending_deps = pending_deps - 1 "
        "WHERE id IN (SELECT task_id FROM task_deps WHERE depends_on = ?)",
        (task_id,),
    )


def raw_case(path: str, tasks: int, batch: int) -> float:
    conn = open_raw(path)
    start = time.perf_counter()
    left = tasks
    while left > 0:
        size = min(batch, left)
        left -= size
        now = time.time()
        events: list = []
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(size):
            raw_submit(conn, now, events)
        conn.executemany(_INSERT_EVENT, events)
        conn.execute("COMMIT")
        events.clear()
        conn.execute("BEGIN IMMEDIATE")
        claimed = [raw_claim(conn, now, f"w{i}", events) for i in range(size)]
        conn.executemany(_INSERT_EVENT, events)
        conn.execute("COMMIT")
        events.clear()
        conn.execute("BEGIN IMMEDIATE")
        for task_id, token in claimed:
            raw_succeed(conn, now, task_id, token, events)
        conn.executemany(_INSERT_EVENT, events)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    assert conn.execute("SELECT count(*) FROM tasks WHERE status = 'done'").fetchone()[0] == tasks
    conn.close()
    return 3 * tasks / elapsed


# -- the seed design: asyncio + aiosqlite pool, commit per operation -------------


class SeedPool:
    """Up to 20 aiosqlite connections in an asyncio.Queue, 5 opened at start; another
    is opened when none is free within 5 s."""

    def __init__(self, path: str, size: int = 20, initial: int = 5) -> None:
        self.path, self.size, self.initial = path, size, initial
        self.queue: asyncio.Queue = asyncio.Queue()
        self.opened = 0

    async def _open(self):
        import aiosqlite

        conn = await aiosqlite.connect(self.path, timeout=30, isolation_level=None)
        await conn.execute("PRAGMA synchronous = NORMAL")
        self.opened += 1
        return conn

    async def start(self) -> None:
        for _ in range(self.initial):
            await self.queue.put(await self._open())

    async def acquire(self):
        try:
            return await asyncio.wait_for(self.queue.get(), 5.0)
        except TimeoutError:
            if self.opened < self.size:
                return await self._open()
            return await self.queue.get()

    async def close(self) -> None:
        while not self.queue.empty():
            await (await self.queue.get()).close()


async def seed_op(pool: SeedPool, fn, *args):
    conn = await pool.acquire()
    try:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            result = await fn(conn, *args)
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        return result
    finally:
        pool.queue.put_nowait(conn)


async def seed_submit(conn, now):
    cur = await conn.execute(_INSERT_TASK, ("k", "t", "p", now, now, now))
    await conn.execute(_INSERT_EVENT, (now, "task.queued", cur.lastrowid, json.dumps(
        {"kind": "k", "status": "queued"})))


async def seed_claim(conn, now, worker):
    row = await (await conn.execute(_SEED_CLAIM, ("k", now, 1))).fetchone()
    if row is None:
        return None
    attempts, token = await (await conn.execute(
        _SEED_CLAIM_UPDATE, (worker, "h", now + LEASE, now, row[0]))).fetchone()
    await conn.execute(_INSERT_RUN, (row[0], attempts, token, worker, "h", now))
    await conn.execute(_INSERT_EVENT, (now, "task.started", row[0], json.dumps(
        {"kind": "k", "status": "running"})))
    return row[0], token


async def seed_succeed(conn, now, task_id, token):
    await conn.execute(
        "UPDATE runs SET ended_at = ?, duration = ? - started_at, outcome = 'succeeded' "
        "WHERE task_id = ? AND fencing_token = ? AND ended_at IS NULL",
        (now, now, task_id, token),
    )
    await conn.execute(
        "UPDATE tasks SET status = 'done', result = ?, updated_at = ? WHERE id = ?",
        (json.dumps({"ok": True}), now, task_id),
    )
    payload = json.dumps({"kind": "k", "status": "done"})
    await conn.execute(_INSERT_EVENT, (now, "task.succeeded", task_id, payload))
    await conn.execute(_INSERT_EVENT, (now, "task.done", task_id, payload))


async def seed_case_async(path: str, tasks: int, callers: int) -> float:
    open_raw(path).close()
    pool = SeedPool(path)
    await pool.start()
    semaphore = asyncio.Semaphore(20)
    submitted, done = [0], [0]

    async def caller(i: int) -> None:
        while done[0] < tasks:
            async with semaphore:
                if submitted[0] < tasks:
                    submitted[0] += 1
                    await seed_op(pool, seed_submit, time.time())
                claimed = await seed_op(pool, seed_claim, time.time(), f"w{i}")
                if claimed:
                    await seed_op(pool, seed_succeed, time.time(), *claimed)
                    done[0] += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    elapsed = time.perf_counter() - start
    await pool.close()
    conn = sqlite3.connect(path)
    done = conn.execute("SELECT count(*) FROM tasks WHERE status = 'done'").fetchone()[0]
    conn.close()
    assert done == tasks, done
    return 3 * tasks / elapsed


async def seed_latency_async(path: str, n: int) -> list[float]:
    open_raw(path).close()
    pool = SeedPool(path)
    await pool.start()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await seed_op(pool, seed_submit, time.time())
        lat.append(time.perf_counter() - t0)
    await pool.close()
    return lat


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--seed-tasks", type=int, default=1000)
    parser.add_argument("--callers", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--latency-n", type=int, default=2000)
    args = parser.parse_args()
    random.seed(0)

    rates: dict[str, list[float]] = {k: [] for k in (
        "store (thread)", "store (inline)", "raw sqlite3", "seed design")}
    batch_sizes: dict[str, list[float]] = {"store (thread)": [], "store (inline)": []}
    for _ in range(args.repeats):
        for inline, label in ((False, "store (thread)"), (True, "store (inline)")):
            rate, mean_batch = trio.run(store_case, fresh_path(), args.tasks, args.callers, inline)
            rates[label].append(rate)
            batch_sizes[label].append(mean_batch)
        rates["raw sqlite3"].append(raw_case(fresh_path(), args.tasks, args.callers))
        rates["seed design"].append(
            asyncio.run(seed_case_async(fresh_path(), args.seed_tasks, args.callers))
        )
    med = {k: statistics.median(v) for k, v in rates.items()}

    def ratio(label: str, baseline: str) -> float:
        # Each repeat runs every case back to back, so a ratio within one repeat
        # cancels most of the machine's drift; the median of those is reported.
        return statistics.median(a / b for a, b in zip(rates[label], rates[baseline], strict=True))

    print(f"workload: submit -> claim -> succeed, {args.callers} concurrent callers, "
          f"{args.tasks} tasks ({args.seed_tasks} for the seed design), "
          f"median of {args.repeats} (ratios: median of the per-repeat ratios)")
    print(f"{'case':<16} {'transitions/s':>14} {'vs raw':>8} {'vs seed':>8} {'mean batch':>11}")
    for label, rate in med.items():
        batch = statistics.median(batch_sizes[label]) if label in batch_sizes else None
        print(f"{label:<16} {rate:>14,.0f} {ratio(label, 'raw sqlite3'):>8.2f} "
              f"{ratio(label, 'seed design'):>8.1f} "
              f"{'' if batch is None else f'{batch:.1f}':>11}")

    print(f"\nsingle caller, {args.latency_n} sequential submits:")
    print(f"{'case':<16} {'p50 µs':>8} {'p99 µs':>8}")
    for inline, label in ((False, "store (thread)"), (True, "store (inline)")):
        lat = trio.run(store_latency, fresh_path(), args.latency_n, inline)
        print(f"{label:<16} {pct(lat, 0.5) * 1e6:>8.0f} {pct(lat, 0.99) * 1e6:>8.0f}")
    lat = asyncio.run(seed_latency_async(fresh_path(), args.latency_n))
    print(f"{'seed design':<16} {pct(lat, 0.5) * 1e6:>8.0f} {pct(lat, 0.99) * 1e6:>8.0f}")


if __name__ == "__main__":
    main()
