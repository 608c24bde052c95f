"""Actor messaging vs raw trio channels, in one run (medians of repeats).

    python benchmarks/actors_bench.py [--n 100000] [--repeats 5]

Rows: ``tell`` throughput vs a raw memory-channel producer/consumer; ``ask`` round
trips vs a raw two-channel ping-pong; a burst of ``tell_nowait`` vs a raw
``send_nowait`` burst drained with ``receive_nowait``.  Ratios are ours / raw.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import trio

import hive_actors


class Sink(hive_actors.Actor):
    def __init__(self):
        self.n = 0

    async def handle(self, message):
        if message is None:
            return self.n
        self.n += 1


class Echo(hive_actors.Actor):
    async def handle(self, message):
        return message


async def actor_tell(n: int) -> float:
    async with hive_actors.open_actor_system() as system:
        sink = await system.spawn(Sink, mailbox_size=1024)
        start = time.perf_counter()
        for i in range(n):
            await sink.tell(i)
        assert await sink.ask(None) == n
        return n / (time.perf_counter() - start)


async def raw_channel(n: int) -> float:
    send, receive = trio.open_memory_channel(1024)
    count = 0

    async def consumer():
        nonlocal count
        async for _ in receive:
            count += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        start = time.perf_counter()
        async with send:
            for i in range(n):
                await send.send(i)
    elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


async def actor_ask(n: int) -> float:
    async with hive_actors.open_actor_system() as system:
        echo = await system.spawn(Echo)
        start = time.perf_counter()
        for i in range(n):
            await echo.ask(i)
        return n / (time.perf_counter() - start)


async def raw_ping_pong(n: int) -> float:
    to_server, server_in = trio.open_memory_channel(0)
    server_out, from_server = trio.open_memory_channel(0)

    async def server():
        async for message in server_in:
            await server_out.send(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        start = time.perf_counter()
        for i in range(n):
            await to_server.send(i)
            await from_server.receive()
        elapsed = time.perf_counter() - start
        await to_server.aclose()
    return n / elapsed


async def actor_burst(n: int) -> float:
    async with hive_actors.open_actor_system() as system:
        sink = await system.spawn(Sink, mailbox_size=math.inf)
        start = time.perf_counter()
        for i in range(n):
            sink.tell_nowait(i)
        assert await sink.ask(None) == n
        return n / (time.perf_counter() - start)


async def raw_burst(n: int) -> float:
    send, receive = trio.open_memory_channel(math.inf)
    start = time.perf_counter()
    for i in range(n):
        send.send_nowait(i)
    count = 0
    await trio.lowlevel.checkpoint()
    while True:
        try:
            receive.receive_nowait()
        except trio.WouldBlock:
            break
        count += 1
    elapsed = time.perf_counter() - start
    assert count == n
    return n / elapsed


ROWS = [
    ("tell (await, mailbox 1024)", actor_tell, raw_channel, "raw channel send/receive", 0.75),
    ("ask round trip", actor_ask, raw_ping_pong, "raw two-channel ping-pong", 1.0),
    ("tell_nowait burst", actor_burst, raw_burst, "raw send_nowait + drain", 0.5),
]


def interleaved(ours, raw, n: int, repeats: int) -> tuple[float, float, float]:
    """Median rates of ``ours`` and ``raw`` and the median of their per-repeat ratios.

    The two alternate within each repeat, so drift in machine load hits both alike.
    """
    pairs = []
    for _ in range(repeats):
        ours_rate = trio.run(ours, n)
        raw_rate = trio.run(raw, n)
        pairs.append((ours_rate, raw_rate))
    return (
        statistics.median(o for o, _ in pairs),
        statistics.median(r for _, r in pairs),
        statistics.median(o / r for o, r in pairs),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"n={args.n:,} messages, median of {args.repeats} interleaved repeats (msgs/s; ratio = median of per-repeat ratios)\n")
    print(f"| {'ours':28} | {'msgs/s':>10} | {'baseline':26} | {'msgs/s':>10} | ratio | goal  |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 28}|{'-' * 12}|-------|-------|")
    for label, ours, raw, raw_label, goal in ROWS:
        ours_rate, raw_rate, ratio = interleaved(ours, raw, args.n, args.repeats)
        mark = "ok" if ratio >= goal else "MISS"
        print(
            f"| {label:28} | {ours_rate:>10,.0f} | {raw_label:26} | {raw_rate:>10,.0f} "
            f"| {ratio:5.2f} | ≥{goal:<4} {mark} |"
        )


if __name__ == "__main__":
    main()
