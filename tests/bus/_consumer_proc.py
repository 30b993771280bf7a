"""A consumer process for the crash test: commits ``hang_after`` entries one by one, then hangs
in the middle of its batch (holding the rest pending) until it is killed.

Usage: python _consumer_proc.py URL STREAM GROUP NAME OUT_STREAM HANG_AFTER
"""

from __future__ import annotations

import sys

import anyio

from bus import Append, Consumer, Handled, open_bus


async def main(url: str, stream: str, group: str, name: str, out: str, hang_after: int) -> None:
    bus = open_bus(url)
    consumer = Consumer(bus, stream, group, name, batch=20, block_ms=100, dead_stream=out + ":dead")
    done = 0
    async for batch in consumer.batches():
        for entry in batch:
            msg = entry.fields["msg"]
            effect = Append(out, {"msg": msg, "by": name.encode()})
            await bus.commit([Handled(entry, group, [effect], dedupe_key=msg.decode())])
            done += 1
            if done == hang_after:
                print("hanging", flush=True)
                await anyio.sleep_forever()


if __name__ == "__main__":
    url, stream, group, name, out, hang = sys.argv[1:7]
    anyio.run(main, url, stream, group, name, out, int(hang))
