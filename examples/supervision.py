"""A supervisor restarting a crashing child, printed so you can watch it happen.

    python examples/supervision.py
"""

import trio

import hive_actors


class Flaky(hive_actors.Actor):
    """Crashes on every third message; a restart gives it a fresh counter."""

    def __init__(self):
        self.handled = 0

    async def started(self):
        print(f"  [{self.ref.name}] started (fresh state)")

    async def stopped(self):
        print(f"  [{self.ref.name}] stopped")

    async def handle(self, message):
        self.handled += 1
        if self.handled == 3:
            raise RuntimeError(f"{self.ref.name} choked on message {message!r}")
        return f"{self.ref.name} handled {message!r} (#{self.handled} since start)"


async def main():
    async with hive_actors.open_actor_system() as system:
        sup = await system.spawn_supervisor("sup", strategy="one_for_one", max_restarts=5, within=10)
        worker = await sup.spawn(Flaky, name="worker")
        for i in range(7):
            try:
                print(await worker.ask(f"job-{i}"))
            except RuntimeError as exc:
                print(f"  crash seen by the asker: {exc}; the supervisor restarts the worker")
        print("restarts so far:", system.stats().actors["worker"].restarts)


if __name__ == "__main__":
    trio.run(main)
