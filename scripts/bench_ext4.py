# SPDX-License-Identifier: GPL-2.0-or-later
"""`make bench --only ext4`: ext4 on the resource's block device vs ext4 on a plain loop device.

The same fio jobs run on a filesystem made on three devices, in alternating rounds:

    reference   ext4 on /dev/loopN over a pre-written tmpfs file (the kernel alone)
    ours        ext4 on /dev/replica/RES of a standalone resource (unreplicated)
    ours C      ext4 on /dev/replica/RES of a protocol C pair, the peer in a second network
                namespace joined by a veth pair

The block device is whatever `device-kind auto` gives on this kernel (FUSE file + loop device
here, kernel NBD where nbd.ko exists). CPU per 4 KiB write is the whole machine's (every
process and the kernel, from /proc/stat) over the run, divided by the writes: it covers fio,
the FUSE or NBD path, and replicad on both nodes.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.lab import NetLab  # noqa: E402

BIN = Path(sys.executable).parent
DEV_SIZE = 512 << 20
SEQ_SIZE = "256m"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise RuntimeError(f"bench ext4: {' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def _busy_s() -> float:
    """Machine-wide busy CPU time (all CPUs, user+system+irq), seconds."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _fio(directory: Path, name: str, *opts: str) -> dict:
    cmd = ["fio", f"--name={name}", f"--directory={directory}", "--output-format=json",
           "--lat_percentiles=1", *opts]
    before = _busy_s()
    out = _run(*cmd).stdout
    busy = _busy_s() - before
    job = json.JSONDecoder().raw_decode(out[out.index("{"):])[0]["jobs"][0]["write"]
    pct = job["lat_ns"].get("percentile", {})
    return {"MiB/s": job["bw"] / 1024, "IOPS": job["iops"], "p50": pct.get("50.000000", 0) / 1000,
            "cpu_us": busy * 1e6 / max(job["total_ios"], 1)}


RUNTIME_S = int(os.environ.get("BENCH_RUNTIME", "4"))
JOBS = {
    "seq write 1 MiB, ending with fsync": ("MiB/s", ["--rw=write", "--bs=1m", f"--size={SEQ_SIZE}",
                                                     "--end_fsync=1", "--ioengine=psync"]),
    "rand write 4 KiB direct QD1 p50": ("p50", ["--rw=randwrite", "--bs=4k", "--size=128m", "--direct=1",
                                                "--ioengine=psync", "--time_based", f"--runtime={RUNTIME_S}",
                                                "--randrepeat=0"]),
    "rand write 4 KiB direct QD32": ("IOPS", ["--rw=randwrite", "--bs=4k", "--size=128m", "--direct=1",
                                              "--ioengine=libaio", "--iodepth=32", "--time_based",
                                              f"--runtime={RUNTIME_S}", "--randrepeat=0"]),
}
# (job, unreplicated target, protocol C target): ratios ours/reference, issue 11's
TARGETS = {"seq write 1 MiB, ending with fsync": (0.7, 0.5), "rand write 4 KiB direct QD1 p50": (0.5, 0.3)}


class Ext4On:
    """mkfs.ext4 on `device` and mount it under `mnt` (cleaned by close())."""

    def __init__(self, device: str, mnt: Path):
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", device)
        _run("mount", device, str(mnt))

    def close(self) -> None:
        _run("umount", str(self.mnt), check=False)


class LoopReference:
    def __init__(self, work: Path, prewrite):
        self.file = work / "ref-ext4.img"
        prewrite(self.file, DEV_SIZE)
        self.dev = _run("losetup", "--find", "--show", str(self.file)).stdout.strip()
        self.fs = Ext4On(self.dev, work / "mnt-ref")

    def stop(self) -> None:
        self.fs.close()
        _run("losetup", "-d", self.dev, check=False)


class StandaloneDevice:
    def __init__(self, work: Path, prewrite):
        self.dir = work / "ext4-standalone"
        self.dir.mkdir()
        disk = self.dir / "disk.img"
        prewrite(disk, DEV_SIZE)
        self.conf = self.dir / "replica.conf"
        self.conf.write_text(f"resource benchext4 {{\n  on benchnode {{\n    device minor 90;\n"
                             f"    disk {disk};\n    export unix:{self.dir}/sock;\n  }}\n}}\n")
        self.args = ["--config", str(self.conf), "--node", "benchnode", "--run-dir", str(self.dir / "run")]
        _run(str(BIN / "replicactl"), *self.args, "up", "benchext4")
        self.fs = Ext4On("/dev/replica/benchext4", work / "mnt-ours")

    def stop(self) -> None:
        self.fs.close()
        _run(str(BIN / "replicactl"), *self.args, "down", "--force", "benchext4", check=False)


class PairDevice:
    """Protocol C pair in two namespaces; node a Primary with the device mounted here."""

    def __init__(self, work: Path, prewrite):
        self.dir = work / "ext4-pair"
        self.dir.mkdir()
        self.lab = NetLab(f"rbx{os.getpid() % 10000}")
        self.fs: Ext4On | None = None
        try:
            self.ns = dict(zip("ab", self.lab.veth_pair("a", "b", "10.231.0.1/24", "10.231.0.2/24"),
                                    strict=True))
            disks = {n: self.dir / f"{n}.img" for n in "ab"}
            for d in disks.values():
                prewrite(d, DEV_SIZE)
            self.conf = self.dir / "replica.conf"
            self.conf.write_text(
                "resource benchc {\n  protocol C;\n  device minor 91;\n"
                + "".join(f"  on {n} {{ disk {disks[n]}; address 10.231.0.{i + 1}:7790; "
                          f"export unix:{self.dir}/{n}.sock; }}\n" for i, n in enumerate("ab")) + "}\n")
            for n in "ab":
                self.ctl(n, "create-md", "--force", "benchc")
            for n in "ab":
                self.ctl(n, "up", "benchc")
            self.wait(lambda st: st["connection"] == "Connected", "Connected")
            self.ctl("a", "new-current-uuid", "--clear-bitmap", "benchc")
            self.wait(lambda st: st["disk_state"] == "UpToDate" == st["peer_disk_state"], "UpToDate")
            self.ctl("a", "primary", "benchc")
            self.fs = Ext4On("/dev/replica/benchc", work / "mnt-pair")
        except BaseException:
            self.stop()
            raise

    def ctl(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = self.lab.run(self.ns[node], str(BIN / "replicactl"), "--config", str(self.conf), "--node", node,
                           "--run-dir", str(self.dir / f"run-{node}"), *args, timeout=120)
        if check and res.returncode != 0:
            raise RuntimeError(f"bench ext4: replicactl {' '.join(args)} on {node}: {res.stderr.strip()}")
        return res

    def wait(self, pred, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred(json.loads(self.ctl("a", "status", "--json", "benchc").stdout)[0]):
                return
            time.sleep(0.1)
        raise RuntimeError(f"bench ext4: pair not {what} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.fs is not None:
            self.fs.close()
        for n in "ab":
            if hasattr(self, "ns"):
                self.ctl(n, "down", "--force", "benchc", check=False)
        self.lab.close()


def ext4_table(work: Path, servers: list, prewrite, repeats: int):
    table = Table(title=f"ext4 on the block device vs ext4 on a loop device over tmpfs (same fio job), "
                        f"median of {repeats} alternating rounds; CPU = whole machine per write")
    for col in ("test", "ours", "ours C", "loop/tmpfs", "ours ratio", "C ratio", "targets", "ok"):
        table.add_column(col, justify="left" if col == "test" else "right")
    devices = {}
    failures = targets = 0
    try:
        devices["ref"] = LoopReference(work, prewrite)
        devices["ours"] = StandaloneDevice(work, prewrite)
        devices["C"] = PairDevice(work, prewrite)
        servers.extend(devices.values())
        results: dict[str, dict[str, list[dict]]] = {job: {k: [] for k in devices} for job in JOBS}
        for _ in range(repeats):
            for job, (_, opts) in JOBS.items():
                for key, dev in devices.items():
                    results[job][key].append(_fio(dev.fs.mnt, f"b{key}", *opts))
        for job, (unit, _) in JOBS.items():
            med = {k: {m: statistics.median(r[m] for r in runs) for m in runs[0]}
                   for k, runs in results[job].items()}
            if unit == "p50":       # latency: the ratio is reference / ours (higher is better)
                ratio = {k: med["ref"]["p50"] / med[k]["p50"] for k in ("ours", "C")}
                cells = [f"{med[k]['p50']:.0f} µs" for k in ("ours", "C", "ref")]
            else:
                ratio = {k: med[k][unit] / med["ref"][unit] for k in ("ours", "C")}
                cells = [f"{med[k][unit]:,.0f} {unit}" for k in ("ours", "C", "ref")]
            want = TARGETS.get(job)
            ok = ""
            if want:
                good = [ratio["ours"] >= want[0], ratio["C"] >= want[1]]
                targets += 2
                failures += good.count(False)
                ok = " ".join("yes" if g else "NO" for g in good)
            table.add_row(job, *cells, f"{ratio['ours']:.2f}×", f"{ratio['C']:.2f}×",
                          f"≥ {want[0]}× / ≥ {want[1]}×" if want else "(for comparison)", ok)
            if "4 KiB" in job:
                table.add_row("  CPU per write (machine)",
                              *(f"{med[k]['cpu_us']:.1f} µs" for k in ("ours", "C", "ref")),
                              f"{med['ours']['cpu_us'] / med['ref']['cpu_us']:.2f}×",
                              f"{med['C']['cpu_us'] / med['ref']['cpu_us']:.2f}×", "", "")
    finally:
        for dev in reversed(list(devices.values())):
            dev.stop()
            if dev in servers:
                servers.remove(dev)
    return table, failures, targets
