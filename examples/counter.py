"""The contract example: a counter actor, told and asked."""

import trio

import hive_actors


class Counter(hive_actors.Actor):
    def __init__(self, start=0):
        self.n = start

    async def handle(self, message):  # one message at a time, in order
        if message == "get":
            return self.n  # the return value is the reply to ask()
        self.n += message


async def main():
    async with hive_actors.open_actor_system() as system:
        counter = await system.spawn(Counter, 10, name="counter", mailbox_size=128)
        await counter.tell(5)  # waits if the mailbox is full
        assert await counter.ask("get", timeout=1.0) == 15
        assert system.lookup("counter") is counter
        print("counter =", await counter.ask("get"))


if __name__ == "__main__":
    trio.run(main)
