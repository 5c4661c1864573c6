# SPDX-License-Identifier: GPL-2.0-or-later
"""Part 2, partition: the links between the two nodes cut both ways while both sides think
they should serve.

Membership (hbd, heartbeat links), scripts/hbd_lab.py's switched LAN:

    PFX-ha1 --p0--+                      the cut: bridge ports p0 and p1 `isolated on`: ha1 and
    PFX-ha2 --p1--+-- br0 (PFX-sw)       ha2 no longer hear each other, in either direction,
    PFX-cli --p2--+                      and both still reach the client (the worst case)

  with STONITH (ha.cf `stonith_host * external/rbfence OTHER LABDIR PFX`): each side declares
  the other dead after deadtime and fences it before taking anything over. The plugin is the
  lab's power switch: one command at a time (flock), a node already switched off cannot switch
  anything, `reset` cuts the victim's link and kills every process in its namespace. Checked:
  exactly one node is left, holding the VIP and the services; the client's VIP answers from
  its MAC; at no sample (every 0.2 s) did both nodes serve at once.
  without STONITH: both serve during the cut (heartbeat's classic split brain); reported, and
  what the membership does once the cut heals.

Data (replicad, protocol C), tests/integration/netns.py's veth pair, the veth set down: both
sides are Primary and write (the verifying block writer on each) during the cut; on reconnect
the split brain must be detected ("Split-Brain detected") and handled by the configured
after-sb policy, cycling through:

    after-sb-2pri disconnect                 both stay Primary: both StandAlone, each disk
                                             exactly as its side left it (nothing merged);
                                             then the manual recovery (--discard-my-data)
    after-sb-0pri discard-least-changes      both Secondary: the side with more changes wins
    after-sb-1pri discard-secondary          alpha stays Primary: beta's changes are discarded

Never merged silently: after each case each disk equals, byte for byte, one side's disk as it
was at the reconnect, and the winner's acknowledged writes are all there.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
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
from scripts.waiting import WaitTimeout, wait_for

NET = "protocol C; ping-int 1; ping-timeout 5; timeout 5; connect-int 1;"
POLICIES = (
    ("after-sb-0pri disconnect; after-sb-1pri disconnect; after-sb-2pri disconnect;",
     ("alpha", "beta")),
    ("after-sb-0pri discard-least-changes; after-sb-1pri disconnect; after-sb-2pri disconnect;",
     ()),
    ("after-sb-0pri discard-zero-changes; after-sb-1pri discard-secondary; "
     "after-sb-2pri disconnect;", ("alpha",)),
)

STONITH_PLUGIN = """#!/bin/sh
# the lab's power switch: one command at a time; a node that is off cannot switch anything
case "$1" in
  getconfignames) echo hostlist; echo labdir; echo prefix ;;
  gethosts) for h in $hostlist; do echo $h; done ;;
  reset|off)
    exec 9>>"$labdir/power.lock"
    flock 9
    me=$(ip netns identify $$)
    me=${me#$prefix-}
    [ -e "$labdir/off-$me" ] && exit 1
    touch "$labdir/off-$2"
    echo "$me $1 $2" >> "$labdir/stonith.log"
    ip -n "$prefix-$2" link set eth0 down
    for pid in $(ip netns pids "$prefix-$2"); do kill -9 $pid 2>/dev/null; done
    exit 0 ;;
  status|on) exit 0 ;;
  *) exit 1 ;;
esac
"""

TIMING = {"keepalive": "1", "deadtime": "4", "warntime": "2", "initdead": "8",
          "auto_failback": "on"}


def _isolate(lab, on: bool) -> None:
    for port in ("p0", "p1"):
        r = lab.net.run(lab.ns["sw"], "bridge", "link", "set", "dev", port, "isolated",
                        "on" if on else "off")
        if r.returncode:
            raise RuntimeError(f"bridge link set dev {port} isolated: {r.stderr.strip()}")


def _alive(lab, n: str) -> bool:
    p = lab.procs.get(n)
    return p is not None and p.poll() is None


def _serving(lab, n: str) -> bool:
    return _alive(lab, n) and lab.holds_all(n)


def hbd_partition(stonith: bool, log=print) -> tuple[str, list[str]]:
    """One cut of the heartbeat links; (figure, problems)."""
    from scripts.hbd_lab import Lab
    work = Path("/dev/shm") / f"rbh{os.getpid() % 100000}{'s' if stonith else 'n'}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lab = Lab(str(work), prefix=work.name)
    problems: list[str] = []
    try:
        lab.setup()
        for n, other in (("ha1", "ha2"), ("ha2", "ha1")):
            extra = ""
            if stonith:
                d = Path(lab.config_dir(n)) / "stonith.d" / "external"
                d.mkdir(parents=True, exist_ok=True)
                (d / "rbfence").write_text(STONITH_PLUGIN)
                (d / "rbfence").chmod(0o755)
                extra = f"stonith_host * external/rbfence {other} {work} {lab.prefix}"
            lab.write_config(n, timing=dict(TIMING), extra_hacf=extra)
        lab.start_hbd("ha1")
        lab.start_hbd("ha2")
        wait_for(lambda: lab.holds_all("ha1") and lab.holds_none("ha2"),
                 "ha1 to hold the VIP and services", 40, details=lab.logs_text)
        _isolate(lab, True)
        t0 = time.monotonic()
        both = samples = 0

        def settled() -> bool:
            nonlocal both, samples
            samples += 1
            s1, s2 = _serving(lab, "ha1"), _serving(lab, "ha2")
            both += s1 and s2
            if stonith:
                return (s1 and not _alive(lab, "ha2")) or (s2 and not _alive(lab, "ha1"))
            return s1 and s2
        try:
            wait_for(settled, "the partition to settle", 60, interval_s=0.2,
                     details=lab.logs_text)
        except WaitTimeout as e:
            problems.append(str(e)[:1500])
            return "did not settle", problems
        took = time.monotonic() - t0
        if not stonith:
            _isolate(lab, False)
            time.sleep(15)
            after = [n for n in ("ha1", "ha2") if _serving(lab, n)]
            figure = (f"without STONITH both served {took:.1f} s into the cut (split brain, "
                      f"as heartbeat); 15 s after the cut healed: {', '.join(after) or 'none'} "
                      f"serving")
            if len(after) != 1:
                problems.append(f"hbd without STONITH: after the partition healed, "
                                f"{len(after)} nodes serve: {after}")
            return figure, problems
        for _ in range(10):                 # keep sampling: nobody comes back to serve
            settled()
            time.sleep(0.2)
        survivor = "ha1" if _serving(lab, "ha1") else "ha2"
        fenced = "ha2" if survivor == "ha1" else "ha1"
        calls = (work / "stonith.log").read_text().splitlines() \
            if (work / "stonith.log").exists() else []
        if both:
            problems.append(f"hbd with STONITH: both nodes served at {both} of {samples} samples")
        if _alive(lab, fenced) or not (work / f"off-{fenced}").exists():
            problems.append(f"hbd with STONITH: {fenced} was not fenced")
        if survivor == "ha2" and not lab.ping_vip():
            problems.append("hbd with STONITH: the VIP does not answer the client")
        if survivor == "ha2" and lab.cli_neighbor_mac() != lab.mac("ha2"):
            problems.append("hbd with STONITH: the VIP answers from another MAC than ha2's")
        figure = (f"with STONITH one side serves: {survivor} ({took:.1f} s after the cut; "
                  f"fenced {fenced}: {'; '.join(calls)}; both serving at {both} of {samples} "
                  f"samples)")
        return figure, problems
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)


def replica_split_brain(p: Pair, policy: str, primaries: tuple[str, ...], rng: random.Random,
                        run: int) -> tuple[str, list[str], int]:
    """One split brain on the pair (Connected, UpToDate, alpha Primary); (outcome, problems,
    acknowledged writes of the winner checked)."""
    problems: list[str] = []
    p.net = f"{NET} {policy}"
    for node in ("alpha", "beta"):
        p.ctl(node, "secondary", "r0", check=False)
        p.ctl(node, "down", "r0")
        p.write_config(node)
    for node in ("alpha", "beta"):
        p.ctl(node, "up", "r0")
    p.wait_synced(30)
    marks = {n: len(p.log(n)) for n in ("alpha", "beta")}
    p.ctl("alpha", "primary", "r0")
    size = p.data_size()
    nblocks = size // BLOCK
    p.link(False)
    for node in ("alpha", "beta"):
        p.wait(node, lambda s: s["connection"] != "Connected", "the cut noticed", 30)
    p.ctl("beta", "primary", "r0")                 # both sides think they should serve
    acks: dict[str, dict[int, int]] = {"alpha": {}, "beta": {}}
    writers = {}
    try:
        for node in ("alpha", "beta"):
            log = p.dir / f"sb-{run}-{node}.log"
            writers[node] = (start_block_writer(p.uri(node), nblocks, log, rng.randrange(1 << 30),
                                                (run + 1) * 10_000_000, pace_s=0.0005), log)
        # unequal amounts, so discard-least-changes has a winner
        for _, log in writers.values():
            wait_acks(log, 50)
        time.sleep(rng.uniform(0.2, 0.6))
        stop_process(writers["alpha" if rng.random() < 0.5 else "beta"][0])
        time.sleep(0.3)
    finally:
        for w, _ in writers.values():
            stop_process(w)
    for node, (_, log) in writers.items():
        read_acks(log, acks[node])
    for node in ("alpha", "beta"):
        if node not in primaries:
            r = None
            for _ in range(50):          # an NBD client that just left may still be counted
                r = p.ctl(node, "secondary", "r0", check=False)
                if r.returncode == 0:
                    break
                time.sleep(0.1)
            if r is not None and r.returncode:
                problems.append(f"{node}: secondary: {r.stderr.strip()}")
    before = {n: p.read_disk(n, 0, size) for n in ("alpha", "beta")}
    p.link(True)

    def outcome():
        s = {n: p.status(n) for n in ("alpha", "beta")}
        if all(x["connection"] == "StandAlone" for x in s.values()):
            return "StandAlone"
        if all(x["cstate"] == "Connected" and x["disk_state"] == "UpToDate"
               and x["peer_disk_state"] == "UpToDate" for x in s.values()):
            return "resolved"
        return None
    result = wait_for(outcome, "the split brain handled on reconnect", 60, interval_s=0.2,
                      details=lambda: p.log("alpha")[-2000:] + p.log("beta")[-2000:])
    logs = {n: p.log(n)[marks[n]:] for n in ("alpha", "beta")}
    if not all("Split-Brain detected" in text for text in logs.values()):
        problems.append(f"run {run}: split brain not reported in both logs")
    after = {n: p.read_disk(n, 0, size) for n in ("alpha", "beta")}
    if result == "StandAlone":
        if after != before:
            problems.append(f"run {run}: StandAlone but a disk changed on reconnect")
        winner = "alpha"
        p.ctl("beta", "secondary", "r0", check=False)
        p.ctl("beta", "connect", "--discard-my-data", "r0")
        p.ctl("alpha", "connect", "r0")
        p.wait_synced(60)
        after = {n: p.read_disk(n, 0, size) for n in ("alpha", "beta")}
        outcome_text = "StandAlone, unmerged; resolved by hand (--discard-my-data)"
    else:
        winner = next((n for n in ("alpha", "beta") if after[n] == before[n]), "")
        outcome_text = f"resolved by policy, {winner or '?'} won"
        if "automatically solved" not in logs["alpha"] + logs["beta"]:
            problems.append(f"run {run}: resolved without 'automatically solved' in the logs")
    if not winner or not (after["alpha"] == after["beta"] == before[winner]):
        problems.append(f"run {run}: the disks are not exactly one side's data (merged?)")
    lost = lost_blocks(lambda n, o: after[winner or "alpha"][o:o + n], acks[winner or "alpha"],
                       size)
    problems += [f"run {run}: {winner}: {x}" for x in lost[:3]]
    for node in ("alpha", "beta"):
        if p.status(node)["role"] == "Primary":
            p.ctl(node, "secondary", "r0", check=False)
    return outcome_text, problems, len(acks[winner or "alpha"])


def run_partition(runs: int, log=print, seed: int | None = None) -> PartResult:
    rng = random.Random(seed)
    t0 = time.monotonic()
    res = PartResult("partition", 0, "")
    detected = by_policy = standalone = 0
    with Pair(size=16 * MiB, net=NET, disk="resync-rate 400M;") as p:
        p.blank_primary("alpha")
        p.ctl("alpha", "secondary", "r0")
        for run in range(runs):
            policy, primaries = POLICIES[run % len(POLICIES)]
            out, problems, n = replica_split_brain(p, policy, primaries, rng, run)
            res.problems += problems
            detected += not any("not reported" in x for x in problems)
            by_policy += out.startswith("resolved by policy")
            standalone += out.startswith("StandAlone")
            which = policy.split(";")[len(primaries)].strip()
            log(f"  split brain {run + 1}/{runs} ({which}): {out}; winner's {n} acknowledged "
                f"writes checked")
    res.runs = runs
    figures = []
    for stonith in (True, False):
        try:
            fig, problems = hbd_partition(stonith, log)
        except (RuntimeError, WaitTimeout, subprocess.SubprocessError, OSError) as e:
            fig, problems = "lab failed", [f"hbd partition (stonith={stonith}): {e}"]
        log(f"  heartbeat cut: {fig}")
        figures.append(fig)
        res.problems += problems
        res.runs += 1
    res.seconds = time.monotonic() - t0
    res.figure = (f"split brain detected on reconnect {detected} of {runs} (policy resolved "
                  f"{by_policy}, StandAlone unmerged {standalone}), silently merged: "
                  f"{sum('merged' in x for x in res.problems)}; hbd {figures[0].split(' (')[0]}")
    return res
