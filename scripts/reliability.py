# SPDX-License-Identifier: GPL-2.0-or-later
"""`make reliability [ARGS=...]`: prove with numbers that nothing acknowledged is lost.

    part                         what it does (scripts/reliability/PART.py says how)
    1 kill loop, raw device      --kills power-fails of the Primary under FUA block writes
    1 kill loop, ext4            --kills power-fails under fsynced files and block overwrites,
                                 e2fsck -fn every time (device minor 5, FUSE+loop)
    2 partition                  --partitions split brains (after-sb policies), and the
                                 heartbeat links cut with and without STONITH
    3 disk failure               --disk-runs failing disks under the Primary (on-io-error detach)
    4 slow and lossy network     --netem-seconds under delay, jitter, loss and reordering
    5 bad input                  --fuzz-inputs mutated inputs for each decoder and parser
    6 soak (--soak only)         --soak-minutes of mixed load with a failover every 5-20 s

Each part prints one figure line; the run ends with a table (part, runs, result, lost,
crashes, time) and exits 1 if anything was lost, crashed or failed. `--json FILE` writes the
results for tests. Every part cleans up after itself, also on Ctrl-C and SIGTERM. The cluster
parts need root; without it they are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.reliability import PartResult  # noqa: E402

PARTS = ("kill-raw", "kill-ext4", "partition", "disk", "netem", "fuzz")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/reliability.py", description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="power-fails per kill loop (20)")
    ap.add_argument("--partitions", type=int, default=3, help="split brains (3)")
    ap.add_argument("--disk-runs", type=int, default=3, help="disk failures (3)")
    ap.add_argument("--netem-seconds", type=float, default=60, help="lossy network run (60)")
    ap.add_argument("--fuzz-inputs", type=int, default=1_000_000,
                    help="inputs per fuzz target (1000000)")
    ap.add_argument("--fuzz-dir", type=Path, default=None,
                    help="where fuzz crashes are saved (default: a new directory in /tmp)")
    ap.add_argument("--soak", action="store_true", help="also run the soak")
    ap.add_argument("--soak-minutes", type=float, default=60, help="soak length (60)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated subset of {','.join(PARTS)} (soak: --soak)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed if not given)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        ap.error(f"unknown part {bad[0]!r} (parts: {', '.join(PARTS)})")
    return args


def _on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_part(name: str, args: argparse.Namespace, seed: int) -> PartResult:
    from scripts.reliability import diskfail, fuzz, kill, netem, partition, soak
    if name == "fuzz":
        t0 = time.monotonic()
        out = args.fuzz_dir or Path(tempfile.mkdtemp(prefix="rb-fuzz-", dir="/tmp"))
        results = fuzz.run_fuzz(args.fuzz_inputs, out, seed=seed,
                                log=lambda s: print(f"  {s}", flush=True))
        res = PartResult("bad input (fuzz)", len(results), "")
        res.crashes = sum(r["crashes"] for r in results)
        total = sum(r["done"] for r in results)
        res.problems = [f"{r['target']}: {r['crashes']} crashes, saved: {r['saved'][:3]}"
                        for r in results if r["crashes"]]
        if len(results) != len(fuzz.TARGET_NAMES):
            res.problems.append(f"only {len(results)} of {len(fuzz.TARGET_NAMES)} targets ran")
        res.figure = (f"crashes: {res.crashes} in {total} inputs over {len(results)} decoders "
                      f"and parsers ({args.fuzz_inputs} each); crash inputs: {out}")
        res.seconds = time.monotonic() - t0
        return res
    if os.geteuid() != 0:
        return PartResult(name, 0, "skipped: needs root (network namespaces, mounts)")
    log = lambda s: print(s, flush=True)  # noqa: E731
    if name == "kill-raw":
        return kill.run_raw(args.kills, log, seed)
    if name == "kill-ext4":
        return kill.run_ext4(args.kills, log, seed)
    if name == "partition":
        return partition.run_partition(args.partitions, log, seed)
    if name == "disk":
        return diskfail.run_disk_failure(args.disk_runs, log, seed)
    if name == "netem":
        return netem.run_netem(args.netem_seconds, log, seed)
    if name == "soak":
        return soak.run_soak(args.soak_minutes, log, seed)
    raise ValueError(name)


def print_table(results: list[PartResult], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"make reliability: {seconds / 60:.1f} min")
    for col, kw in (("part", {}), ("runs", {"justify": "right"}), ("result", {}),
                    ("lost", {"justify": "right"}), ("crashes", {"justify": "right"}),
                    ("time", {"justify": "right"}), ("ok", {})):
        table.add_column(col, **kw)
    for r in results:
        table.add_row(r.part, str(r.runs), r.figure, str(r.lost), str(r.crashes),
                      f"{r.seconds:.0f} s", "yes" if r.ok else "NO")
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    print(f"reliability: seed {seed} (--seed {seed} repeats the random choices)", flush=True)
    signal.signal(signal.SIGTERM, _on_term)
    parts = list(args.parts) + (["soak"] if args.soak else [])
    results: list[PartResult] = []
    t0 = time.monotonic()
    try:
        for name in parts:
            print(f"== {name}", flush=True)
            t = time.monotonic()
            try:
                res = run_part(name, args, seed)
            except KeyboardInterrupt:
                raise
            except Exception as e:    # the part could not give a figure: its result is the error
                traceback.print_exc()
                res = PartResult(name, 0, f"FAILED: {type(e).__name__}: {str(e)[:300]}",
                                 problems=[f"{type(e).__name__}: {e}"],
                                 seconds=time.monotonic() - t)
            results.append(res)
            print(f"{res.part}: {res.figure}", flush=True)
            for p in res.problems[:10]:
                print(f"  problem: {p}", flush=True)
    except KeyboardInterrupt:
        print("reliability: interrupted; the running part cleaned up after itself", flush=True)
        return 130
    finally:
        elapsed = time.monotonic() - t0
        if results:
            print_table(results, elapsed)
        if args.json:
            args.json.write_text(json.dumps([{**r.__dict__, "ok": r.ok} for r in results],
                                            indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
