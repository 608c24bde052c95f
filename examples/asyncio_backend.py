"""An asyncio-only client used as a hive backend through ``loop="asyncio"``.

    python examples/asyncio_backend.py

Many agent SDKs and LLM clients only run on asyncio. Declare the kind with
``loop="asyncio"`` and the hive runs its backend under trio-asyncio, on one asyncio
loop opened for the whole hive. ``FakeModelClient`` stands in for such an SDK: it
needs a running asyncio loop (``asyncio.get_running_loop()`` fails under plain trio)
and uses asyncio primitives inside.
"""

import asyncio
import tempfile
from pathlib import Path

import trio

from hive_actors.hive import HiveConfig, KindConfig, open_hive


class FakeModelClient:
    """An asyncio-only "model" client: answers with the prompt reversed."""

    def __init__(self):
        self.lock = None  # created lazily, on the asyncio loop
        self.calls = 0

    async def complete(self, prompt: str) -> str:
        loop = asyncio.get_running_loop()  # RuntimeError if not on asyncio
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            self.calls += 1
        answer = loop.create_future()
        loop.call_later(0.01, answer.set_result, prompt[::-1])
        return await answer


client = FakeModelClient()


async def ask_model(task):
    """An asyncio coroutine function: the backend of the ``model`` kind."""
    words = await asyncio.gather(*(client.complete(word) for word in task.prompt.split()))
    return {"answer": " ".join(words), "loop": type(asyncio.get_running_loop()).__name__}


async def main():
    config = HiveConfig(kinds={"model": KindConfig(backend=ask_model, loop="asyncio",
                                                   concurrency=2)})
    with tempfile.TemporaryDirectory() as tmp:
        async with open_hive(Path(tmp) / "hive.db", config) as hive:
            task = await hive.submit(kind="model", title="reverse", prompt="hello asyncio world")
            done = await hive.wait(task.id, timeout=30)
            print(f"task {done.id} {done.status}: {done.result['answer']}")
            print(f"asyncio client calls: {client.calls}")


if __name__ == "__main__":
    trio.run(main)
