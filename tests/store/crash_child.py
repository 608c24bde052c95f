"""Child process of the crash-consistency test: makes acknowledged transitions until
it is killed. Usage: python crash_child.py DB ACK_LOG

An acknowledgement line is written (unbuffered, O_APPEND) only after the store has
answered, so every line in the log is a transition the store promised was durable.
"""

import os
import sys

import trio

import hive_actors
from hive_actors.store import open_store


async def main(db: str, log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def ack(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    async with hive_actors.open_actor_system() as system:
        async with open_store(system, db, hive_heartbeat=None) as store:
            ack(f"ready {store.hive_id}")

            async def worker(i: int) -> None:
                n = 0
                while True:
                    n += 1
                    task = await store.submit("k", f"w{i}-{n}", depends_on=())
                    ack(f"submitted {task.id}")
                    for claimed in await store.claim("k", 1, f"w{i}", 600):
                        ack(f"claimed {claimed.id} {claimed.fencing_token}")
                        if n % 3 == 0:
                            continue  # left running: recovery's job
                        if n % 3 == 1:
                            await store.succeed(claimed.id, claimed.fencing_token, {"n": n})
                            ack(f"done {claimed.id}")
                        else:
                            await store.fail(claimed.id, claimed.fencing_token, "x", retry=False)
                            ack(f"failed {claimed.id}")

            async with trio.open_nursery() as nursery:
                for i in range(16):
                    nursery.start_soon(worker, i)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
