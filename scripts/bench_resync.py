# SPDX-License-Identifier: GPL-2.0-or-later
"""`make bench --only resync`: resync as in DRBD 8.4 (issue 12 item 3), over loopback TCP.

Rows: a full resync with no `disk {}` section (DRBD's defaults: the dynamic controller from
resync-rate 250K with c-fill-target 50 KiB and c-max-rate 100M) against the loopback TCP limit;
the same with `c-fill-target 0; c-max-rate 0;` (delay-target mode, no cap); and a 1 GiB
device with 10 % dirty resynced under a 4 KiB QD1 write load: the application's p50 against its
idle p50 (c-min-rate keeps it first) and the resync's rate once the load stops; a full resync
unthrottled (`c-plan-ahead 0; resync-rate 4G;`) against the TCP limit, and a `csums-alg` full
resync of two identical 1 GiB disks: bytes the SyncSource put on the wire against the size."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from rich.table import Table

MiB = 1 << 20


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.2f} {unit}"


def _full_resync_mibs(work: Path, servers: list, pair_cls, size: int, disk: str, tag: str) -> float:
    pair = pair_cls(work, "C", size, full_sync=True, tag=tag, disk=disk)
    servers.append(pair)
    try:
        pair.wait(lambda st: st["peer_disk_state"] == "UpToDate", "in sync", timeout_s=300, poll_s=0.5)
        last = pair.status()["last_resync"]
        return last["bytes"] / MiB / last["seconds"]
    finally:
        pair.stop()
        servers.remove(pair)


def _csums_identical(work: Path, servers: list, pair_cls, size: int, alg: str) -> dict:
    """Full sync of identical (zeroed) disks with csums-alg: wire bytes and time."""
    pair = pair_cls(work, "C", size, full_sync=True, tag=f"resync-csums-{alg}",
                    net=f"csums-alg {alg}; ")
    servers.append(pair)
    try:
        pair.wait(lambda st: st["peer_disk_state"] == "UpToDate", "in sync", timeout_s=300, poll_s=0.5)
        st = pair.status()
        return {**st["last_resync"], "wire": st["stats"]["peer_bytes_sent"]}
    finally:
        pair.stop()
        servers.remove(pair)


def _under_load(work: Path, servers: list, pair_cls, fio) -> dict:
    size = 1024 * MiB
    pair = pair_cls(work, "C", size, tag="resync-load", disk="")
    servers.append(pair)
    try:
        idle = fio(pair.uri, "randwrite", "4k", 1)
        pair.ctl("b", "disconnect", "bench")
        subprocess.run(["fio", "--name=dirty", "--rw=write", "--bs=1m", f"--size={size // 10}",
                        "--ioengine=nbd", f"--uri={pair.uri}", "--output-format=terse"],
                       check=True, capture_output=True)
        dirty = pair.status()["out_of_sync_bytes"]
        pair.ctl("b", "connect", "bench")
        pair.wait(lambda st: st["connection"] == "Connected", "connected")
        loaded = fio(pair.uri, "randwrite", "4k", 1, ramp_s=0)
        st = pair.status()
        left_at_stop = st.get("out_of_sync_bytes", 0)
        t0 = time.monotonic()
        t1 = pair.wait(lambda s: s["peer_disk_state"] == "UpToDate", "in sync", timeout_s=600, poll_s=0.2)
        after = left_at_stop / MiB / max(t1 - t0, 1e-3)
        return {"idle": idle["p50"], "loaded": loaded["p50"], "dirty": dirty, "left": left_at_stop,
                "after_mibs": after}
    finally:
        pair.stop()
        servers.remove(pair)


def resync_table(work: Path, servers: list, pair_cls, fio, tcp_mibs: float | None):
    table = Table(title="resync as in DRBD 8.4: Primary -> Secondary over loopback TCP")
    for col in ("test", "measured", "reference", "ratio", "target", "ok"):
        table.add_column(col, justify="left" if col == "test" else "right")
    fails = targets = 0
    tcp = tcp_mibs or 0.0

    def row(test: str, mibs: float, target: float | None):
        nonlocal fails, targets
        ratio = mibs / tcp if tcp else 0.0
        ok = None if target is None or not tcp else ratio >= target
        if ok is not None:
            targets += 1
            fails += not ok
        table.add_row(test, _fmt(mibs, "MiB/s"), f"TCP {_fmt(tcp, 'MiB/s')}" if tcp else "n/a",
                      f"{ratio:.3f}× TCP" if tcp else "", f"≥ {target:.2f}× TCP" if target else "",
                      "" if ok is None else ("yes" if ok else "NO"))

    row("full resync 128 MiB, no disk {} (DRBD defaults)",
        _full_resync_mibs(work, servers, pair_cls, 128 * MiB, "", "resync-default"), 0.5)
    row("full resync 1 GiB, c-fill-target 0; c-max-rate 0",
        _full_resync_mibs(work, servers, pair_cls, 1024 * MiB, "c-fill-target 0; c-max-rate 0;",
                          "resync-delay"), None)
    row("full resync 1 GiB, unthrottled (c-plan-ahead 0; resync-rate 4G)",
        _full_resync_mibs(work, servers, pair_cls, 1024 * MiB, "c-plan-ahead 0; resync-rate 4G;",
                          "resync-fixed"), 0.7)
    cs = _csums_identical(work, servers, pair_cls, 1024 * MiB, "crc32c")
    share = cs["wire"] / cs["bytes"] if cs["bytes"] else 1.0
    targets += 1
    fails += not share < 0.05
    table.add_row("csums-alg crc32c full resync of identical 1 GiB: bytes on the wire",
                  f"{cs['wire'] / MiB:,.2f} MiB in {cs['seconds']:.2f} s",
                  f"size {cs['bytes'] / MiB:,.0f} MiB", f"{100 * share:.2f} %", "< 5 %",
                  "yes" if share < 0.05 else "NO")
    load = _under_load(work, servers, pair_cls, fio)
    ratio = load["loaded"] / load["idle"] if load["idle"] else 0.0
    ok = ratio <= 1.5
    targets += 1
    fails += not ok
    table.add_row(f"4 KiB QD1 write p50 during a resync of {load['dirty'] // MiB} MiB dirty of 1 GiB",
                  _fmt(load["loaded"], "µs"), f"idle {_fmt(load['idle'], 'µs')}", f"{ratio:.2f}×",
                  "≤ 1.50×", "yes" if ok else "NO")
    row(f"resync after the load stops ({load['left'] // MiB} MiB left, DRBD defaults)",
        load["after_mibs"], 0.5)
    return table, fails, targets
