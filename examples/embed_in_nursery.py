"""A hive embedded in your own trio program, next to your own tasks.

    python examples/embed_in_nursery.py

The script opens its own nursery, runs its own background task there (a ticker), opens
the hive with ``open_hive()`` inside it, submits work, and reacts to the hive's
events as they are committed. Everything is durable in a SQLite file in a temporary
directory.
"""

import contextlib
import tempfile
from pathlib import Path

import trio

from hive_actors.hive import HiveConfig, KindConfig, open_hive

DOCUMENTS = {
    "intro": "Actors talk by messages and never share state.",
    "queen": "The Queen hands ready tasks to free workers, by priority then age.",
    "store": "Every change is one transaction with its event row.",
}


async def count_words(task):
    """A Python backend: gets the Task, returns anything JSON-able."""
    await trio.sleep(0.01)  # stands in for real work
    return {"words": len(task.prompt.split())}


async def ticker(ticks: list[int]) -> None:
    """The program's own work, running beside the hive in the same nursery."""
    while True:
        await trio.sleep(0.01)
        ticks.append(len(ticks))


async def react(hive, expected: int) -> None:
    """Follow the hive's events and report each finished task."""
    finished = 0
    async with contextlib.aclosing(hive.events()) as events:
        async for event in events:
            if event.type == "task.done":
                task = await hive.get(event.task_id)
                print(f"  event #{event.seq}: task {task.id} ({task.title}) done -> {task.result}")
                finished += 1
                if finished == expected:
                    return


async def main() -> None:
    config = HiveConfig(kinds={"count": KindConfig(backend=count_words, concurrency=4)})
    ticks: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker, ticks)
            async with open_hive(Path(tmp) / "hive.db", config) as hive:
                async with trio.open_nursery() as inner:
                    inner.start_soon(react, hive, len(DOCUMENTS))
                    for title, text in DOCUMENTS.items():
                        task = await hive.submit(kind="count", title=title, prompt=text)
                        print(f"submitted task {task.id}: {title}")
                status = await hive.wait_idle(timeout=30)
                print(f"idle: {status['counts']['done']} done")
            nursery.cancel_scope.cancel()  # stop our own ticker too
    print(f"the program's own ticker kept running: {len(ticks) > 0}")


if __name__ == "__main__":
    trio.run(main)
