# SPDX-License-Identifier: GPL-2.0-or-later
"""Part 3, disk failure under the Primary: `on-io-error detach`, the Primary goes Diskless and
keeps serving through the peer; no acknowledged write is lost, no write fails.

    alpha (Primary) backing file on a small tmpfs of its own (tests/integration/failing_disk.py),
    metadata external; the block writer runs on alpha's export; at a random moment the tmpfs
    fills up: the next write to an unallocated block fails with ENOSPC, alpha detaches
    ("Local IO failed in write. Detaching..."), and the writer goes on through beta.
    Checks: the writer never saw an error and kept being acknowledged after the detach; every
    acknowledged block reads back through alpha's export and is on beta's disk; after the
    repair and `attach` alpha resyncs, every acknowledged block is on alpha's own disk, the two
    disks are identical.
"""
from __future__ import annotations

import random
import time

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
from tests.integration.failing_disk import FillableTmpfs

NET = "protocol C; ping-int 3; ping-timeout 5; timeout 15; connect-int 2;"


def run_disk_failure(runs: int, log=print, seed: int | None = None) -> PartResult:
    rng = random.Random(seed)
    t0 = time.monotonic()
    res = PartResult("disk failure under the Primary", runs, "")
    expected: dict[int, int] = {}
    acks_total = after_detach_total = 0
    checked = 0
    for run in range(runs):
        # a fresh pair each run: after a resync alpha's file is fully allocated on the tmpfs,
        # and a full tmpfs no longer fails overwrites
        expected = {}
        with FillableTmpfs(48 * MiB) as fs, \
                Pair(size=32 * MiB, net=NET, disk="on-io-error detach; resync-rate 400M;",
                     external_md=True, disk_dirs={"alpha": fs.path}) as p:
            p.blank_primary("alpha")
            size = p.data_size()
            nblocks = size // BLOCK
            ack_log = p.dir / f"disk-acks-{run}.log"
            w = start_block_writer(p.uri("alpha"), nblocks, ack_log, rng.randrange(1 << 30),
                                   1)
            try:
                wait_acks(ack_log, 20)
                time.sleep(rng.uniform(0.1, 1.0))
                fs.fill()
                p.wait("alpha", lambda s: s["disk_state"] == "Diskless", "alpha Diskless", 30)
                at_detach = ack_log.read_bytes().count(b"\n")
                time.sleep(1.0)                      # the writer goes on, through beta
                if w.poll() is not None:
                    res.problems.append(f"run {run}: the writer got an error: "
                                        f"{w.stderr.read().strip()[-300:] if w.stderr else ''}")
            finally:
                stop_process(w)
            n = read_acks(ack_log, expected)
            after = n - at_detach
            acks_total += n
            after_detach_total += after
            if after <= 0:
                res.problems.append(f"run {run}: no write acknowledged after the detach")
            if "Local IO failed in write. Detaching..." not in p.log("alpha"):
                res.problems.append(f"run {run}: no 'Local IO failed in write. Detaching...'")
            h = p.nbd_read("alpha")
            try:
                lost = lost_blocks(h.pread, expected, size)
            finally:
                h.shutdown()

            def beta_disk(length: int, offset: int) -> bytes:
                return p.read_disk("beta", offset, length)
            lost_b = lost_blocks(beta_disk, expected, size)
            fs.repair()
            p.ctl("alpha", "attach", "r0")
            p.wait("alpha", lambda s: s["disk_state"] == "UpToDate"
                   and s["replication"] == "Established", "alpha resynced", 120)

            def alpha_disk(length: int, offset: int) -> bytes:
                return p.read_disk("alpha", offset, length)
            lost_a = lost_blocks(alpha_disk, expected, size)
            res.lost += len(lost)
            res.problems += [f"run {run}: via alpha's export: {x}" for x in lost[:3]]
            res.problems += [f"run {run}: on beta's disk: {x}" for x in lost_b[:3]]
            res.problems += [f"run {run}: on alpha's disk after the resync: {x}"
                             for x in lost_a[:3]]
            checked += len(expected)
            log(f"  disk run {run + 1}/{runs}: alpha's disk failed after {at_detach} writes, "
                f"Diskless, {after} more acknowledged through beta; {len(expected)} blocks "
                f"checked: {len(lost)} lost via alpha, {len(lost_b)} on beta's disk, "
                f"{len(lost_a)} on alpha's after attach+resync")
            p.wait_synced(60)
            if not p.disks_equal(size):
                res.problems.append(f"run {run}: disks differ at the end, first at byte "
                                    f"{p.first_difference(size)}")
    res.seconds = time.monotonic() - t0
    res.figure = (f"acknowledged writes lost: {res.lost} of {acks_total} ({after_detach_total} "
                  f"of them after the detach, served through the peer; write errors seen by "
                  f"the client: {sum('writer got an error' in x for x in res.problems)})")
    return res
