# SPDX-License-Identifier: GPL-2.0-or-later
"""Part 4, slow and lossy network: delay, jitter, loss and reordering on the link that carries
both replication and heartbeat; no false failover at the configured deadtime, replication keeps
up, no data lost.

    PFX-a [tap 10.97.S.1] <== scripts/reliability/wire.py: delay 20 ms +-10, loss 2 %, ==> [tap 10.97.S.2] PFX-b
     replicad alpha (Primary)    reorder 25 %, both directions (netem's numbers)           replicad beta
     hbd alpha (holds the VIP)                                                             hbd beta
     (keepalive 1, deadtime 5: the seed's ratio, shortened)

The kernel here has no sch_netem, so the impairment is the userspace wire (netem's semantics;
see its docstring). For the whole run the block writer writes through alpha's export (protocol
C: every acknowledgement means beta has it on disk); the harness samples both nodes every
second. Checked: replication never left Connected (status samples and the logs), hbd declared
no node dead and never moved the VIP, the writes kept being acknowledged in every 5 s window,
and every acknowledged block is on beta's disk and reads back through alpha.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from scripts.reliability import PartResult
from scripts.reliability.cluster import (
    BLOCK,
    MiB,
    Pair,
    lost_blocks,
    read_acks,
    start_block_writer,
    stop_process,
    wait_acks,
)
from scripts.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
# DRBD's defaults for the timers (ping-int 10 s, ping-timeout 0.5 s, timeout 6 s, connect-int 10 s)
NET = "protocol C; ping-int 10; ping-timeout 5; timeout 60; connect-int 10;"
IMPAIRMENT = {"delay_ms": 20, "jitter_ms": 10, "loss": 0.02, "reorder": 0.25}
HA_CF = """\
keepalive 1
warntime 3
deadtime 5
initdead 10
udpport 694
bcast {ifname}
auto_failback on
node alpha
node beta
"""


class ImpairedPair(Pair):
    """A Pair whose link is the userspace impaired wire instead of a veth pair."""

    def __init__(self, impairment: dict, **kw):
        super().__init__(**kw)
        self.impairment = impairment
        self.addr = {"alpha": f"10.97.{self.subnet}.1", "beta": f"10.97.{self.subnet}.2"}
        self.wire: subprocess.Popen | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        ns_a, ns_b = self.lab.add_namespace("a"), self.lab.add_namespace("b")
        i = self.impairment
        self.wire = subprocess.Popen(
            [sys.executable, "-m", "scripts.reliability.wire", ns_a, self.veth["alpha"],
             f"{self.addr['alpha']}/24", ns_b, self.veth["beta"], f"{self.addr['beta']}/24",
             str(i["delay_ms"]), str(i["jitter_ms"]), str(i["loss"]), str(i["reorder"]),
             str(random.randrange(1 << 30))],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        self.lab.procs.append(self.wire)          # the lab kills it by PID in close()
        line = self.wire.stdout.readline() if self.wire.stdout else ""
        if line.strip() != "ready":
            raise RuntimeError(f"the impaired wire did not start: "
                               f"{self.wire.stderr.read() if self.wire.stderr else ''}")
        for node in ("alpha", "beta"):
            (self.dir / node).mkdir()
            with open(self.disk_path(node), "wb") as f:
                f.truncate(self.size)
            self.write_config(node)

    def wire_stats(self) -> str:
        if self.wire is None or self.wire.poll() is not None:
            return ""
        self.wire.terminate()
        try:
            out, _ = self.wire.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.wire.kill()
            return ""
        return out.strip()

    # --- hbd on the same link -----------------------------------------------------------------

    def start_hbd(self, node: str) -> subprocess.Popen:
        cfg = self.dir / node / "ha.d"
        (cfg / "resource.d").mkdir(parents=True, exist_ok=True)
        (cfg / "ha.cf").write_text(HA_CF.format(ifname=self.veth[node]))
        (cfg / "haresources").write_text(f"alpha {self.vip}\n")
        (cfg / "authkeys").write_text("auth 1\n1 sha1 reliability-suite\n")
        (cfg / "authkeys").chmod(0o600)
        run = self.dir / node / "hbd-run"
        run.mkdir(exist_ok=True)
        log = open(self.dir / node / "hbd.log", "a")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        p = self.lab.popen(self.ns[node], [sys.executable, "-m", "hbd", "-f", "--config-dir",
                                           str(cfg), "--node", node, "--run-dir", str(run)],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()
        return p

    @property
    def vip(self) -> str:
        return f"10.97.{self.subnet}.26"

    def has_vip(self, node: str) -> bool:
        out = self.lab.run(self.ns[node], "ip", "-4", "-o", "addr", "show").stdout
        return f" {self.vip}/" in out

    def hbd_journal(self, node: str) -> list[dict]:
        from hbd.journal import read_journal
        return read_journal(str(self.dir / node / "hbd-run" / "journal.jsonl"))


def run_netem(seconds: float, log=print, seed: int | None = None) -> PartResult:
    rng = random.Random(seed)
    t0 = time.monotonic()
    res = PartResult("slow and lossy network", 1, "")
    i = IMPAIRMENT
    with ImpairedPair(IMPAIRMENT, size=32 * MiB, net=NET, disk="resync-rate 400M;") as p:
        p.blank_primary("alpha")
        hbd = {n: p.start_hbd(n) for n in ("alpha", "beta")}
        wait_for(lambda: p.has_vip("alpha"), "alpha's hbd to take the VIP", 60,
                 details=lambda: (p.dir / "alpha" / "hbd.log").read_text()[-2000:])
        marks = {n: len(p.log(n)) for n in ("alpha", "beta")}
        size = p.data_size()
        ack_log = p.dir / "netem-acks.log"
        w = start_block_writer(p.uri("alpha"), size // BLOCK, ack_log, rng.randrange(1 << 30), 1)
        not_connected = samples = 0
        windows: list[int] = []
        try:
            wait_acks(ack_log, 1, 30)
            start = time.monotonic()
            last_count, next_window = 0, start + 5
            while time.monotonic() - start < seconds:
                time.sleep(1)
                samples += 1
                for node in ("alpha", "beta"):
                    s = p.status(node)
                    not_connected += s.get("connection") != "Connected"
                if time.monotonic() >= next_window:
                    count = ack_log.read_bytes().count(b"\n")
                    windows.append(count - last_count)
                    last_count, next_window = count, next_window + 5
                if w.poll() is not None:
                    res.problems.append(f"the writer stopped: "
                                        f"{w.stderr.read().strip()[-300:] if w.stderr else ''}")
                    break
        finally:
            stop_process(w)
        expected: dict[int, int] = {}
        acks = read_acks(ack_log, expected)
        elapsed = time.monotonic() - start
        lost = lost_blocks(lambda n, o: p.read_disk("beta", o, n), expected, size)
        h = p.nbd_read("alpha")
        try:
            lost_a = lost_blocks(h.pread, expected, size)
        finally:
            h.shutdown()
        res.lost = len(lost) + len(lost_a)
        res.problems += [f"on beta's disk: {x}" for x in lost[:3]]
        res.problems += [f"via alpha: {x}" for x in lost_a[:3]]
        for node in ("alpha", "beta"):
            text = p.log(node)[marks[node]:]
            if "Connected ->" in text or "connection Connected" in text:
                res.problems.append(f"{node}: the replication link dropped: "
                                    f"{[x for x in text.splitlines() if 'Connected' in x][:3]}")
        if not_connected:
            res.problems.append(f"replication not Connected at {not_connected} of "
                                f"{2 * samples} samples")
        dead = [(n, r) for n in ("alpha", "beta") for r in p.hbd_journal(n)
                if r.get("event") == "node" and r.get("state") in ("dead", "restarted")]
        if dead:
            res.problems.append(f"false failover: hbd declared {dead[:3]}")
        if not p.has_vip("alpha") or p.has_vip("beta"):
            res.problems.append("the VIP moved (or is on both nodes)")
        for n, proc in hbd.items():
            if proc.poll() is not None:
                res.crashes += 1
                res.problems.append(f"{n}: hbd exited {proc.returncode}")
        stalled = sum(1 for x in windows if x == 0)
        if stalled:
            res.problems.append(f"replication stalled: no write acknowledged in {stalled} of "
                                f"{len(windows)} 5 s windows")
        stats = p.wire_stats()
        log(f"  netem: {elapsed:.0f} s, {acks} writes acknowledged ({acks / elapsed:.0f}/s, "
            f"slowest 5 s window {min(windows, default=0)}), replication not Connected at "
            f"{not_connected} of {2 * samples} samples, hbd dead declarations {len(dead)}; "
            f"wire: {stats}")
    res.seconds = time.monotonic() - t0
    res.figure = (f"delay {i['delay_ms']}+-{i['jitter_ms']} ms, loss {i['loss']:.0%}, reorder "
                  f"{i['reorder']:.0%}: false failovers {len(dead)} (deadtime 5 s), link drops "
                  f"{sum('dropped' in x for x in res.problems)}, {acks} writes at "
                  f"{acks / max(elapsed, 1):.0f}/s, lost {res.lost}")
    return res
