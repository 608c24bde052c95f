"""Your own actor, supervised in the same actor system as the hive.

    python examples/custom_actor.py

``Auditor`` is a plain ``hive_actors.Actor``: it subscribes to the hive's events on
the system bus and keeps a tally per kind. It lives under a supervisor of its own,
which restarts it when it crashes (here: once, on purpose). The hive runs in the
same system because ``open_hive`` is given ``system=``.
"""

import tempfile
from pathlib import Path

import trio

import hive_actors
from hive_actors.hive import HiveConfig, KindConfig, open_hive


class Auditor(hive_actors.Actor):
    """Counts finished tasks per kind; answers ``"report"`` with the tally."""

    def __init__(self):
        self.done: dict[str, int] = {}

    async def started(self):
        print(f"  [{self.ref.name}] started with a fresh tally")

    async def handle(self, message):
        if isinstance(message, hive_actors.Published):  # an event from the store
            event = message.payload
            kind = event.payload["kind"]
            self.done[kind] = self.done.get(kind, 0) + 1
        elif message == "report":
            return dict(self.done)
        elif message == "crash":
            raise RuntimeError("the auditor tripped on purpose")


async def tally_of(auditor, finished: int) -> dict:
    """The auditor's tally once it has seen ``finished`` tasks done. The bus delivers an
    event shortly after its commit, asynchronously, so ask until it has arrived."""
    with trio.fail_after(10):
        while True:
            tally = await auditor.ask("report", timeout=5)
            if sum(tally.values()) >= finished:
                return tally
            await trio.sleep(0.01)


async def echo(task):
    """A Python backend that returns the prompt."""
    return {"echo": task.prompt}


async def main():
    config = HiveConfig(kinds={"echo": KindConfig(backend=echo, concurrency=2),
                               "shout": KindConfig(backend=echo, concurrency=2)})
    with tempfile.TemporaryDirectory() as tmp:
        async with hive_actors.open_actor_system() as system:
            supervisor = await system.spawn_supervisor("mine", max_restarts=3, within=5.0)
            auditor = await supervisor.spawn(Auditor, name="auditor")
            await system.bus.subscribe("task.done", auditor)

            async with open_hive(Path(tmp) / "hive.db", config, system=system) as hive:
                for i in range(3):
                    await hive.submit(kind="echo", title=f"echo {i}", prompt=str(i))
                await hive.submit(kind="shout", title="shout", prompt="HI")
                await hive.wait_idle(timeout=30)
                print("tally:", await tally_of(auditor, 4))

                try:
                    await auditor.ask("crash", timeout=5)
                except RuntimeError as exc:
                    print(f"the asker sees the crash: {exc}")
                # an ask sent during the restart waits in the mailbox: same ref, fresh state
                print("tally right after the restart:", await auditor.ask("report", timeout=5))
                print(f"restarts so far: {system.stats().actors['auditor'].restarts}")

                await hive.submit(kind="echo", title="after the restart", prompt="again")
                await hive.wait_idle(timeout=30)
                print("tally after the restart:", await tally_of(auditor, 1))


if __name__ == "__main__":
    trio.run(main)
