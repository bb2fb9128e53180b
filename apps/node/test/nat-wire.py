"""A shaped Ethernet link between two network namespaces, for kernels without tc netem.

Run inside the first namespace:

    python3 nat-wire.py NAME OTHER_NS OTHER_NAME DELAY_MS JITTER_MS LOSS_PERCENT RATE_MBIT

It creates two TAP devices, NAME here and OTHER_NAME moved into OTHER_NS, prints "ready", and
carries every frame from one to the other: each direction on its own, frames leave in the order
they came (jitter never reorders), at RATE_MBIT (0 = unlimited) after DELAY_MS +- JITTER_MS, and
LOSS_PERCENT of them are dropped. Both devices vanish when the process ends. Used by nat-bed.ts.
"""

import collections
import fcntl
import os
import random
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
# Frames queued per direction beyond this are dropped, as a router's buffer would.
QUEUE_LIMIT = 4096


def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    name, other_ns, other_name = sys.argv[1:4]
    delay, jitter, loss, rate = (float(x) for x in sys.argv[4:8])
    delay /= 1000.0
    jitter /= 1000.0
    loss /= 100.0
    bits_per_second = rate * 1e6
    here = tap(name)
    # A temporary name, so that it cannot clash with a device here before the move.
    moving = "w%d" % os.getpid()
    there = tap(moving)
    subprocess.run(["ip", "link", "set", moving, "netns", other_ns], check=True)
    subprocess.run(["ip", "-n", other_ns, "link", "set", moving, "name", other_name], check=True)
    print("ready", flush=True)

    # Per direction: the queue of (due, frame), when the link is free again, the last due time.
    out = {here: there, there: here}
    queue = {here: collections.deque(), there: collections.deque()}
    free_at = {here: 0.0, there: 0.0}
    last_due = {here: 0.0, there: 0.0}
    while True:
        now = time.monotonic()
        soonest = min((q[0][0] for q in queue.values() if q), default=None)
        timeout = None if soonest is None else max(0.0, soonest - now)
        readable, _, _ = select.select([here, there], [], [], timeout)
        now = time.monotonic()
        for src in readable:
            while True:
                try:
                    frame = os.read(src, 65536)
                except BlockingIOError:
                    break
                if loss > 0 and random.random() < loss:
                    continue
                if len(queue[src]) >= QUEUE_LIMIT:
                    continue
                start = now
                if bits_per_second > 0:
                    start = max(now, free_at[src]) + len(frame) * 8 / bits_per_second
                    free_at[src] = start
                due = start + delay + (random.uniform(-jitter, jitter) if jitter > 0 else 0.0)
                due = max(due, last_due[src])
                last_due[src] = due
                queue[src].append((due, frame))
        for src, q in queue.items():
            while q and q[0][0] <= now:
                _, frame = q.popleft()
                try:
                    os.write(out[src], frame)
                except (BlockingIOError, OSError):
                    pass


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
