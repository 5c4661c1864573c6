# SPDX-License-Identifier: GPL-2.0-or-later
"""Part 6, soak: `--soak-minutes` of mixed load with periodic failovers, the kill loop's checks.

The ext4 pair of part 1 (device minor 5), with longer rounds: the mixed writer (fsynced files
of 1-48 KiB, renames over older files, fdatasync'd 4 KiB overwrites in a preallocated file)
runs 5-20 s, then the Primary power-fails, the Secondary promotes, replays the journal, checks
every file and block acknowledged since the start, e2fsck -fn, the dead node comes back and
resyncs, the roles swap; until the time is up. Every round is a failover under load.
"""
from __future__ import annotations

import time

from scripts.reliability import PartResult
from scripts.reliability.kill import run_ext4


def run_soak(minutes: float, log=print, seed: int | None = None) -> PartResult:
    deadline = time.monotonic() + minutes * 60
    res = run_ext4(0, log, seed, writer_s=(5.0, 20.0), part=f"soak ({minutes:g} min)",
                   deadline=deadline)
    res.figure = f"{res.runs} failovers under mixed load; " + res.figure
    return res
