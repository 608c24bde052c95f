"""End-to-end Hive throughput and makespan, with baselines measured in the same run.

    pip install -e ".[bench]"
    python benchmarks/hive_bench.py [--repeats 3] [--quick]

Rows (medians of repeats):
1. durable no-op tasks (Python backend, submit -> done) vs huey's SqliteHuey running
   the same no-op tasks (../shared/peers/huey_noop.py), both with synchronous=NORMAL,
   back to back in each repeat (the ratio is the median of the per-repeat ratios);
2. 5,000 tasks sleeping 100 ms on 1,000 worker slots: makespan / ideal (0.5 s);
3. 200 command-backend tasks running `sleep 0.2` on 50 slots: makespan / ideal (0.8 s);
4. the seed design (asyncio + aiosqlite pool, a commit per operation) processing the
   same no-op tasks sequentially and with asyncio.gather, next to ours;
5. the store's engine alone driven in a loop (no actors, no hive: submit, claim and
   succeed in batches of 64, the same SQL and value objects as the DB actor runs),
   the ceiling on this machine for any hive built on this store, next to 3× huey.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from hive_actors.hive import HiveConfig, KindConfig, open_hive
from hive_actors.store import messages as m
from hive_actors.store._engine import Engine

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"


async def _noop(task):
    return None


def _sleeper(seconds):
    async def sleep(task):
        await trio.sleep(seconds)

    return sleep


async def _hive_run(n: int, kind: KindConfig, directory: str) -> float:
    """Seconds from the first submit until all ``n`` tasks are done."""
    config = HiveConfig(kinds={"k": kind}, workspaces=Path(directory) / "ws")
    async with open_hive(Path(directory) / "hive.db", config) as hive:
        start = time.perf_counter()

        async def submit_many(first: int, count: int) -> None:
            for i in range(first, first + count):
                await hive.submit(kind="k", title=f"t{i}")

        async with trio.open_nursery() as nursery:  # 50 concurrent submitters
            per = -(-n // 50)
            for first in range(0, n, per):
                nursery.start_soon(submit_many, first, min(per, n - first))
        status = await hive.wait_idle()
        elapsed = time.perf_counter() - start
    done = status["counts"]["done"]
    if done != n:
        raise RuntimeError(f"only {done} of {n} tasks done: {status['counts']}")
    return elapsed


def hive_seconds(n: int, kind: KindConfig) -> float:
    directory = tempfile.mkdtemp(prefix="hive-bench-")
    try:
        return trio.run(_hive_run, n, kind, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def engine_rate(n: int, batch: int = 64) -> float:
    """No-op tasks/s through the store's engine alone: each round submits ``batch``
    tasks, claims them and marks them done, one transaction each."""
    directory = tempfile.mkdtemp(prefix="engine-bench-")
    engine, _, _ = Engine.open(str(Path(directory) / "engine.db"), clock=time.time)
    try:
        engine.no_wait()
        start = time.perf_counter()
        for first in range(0, n, batch):
            size = min(batch, n - first)
            submitted, _ = engine.execute(
                [m.Submit(kind="k", title=f"t{i}") for i in range(first, first + size)])
            for result in submitted:
                result.unwrap()
            (claimed,), _ = engine.execute(
                [m.Claim("k", size, "k", 30.0, workers=tuple(f"k-{i}" for i in range(size)))])
            succeeded, _ = engine.execute(
                [m.Succeed(task.id, task.fencing_token) for task in claimed.unwrap()])
            for result in succeeded:
                result.unwrap()
        return n / (time.perf_counter() - start)
    finally:
        engine.close()
        shutil.rmtree(directory, ignore_errors=True)


def huey_rate(n: int) -> float:
    spec = importlib.util.spec_from_file_location("huey_noop", PEERS / "huey_noop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(n, "NORMAL")


# -- the seed design: asyncio + aiosqlite pool, one commit per operation --------------


class SeedPool:
    """The platform we replace: up to 20 aiosqlite connections in an asyncio.Queue."""

    def __init__(self, path: str, size: int = 5, limit: int = 20) -> None:
        self.path, self.size, self.limit = path, size, limit
        self.pool: asyncio.Queue = asyncio.Queue()
        self.opened = []

    async def open(self) -> None:
        import aiosqlite

        async def connect():
            conn = await aiosqlite.connect(self.path)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            self.opened.append(conn)
            return conn

        self._connect = connect
        for _ in range(self.size):
            self.pool.put_nowait(await connect())

    async def execute(self, sql: str, args=()) -> list:
        try:
            conn = await asyncio.wait_for(self.pool.get(), 5)
        except TimeoutError:
            if len(self.opened) >= self.limit:
                raise
            conn = await self._connect()
        try:
            cursor = await conn.execute(sql, args)
            rows = await cursor.fetchall()
            await conn.commit()
            return rows
        finally:
            self.pool.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.opened:
            await conn.close()


async def _seed_run(n: int, path: str, concurrent: bool) -> float:
    pool = SeedPool(path)
    await pool.open()
    await pool.execute(
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT, status TEXT, result TEXT)"
    )
    await pool.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, task_id INTEGER, type TEXT, ts REAL)"
    )
    start = time.perf_counter()
    for i in range(n):
        await pool.execute("INSERT INTO tasks (title, status) VALUES (?, 'queued')", (f"t{i}",))

    async def process(task_id: int) -> None:
        await pool.execute("UPDATE tasks SET status='running' WHERE id=?", (task_id,))
        await pool.execute(
            "INSERT INTO events (task_id, type, ts) VALUES (?, 'started', ?)", (task_id, time.time())
        )
        await pool.execute("UPDATE tasks SET status='done', result='null' WHERE id=?", (task_id,))
        await pool.execute(
            "INSERT INTO events (task_id, type, ts) VALUES (?, 'done', ?)", (task_id, time.time())
        )

    ids = [row[0] for row in await pool.execute("SELECT id FROM tasks WHERE status='queued'")]
    if concurrent:
        semaphore = asyncio.Semaphore(20)

        async def bounded(task_id: int) -> None:
            async with semaphore:
                await process(task_id)

        await asyncio.gather(*(bounded(i) for i in ids))
    else:
        for task_id in ids:
            await process(task_id)
    elapsed = time.perf_counter() - start
    await pool.close()
    return elapsed


def seed_seconds(n: int, concurrent: bool) -> float:
    directory = tempfile.mkdtemp(prefix="seed-bench-")
    try:
        return asyncio.run(_seed_run(n, str(Path(directory) / "seed.db"), concurrent))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    r = args.repeats
    n_noop = 1000 if args.quick else 3000
    print(f"median of {r} repeats; synchronous=NORMAL everywhere\n")

    noop = KindConfig(backend=_noop, concurrency=64)
    try:
        huey_rate(100)  # warm-up, and is huey installed?
        has_huey = True
    except ImportError:
        has_huey = False
    # Each repeat runs ours, the engine alone and huey back to back; ratios are medians
    # of the per-repeat ratios, so load drift on a shared machine hits every side.
    rounds = [(n_noop / hive_seconds(n_noop, noop), engine_rate(n_noop),
               huey_rate(n_noop) if has_huey else None) for _ in range(r)]
    ours = statistics.median(o for o, _, _ in rounds)
    alone = statistics.median(a for _, a, _ in rounds)
    print("| benchmark | ours | baseline | ratio |")
    print("|---|---|---|---|")
    if not has_huey:
        missing = "huey not installed (pip install -e '.[bench]')"
        print(f"| {n_noop:,} no-op tasks end to end, tasks/s | {ours:,.0f} | {missing} | - |")
        print(f"| {n_noop:,} no-op tasks through the store engine alone (no actors), tasks/s | {alone:,.0f} | {missing} | - |")
    else:
        huey = statistics.median(h for _, _, h in rounds)
        ratio = statistics.median(o / h for o, _, h in rounds)
        ceiling = statistics.median(a / h for _, a, h in rounds)
        print(f"| {n_noop:,} no-op tasks end to end, tasks/s | {ours:,.0f} | huey SqliteHuey: {huey:,.0f} | {ratio:.2f}× (goal ≥ 3) |")
        print(f"| {n_noop:,} no-op tasks through the store engine alone (no actors), tasks/s | {alone:,.0f} | huey SqliteHuey: {huey:,.0f} | {ceiling:.2f}× (the ceiling of any hive on this store) |")

    n_seed = 300 if args.quick else 1000
    seed_seq = n_seed / median(lambda: seed_seconds(n_seed, concurrent=False), r)
    seed_par = n_seed / median(lambda: seed_seconds(n_seed, concurrent=True), r)
    print(f"| seed design, {n_seed:,} no-op tasks sequential, tasks/s | {ours:,.0f} | {seed_seq:,.0f} | {ours / seed_seq:.1f}× |")
    print(f"| seed design, {n_seed:,} no-op tasks gather(20), tasks/s | {ours:,.0f} | {seed_par:,.0f} (seed's own speedup {seed_par / seed_seq:.1f}×; it claimed 5×) | {ours / seed_par:.1f}× |")

    n_sleep, slots = (1000, 200) if args.quick else (5000, 1000)
    ideal = n_sleep / slots * 0.1
    makespan = median(lambda: hive_seconds(n_sleep, KindConfig(backend=_sleeper(0.1), concurrency=slots)), r)
    print(f"| {n_sleep:,} × sleep 100 ms on {slots:,} slots: makespan / ideal ({ideal:.1f} s) | {makespan:.2f} s | ideal {ideal:.2f} s | {makespan / ideal:.2f} (goal ≤ 2.0) |")

    n_cmd, cmd_slots = (100, 50) if args.quick else (200, 50)
    ideal = n_cmd / cmd_slots * 0.2
    command = KindConfig(command=["sleep", "0.2"], concurrency=cmd_slots, stdin="none")
    makespan = median(lambda: hive_seconds(n_cmd, command), r)
    print(f"| {n_cmd} × `sleep 0.2` commands on {cmd_slots} slots: makespan / ideal ({ideal:.1f} s) | {makespan:.2f} s | ideal {ideal:.2f} s | {makespan / ideal:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
