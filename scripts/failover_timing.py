#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Measure hbd failover time: last heartbeat of the dead node -> the VIP answers on the survivor.

Runs two hbd (ha1, ha2) in network namespaces with the seed's files (scripts/hbd_lab.py), a
client namespace on the same bridge runs a probe that (a) timestamps every heartbeat datagram
from ha1 (UDP 694) and (b) pings the VIP every 20 ms with raw ICMP.  ha1 "dies" by losing its
link (ip link set eth0 down), so only ha2 can answer.  All clocks are CLOCK_MONOTONIC (shared
by every namespace).  Printed per run:

    detect_s    last ha1 heartbeat seen on the wire -> ha2 journals "node ha1 dead"
    failover_s  last ha1 heartbeat seen on the wire -> first echo reply from the VIP via ha2
    target_s    deadtime + 0.5 s (issue 4)

Usage (root):  scripts/failover_timing.py [--runs N] [--quick]
  --quick only runs keepalive 200ms / deadtime 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from hbd.journal import read_journal  # noqa: E402
from scripts.hbd_lab import VIP, Lab  # noqa: E402
from scripts.waiting import wait_for  # noqa: E402

PROBE = r"""
import json, os, select, socket, struct, sys, time
vip, src = sys.argv[1], sys.argv[2]
hb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hb.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
hb.bind(("", 694))
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
last_hb, replies, seq, next_ping = None, [], 0, 0.0
stop = False
import signal
signal.signal(signal.SIGTERM, lambda *a: globals().__setitem__("stop", True))
print("ready", flush=True)
while not stop:
    now = time.monotonic()
    if now >= next_ping:
        seq = (seq + 1) & 0xFFFF
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"hbd-timing"
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr), ident, seq) + b"hbd-timing"
        try:
            icmp.sendto(pkt, (vip, 0))
        except OSError:
            pass
        next_ping = now + 0.02
    r, _, _ = select.select([hb, icmp], [], [], max(0.0, next_ping - time.monotonic()))
    t = time.monotonic()
    for s in r:
        data, addr = s.recvfrom(65536)
        if s is hb and addr[0] == src:
            last_hb = t
        elif s is icmp and len(data) >= 28 and data[20] == 0 and struct.unpack("!H", data[24:26])[0] == ident:
            if not replies or t - replies[-1][1] > 0.1:
                replies.append([t, t])
            else:
                replies[-1][1] = t
print(json.dumps({"last_hb": last_hb, "replies": replies}), flush=True)
"""


def one_run(workdir: str, keepalive: str, deadtime: float, initdead: float, run: int = 0) -> dict:
    lab = Lab(workdir, prefix=f"hbt{os.getpid() % 10000}r{run}")
    try:
        lab.setup()
        for n in ("ha1", "ha2"):
            lab.write_config(n, timing={"keepalive": keepalive, "deadtime": f"{deadtime:g}",
                                        "initdead": f"{initdead:g}", "auto_failback": "on"})
        lab.start_hbd("ha1")
        lab.start_hbd("ha2")
        wait_for(lambda: lab.holds_all("ha1"), "ha1 to take its group", initdead + 30, details=lab.logs_text)
        probe = subprocess.Popen(["ip", "netns", "exec", lab.ns["cli"], sys.executable, "-c", PROBE, VIP,
                                  "10.0.17.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = probe.stdout.readline().strip()
            if first != "ready":
                probe.wait(timeout=10)
                raise RuntimeError(f"probe did not start: {first!r} {probe.stderr.read()}")
            time.sleep(max(1.0, 2 * float(keepalive.rstrip("ms")) / (1000 if keepalive.endswith("ms") else 1)))
            t_fail = time.monotonic()
            lab.link("ha1", up=False)
            wait_for(lambda: lab.holds_all("ha2"), "ha2 to take over", deadtime + 30, details=lab.logs_text)
            time.sleep(1.0)
        finally:
            probe.send_signal(signal.SIGTERM)
            out, err = probe.communicate(timeout=10)
        data = json.loads(out.strip().splitlines()[-1])
        last_hb = data["last_hb"]
        after = [r for r in data["replies"] if r[0] > t_fail]
        dead = [r["mono"] for r in read_journal(os.path.join(lab.run_dir("ha2"), "journal.jsonl"))
                if r["event"] == "node" and r.get("peer") == "ha1" and r["state"] == "dead"]
        return {"detect_s": (dead[-1] - last_hb) if dead else None,
                "failover_s": (after[0][0] - last_hb) if after else None}
    finally:
        lab.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs of the fast configuration (default 3)")
    p.add_argument("--quick", action="store_true", help="skip the seed's keepalive 3 / deadtime 30")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("failover_timing: needs root (network namespaces)", file=sys.stderr)
        return 77
    configs = [("200ms", 1.0, 2.0, args.runs)]
    if not args.quick:
        configs.append(("3", 30.0, 30.0, 1))
    rows = []
    for keepalive, deadtime, initdead, runs in configs:
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix="hbd-timing-") as d:
                r = one_run(d, keepalive, deadtime, initdead, len(rows))
            rows.append((keepalive, deadtime, i + 1, r["detect_s"], r["failover_s"], deadtime + 0.5))
            print(f"keepalive {keepalive} deadtime {deadtime:g}s run {i + 1}: "
                  f"detect {r['detect_s']:.3f}s failover {r['failover_s']:.3f}s", file=sys.stderr, flush=True)
    print(f"{'keepalive':>9} {'deadtime_s':>10} {'run':>3} {'detect_s':>8} {'failover_s':>10} {'target_s':>8}  ok")
    for ka, dt, run, det, fo, tgt in rows:
        ok = fo is not None and fo <= tgt
        print(f"{ka:>9} {dt:>10g} {run:>3} {det if det is None else f'{det:.3f}':>8} "
              f"{fo if fo is None else f'{fo:.3f}':>10} {tgt:>8.1f}  {'yes' if ok else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
