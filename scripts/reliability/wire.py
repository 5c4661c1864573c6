# SPDX-License-Identifier: GPL-2.0-or-later
"""An impaired Ethernet wire between two network namespaces, in userspace: tc netem's delay,
jitter, loss and reordering, for a kernel without sch_netem (this machine's has neither netem
nor iptables; `tc qdisc add ... netem` answers "Specified qdisc kind is unknown").

    NS_A [tap IF_A ADDR_A] <-- this process: frame -> drop? -> deliver at now+delay+-jitter --> [tap IF_B ADDR_B] NS_B
                                             (reorder: that share of frames skips the delay)

The tap devices are made here, in the host namespace, then moved into the namespaces (the file
descriptor keeps working: a tun device belongs to its file, not to a namespace). Semantics as
netem's: loss is independent per frame, each direction has its own queue ordered by delivery
time, so jitter alone reorders frames, and `reorder` sends that share at once (netem's
`reorder P` with `delay`). Both directions are impaired alike (netem on both veth ends).

    python -m scripts.reliability.wire NS_A IF_A ADDR_A NS_B IF_B ADDR_B DELAY_MS JITTER_MS LOSS REORDER SEED
    prints "ready" once both ends are up; stats on SIGTERM ("frames N dropped D reordered R")
"""
from __future__ import annotations

import fcntl
import heapq
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def ip(*argv: str) -> None:
    r = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"wire: ip {' '.join(argv)}: {r.stderr.strip()}")


def main(argv: list[str]) -> int:
    ns_a, if_a, addr_a, ns_b, if_b, addr_b = argv[:6]
    delay_s, jitter_s = float(argv[6]) / 1000, float(argv[7]) / 1000
    loss, reorder, seed = float(argv[8]), float(argv[9]), int(argv[10])
    rng = random.Random(seed)
    fds = {}
    for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        fds[ifname] = open_tap(ifname)
        ip("link", "set", ifname, "netns", ns)
        ip("-n", ns, "addr", "add", addr, "brd", "+", "dev", ifname)
        ip("-n", ns, "link", "set", ifname, "up")
    fa, fb = fds[if_a], fds[if_b]
    peer = {fa: fb, fb: fa}
    stats = {"frames": 0, "dropped": 0, "reordered": 0}
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    sel = selectors.DefaultSelector()
    sel.register(fa, selectors.EVENT_READ)
    sel.register(fb, selectors.EVENT_READ)
    queue: list[tuple[float, int, int, bytes]] = []
    seq = 0
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            try:
                os.write(out, frame)
            except OSError:        # the device is down (a lab cutting it): the frame is lost
                pass
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        for key, _ in sel.select(timeout):
            for _ in range(64):
                try:
                    frame = os.read(key.fd, 65536)
                except (BlockingIOError, OSError):
                    break
                stats["frames"] += 1
                if rng.random() < loss:
                    stats["dropped"] += 1
                    continue
                if rng.random() < reorder:
                    at = time.monotonic()
                    stats["reordered"] += 1
                else:
                    at = time.monotonic() + max(0.0, delay_s + rng.uniform(-jitter_s, jitter_s))
                seq += 1
                heapq.heappush(queue, (at, seq, peer[key.fd], frame))
    print(f"frames {stats['frames']} dropped {stats['dropped']} reordered {stats['reordered']}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
