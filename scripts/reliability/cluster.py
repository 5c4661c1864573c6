# SPDX-License-Identifier: GPL-2.0-or-later
"""The pieces every cluster part of the reliability suite shares: a replica pair in two network
namespaces (tests/integration/netns.py's TwoNodes, named `rb...`), a power cut, and the verifying
block workload.

The block workload (BLOCK_WRITER, a process on the host, outside the cluster):

    every write is one 4 KiB block:  "RBLOCK01" | block number u64 | generation u64 | crc32 u32
                                     | payload (random) ; crc32 over everything but itself
    written with NBD FUA (durable on both disks under protocol C when the reply comes), then
    logged "BLOCK GEN" in the ack log, which is fsync'd before the next write

A block checks out if it holds its own number, a valid crc and a generation >= the last one
acknowledged for it (the one write in flight at the crash may have landed: it is newer).
Anything else is an acknowledged write lost.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from scripts.lab import kill_namespace_processes, namespace_pids
from scripts.waiting import wait_for
from tests.integration.netns import BIN, NODES, MiB, TwoNodes

REPO = Path(__file__).resolve().parents[2]
BLOCK = 4096
HEADER = struct.Struct(">8sQQI")
MAGIC = b"RBLOCK01"
_seq = 0

BLOCK_WRITER = r"""
import os, random, struct, sys, time, zlib
import nbd
uri, nblocks, log_path, seed, gen = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
first = int(sys.argv[6]) if len(sys.argv) > 6 else 0
pace = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
hdr = struct.Struct(">8sQQI")
print("connected", flush=True)
while True:
    b = first + rng.randrange(nblocks)
    gen += 1
    payload = rng.randbytes(4096 - hdr.size)
    head = hdr.pack(b"RBLOCK01", b, gen, 0)[:24]
    crc = zlib.crc32(head + payload)
    h.pwrite(head + struct.pack(">I", crc) + payload, b * 4096, nbd.CMD_FLAG_FUA)
    os.write(log, b"%d %d\n" % (b, gen))
    os.fsync(log)
    if pace:
        time.sleep(pace)
"""


def make_block(b: int, gen: int, payload: bytes) -> bytes:
    head = HEADER.pack(MAGIC, b, gen, 0)[:24]
    return head + struct.pack(">I", zlib.crc32(head + payload)) + payload


def block_gen(data: bytes, b: int) -> int | None:
    """The generation in block `b`'s bytes, or None if they are not a whole block of ours."""
    magic, num, gen, crc = HEADER.unpack_from(data)
    if magic != MAGIC or num != b or zlib.crc32(data[:24] + data[HEADER.size:BLOCK]) != crc:
        return None
    return gen


def read_acks(path: Path, into: dict[int, int]) -> int:
    """Fold the ack log into {block: newest acknowledged generation}; the number of acks."""
    n = 0
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            b, g = int(parts[0]), int(parts[1])
            if g > into.get(b, -1):
                into[b] = g
            n += 1
    return n


def lost_blocks(read, expected: dict[int, int], size: int) -> list[str]:
    """Check every expected block through `read(length, offset)`; what is lost, described."""
    lost = []
    chunk = MiB
    wanted = sorted(expected)
    i = 0
    for off in range(0, size, chunk):
        if i >= len(wanted):
            break
        if wanted[i] * BLOCK >= off + chunk:
            continue
        data = read(min(chunk, size - off), off)
        while i < len(wanted) and wanted[i] * BLOCK < off + chunk:
            b = wanted[i]
            got = block_gen(data[b * BLOCK - off:(b + 1) * BLOCK - off], b)
            if got is None or got < expected[b]:
                lost.append(f"block {b}: acknowledged generation {expected[b]}, found "
                            f"{'garbage' if got is None else got}")
            i += 1
    return lost


class Pair(TwoNodes):
    """TwoNodes with our `rb` names (so we run beside the demo and other labs), optionally a
    block device (`device minor 5; device-kind fuse;`), and crash helpers."""

    def __init__(self, *, minor: int | None = None, **kw):
        super().__init__(**kw)
        global _seq
        _seq += 1
        self.prefix = f"rb{os.getpid() % 100000}x{_seq}"
        self.dir = Path("/dev/shm") / self.prefix
        from scripts.lab import NetLab
        self.lab = NetLab(self.prefix)
        self.ns = {"alpha": self.lab.ns("a"), "beta": self.lab.ns("b")}
        self.veth = {"alpha": f"v{self.prefix[2:]}a"[-15:], "beta": f"v{self.prefix[2:]}b"[-15:]}
        self.subnet = (os.getpid() * 11 + _seq) % 200 + 20
        self.addr = {"alpha": f"10.98.{self.subnet}.1", "beta": f"10.98.{self.subnet}.2"}
        self.minor = minor
        if minor is not None:
            self.device = f"device minor {minor}; device-kind fuse;"

    def close(self) -> None:
        try:
            if self.dir.exists() and self.device:
                for node in NODES:
                    if self.daemon_pid(node) and Path(f"/proc/{self.daemon_pid(node)}").exists():
                        self.ctl(node, "down", "--force", "r0", check=False)
        finally:
            super().close()

    def host_ctl(self, node: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "replicactl"), "--config", str(self.config(node)),
                               "--node", node, "--run-dir", str(self.run_dir(node)), *args],
                              capture_output=True, text=True, timeout=60)

    def kernel_device(self, node: str) -> str:
        dev = self.status(node).get("device") or {}
        if not dev.get("kernel"):
            raise AssertionError(f"{node}: no block device in status: {dev}")
        return str(dev["kernel"])

    def blank_primary(self, node: str = "alpha") -> None:
        """Two blank disks need no initial sync (new-current-uuid --clear-bitmap)."""
        self.create_and_up()
        self.ctl(node, "new-current-uuid", "--clear-bitmap", "r0")
        self.wait_synced(30)
        self.ctl(node, "primary", "r0")

    def power_fail(self, node: str) -> None:
        """A power cut: freeze every process of the node's namespace, SIGKILL replicad, then
        the rest (nothing gets to flush, unmount or say goodbye)."""
        ns = self.ns[node]
        for pid in namespace_pids(ns):
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        daemon = self.daemon_pid(node)
        if daemon:
            try:
                os.kill(daemon, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: not Path(f"/proc/{daemon}").exists(), f"{node}: replicad gone", 10)
        kill_namespace_processes(ns, timeout_s=10)

    def come_back(self, node: str, timeout: float = 90.0) -> None:
        """The killed node: release what its replicad left, `up`, resync from the peer."""
        self.ctl(node, "down", "--force", "r0", check=False)
        self.ctl(node, "up", "r0")
        self.wait_synced(timeout)

    def nbd_read(self, node: str):
        """A read(length, offset) function over the node's NBD export (and the handle)."""
        import nbd
        h = nbd.NBD()
        h.connect_uri(self.uri(node))
        return h


def start_block_writer(uri: str, nblocks: int, log: Path, seed: int, gen: int,
                       first: int = 0, pace_s: float = 0.0) -> subprocess.Popen:
    """The verifying block workload on `uri` (see the module docstring); it prints
    `connected` once its NBD connection is up."""
    p = subprocess.Popen([sys.executable, "-c", BLOCK_WRITER, uri, str(nblocks), str(log),
                          str(seed), str(gen), str(first), str(pace_s)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "connected":
        p.kill()
        err = p.stderr.read() if p.stderr else ""
        raise RuntimeError(f"block writer on {uri}: did not connect: {err.strip()[-500:]}")
    return p


def stop_process(p: subprocess.Popen, timeout: float = 10.0) -> None:
    if p.poll() is None:
        p.kill()
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def wait_acks(log: Path, n: int, timeout: float = 30.0) -> None:
    def enough() -> bool:
        try:
            return log.stat().st_size > 0 and log.read_bytes().count(b"\n") >= n
        except FileNotFoundError:
            return False
    wait_for(enough, f"{n} acknowledged writes in {log}", timeout, interval_s=0.05)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
