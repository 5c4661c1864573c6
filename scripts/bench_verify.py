# SPDX-License-Identifier: GPL-2.0-or-later
"""`make bench --only verify`: online verify and data-integrity-alg between two replicad on loopback.

    verify 1 GiB          `replicactl verify` of a 1 GiB pair (verify-alg crc32c, resync-rate 4G:
                          unthrottled), timed by the daemon (first request to last reply), vs the
                          loopback TCP limit (iperf3, same run). Target >= 0.5x.
    integrity cost        protocol C 1 MiB QD16 writes, the same pair shape with and without
                          data-integrity-alg crc32c, alternating rounds (medians). Target <= 15 %.
                          Beside it the CPU both replicad spend per write, which a host shared
                          with other work disturbs less than throughput.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

VERIFY_SIZE = 1 << 30
FILE_SIZE = 512 << 20


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


def verify_table(work: Path, servers: list, pair_cls, paired, tcp_mibs: float | None):
    table = Table(title="online verify and data-integrity-alg, Primary -> Secondary over loopback TCP")
    for col in ("test", "measured", "reference", "ratio", "target", "ok"):
        table.add_column(col, justify="left" if col == "test" else "right")
    failures = targets = 0

    pair = pair_cls(work, "C", VERIFY_SIZE, tag="verify", net="verify-alg crc32c; ")
    servers.append(pair)
    try:
        pair.ctl("a", "verify", "bench")
        pair.wait(lambda st: st.get("last_verify") is not None and st["replication"] == "Established",
                  "verified", timeout_s=300, poll_s=1.0)   # the daemon times it; polls cost CPU
        lv = pair.status()["last_verify"]
        mibs = lv["bytes"] / (1 << 20) / lv["seconds"]
        ratio = mibs / tcp_mibs if tcp_mibs else 0.0
        ok = ratio >= 0.5 and lv["oos_blocks"] == 0
        targets += 1
        failures += not ok
        table.add_row(f"verify {VERIFY_SIZE >> 30} GiB (crc32c), {lv['oos_blocks']} blocks differ",
                      _fmt(mibs, "MiB/s"), f"TCP {_fmt(tcp_mibs, 'MiB/s')}" if tcp_mibs else "n/a",
                      f"{ratio:.2f}× TCP", "≥ 0.50×", "yes" if ok else "NO")
    finally:
        pair.stop()
        servers.remove(pair)

    plain = pair_cls(work, "C", FILE_SIZE, tag="plain")
    servers.append(plain)
    crc = pair_cls(work, "C", FILE_SIZE, tag="integrity", net="data-integrity-alg crc32c; ")
    servers.append(crc)
    try:
        time.sleep(0.5)
        ours, ref = paired(crc.uri, plain.uri, "write", "1m", 16, pids_a=list(crc.pids.values()),
                           pids_b=list(plain.pids.values()))
        cost = 1 - ours["MiB/s"] / ref["MiB/s"]
        ok = cost <= 0.15
        targets += 1
        failures += not ok
        failed = crc.status()["stats"]["integrity_failures"]
        table.add_row(f"seq write 1 MiB QD16 (C), data-integrity-alg crc32c ({failed} failures)",
                      _fmt(ours["MiB/s"], "MiB/s"), f"without: {_fmt(ref['MiB/s'], 'MiB/s')}",
                      f"{cost:+.1%} cost", "≤ 15 %", "yes" if ok else "NO")
        table.add_row("  CPU per 1 MiB write, both replicad (less sensitive to a busy host)",
                      _fmt(ours["cpu_us"], "µs"), f"without: {_fmt(ref['cpu_us'], 'µs')}",
                      f"{ours['cpu_us'] / ref['cpu_us'] - 1:+.1%}", "", "")
    finally:
        for p in (crc, plain):
            p.stop()
            servers.remove(p)
    return table, failures, targets
