# SPDX-License-Identifier: GPL-2.0-or-later
"""Part 1, the kill loop: power-fail the Primary at random moments under a verifying workload,
on the raw device and on ext4; nothing acknowledged may be lost.

    raw:  Primary P <-- NBD (FUA) -- block writer (host; ack log fsync'd on the host)
          round: writer runs, P power-fails at a random moment (0.2-1.5 s into the acks),
                 S promotes, every acknowledged block is read back through S's export,
                 P comes back (down --force, up), resyncs; the roles swap
    ext4: device minor 5 (FUSE+loop), ext4 made once; the writer (in P's namespace) writes
          fsynced files (tmp, fsync, rename, fsync dir) and overwrites checksummed blocks in a
          preallocated file with fdatasync; every completed one goes to the host's ack log
          (fsync'd). After each kill S promotes, mounts (the journal replays), checks every
          file and block, unmounts, and e2fsck -fn must be clean.

Protocol C throughout. Files and blocks of earlier rounds are checked again in every later
round (after resyncs both ways), and the two disks must be identical at the end.
"""
from __future__ import annotations

import json
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

NET = "protocol C; ping-int 3; ping-timeout 5; timeout 15; connect-int 2;"
MKFS = ("mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0")


def run_raw(kills: int, log=print, seed: int | None = None) -> PartResult:
    rng = random.Random(seed)
    t0 = time.monotonic()
    res = PartResult("kill loop, raw device", kills, "")
    expected: dict[int, int] = {}
    acks_total = 0
    with Pair(size=32 * MiB, net=NET, disk="resync-rate 400M;") as p:
        p.blank_primary("alpha")
        size = p.data_size()
        nblocks = size // BLOCK
        primary, secondary = "alpha", "beta"
        for rnd in range(kills):
            ack_log = p.dir / f"acks-{rnd}.log"
            w = start_block_writer(p.uri(primary), nblocks, ack_log, rng.randrange(1 << 30),
                                   (rnd + 1) * 10_000_000)
            try:
                wait_acks(ack_log, 5)
                time.sleep(rng.uniform(0.2, 1.5))
                p.power_fail(primary)
                w.wait(timeout=30)
            finally:
                stop_process(w)
            n = read_acks(ack_log, expected)
            acks_total += n
            p.wait(secondary, lambda s: s["connection"] != "Connected", "the peer gone", 30)
            p.ctl(secondary, "primary", "r0")
            h = p.nbd_read(secondary)
            try:
                lost = lost_blocks(h.pread, expected, size)
            finally:
                h.shutdown()
            res.lost += len(lost)
            res.problems += [f"round {rnd}: {x}" for x in lost[:5]]
            log(f"  raw round {rnd + 1}/{kills}: {primary} power-failed after {n} acknowledged "
                f"writes; {secondary} promoted; {len(expected)} blocks checked, {len(lost)} lost")
            p.come_back(primary)
            primary, secondary = secondary, primary
        p.ctl(primary, "secondary", "r0")
        if not p.disks_equal(size):
            res.problems.append(f"disks differ at the end, first at byte "
                                f"{p.first_difference(size)}")
    res.seconds = time.monotonic() - t0
    res.figure = (f"acknowledged writes lost: {res.lost} of {acks_total} "
                  f"({len(expected)} blocks, {kills} power-fails, roles alternating)")
    return res


# The ext4 writer, in the Primary's namespace: mount, then fsynced files and fdatasync'd block
# overwrites in DATA (preallocated); each completed one is appended to the ack log and fsync'd:
#   F NAME SHA256       the file NAME holds this content (written, fsynced, renamed, dir fsynced)
#   B BLOCK GEN         DATA's block BLOCK holds generation GEN (pwrite, fdatasync)
#   f NAME SHA256       about to replace NAME with this content (may or may not have landed)
#   d NAME -            about to delete NAME (keeps a third of the filesystem free)
#   D NAME -            NAME is deleted (unlink, dir fsynced)
EXT4_WRITER = r"""
import hashlib, os, random, struct, sys, zlib
mnt, sub, seed, log_path, gen = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
rnd = random.Random(seed)
log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def ack(line):
    os.write(log, line.encode() + b"\n")
    os.fsync(log)
def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
d = os.path.join(mnt, sub)
os.makedirs(d, exist_ok=True)
fsync_dir(d)
fsync_dir(mnt)
data_path = os.path.join(mnt, "DATA")
nblocks = int(sys.argv[6])
dfd = os.open(data_path, os.O_RDWR)
hdr = struct.Struct(">8sQQI")
names, i = [], 0
print("connected", flush=True)
while True:
    if rnd.random() < 0.5:
        b = rnd.randrange(nblocks)
        gen += 1
        payload = rnd.randbytes(4096 - hdr.size)
        head = hdr.pack(b"RBLOCK01", b, gen, 0)[:24]
        os.pwrite(dfd, head + struct.pack(">I", zlib.crc32(head + payload)) + payload, b * 4096)
        os.fdatasync(dfd)
        ack(f"B {b} {gen}")
        continue
    st = os.statvfs(mnt)
    if st.f_bavail < st.f_blocks * 0.35:          # keep a third free: delete an older file
        olds = [os.path.join(r, n) for r in sorted(os.listdir(mnt)) if r.startswith("round")
                for n in sorted(os.listdir(os.path.join(mnt, r))) if not n.startswith(".")]
        if olds:
            rel = rnd.choice(olds)
            ack(f"d {rel} -")
            os.unlink(os.path.join(mnt, rel))
            fsync_dir(os.path.dirname(os.path.join(mnt, rel)))
            ack(f"D {rel} -")
            if os.path.dirname(rel) == sub and os.path.basename(rel) in names:
                names.remove(os.path.basename(rel))
            continue
    if names and rnd.random() < 0.2:
        name = rnd.choice(names)
    else:
        name, i = f"f{i:05d}", i + 1
    data = rnd.randbytes(rnd.randint(1, 48) * 1024 - rnd.randint(0, 1023))
    digest = hashlib.sha256(data).hexdigest()
    ack(f"f {sub}/{name} {digest}")
    tmp = os.path.join(d, ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, os.path.join(d, name))
    fsync_dir(d)
    ack(f"F {sub}/{name} {digest}")
    if name not in names:
        names.append(name)
"""

# The checker, on the survivor with the filesystem mounted: stdin {"files": {REL: [SHA...]},
# "blocks": {B: GEN}}; prints {"found": {REL: SHA}, "bad": [...]}.
EXT4_CHECKER = r"""
import hashlib, json, os, struct, sys, zlib
mnt = sys.argv[1]
want = json.load(sys.stdin)
found, bad = {}, []
for rel, shas in want["files"].items():
    try:
        with open(os.path.join(mnt, rel), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError as e:
        if "-" not in shas:
            bad.append(f"{rel}: {e}")
        continue
    except OSError as e:
        bad.append(f"{rel}: {e}")
        continue
    found[rel] = got
    if got not in shas:
        bad.append(f"{rel}: sha256 {got[:16]}, fsynced {shas[0][:16]}")
hdr = struct.Struct(">8sQQI")
with open(os.path.join(mnt, "DATA"), "rb") as f:
    for b, gen in want["blocks"].items():
        b = int(b)
        f.seek(b * 4096)
        data = f.read(4096)
        magic, num, g, crc = hdr.unpack_from(data)
        if magic != b"RBLOCK01" or num != b or zlib.crc32(data[:24] + data[hdr.size:]) != crc or g < gen:
            bad.append(f"DATA block {b}: acknowledged generation {gen}, found "
                       f"{g if magic == b'RBLOCK01' and num == b else 'garbage'}")
print(json.dumps({"found": found, "bad": bad}))
"""

DATA_BLOCKS = 1024       # 4 MiB DATA file


class Ext4Pair(Pair):
    def mnt(self, node: str) -> Path:
        path = self.dir / node / "mnt"
        path.mkdir(exist_ok=True)
        return path

    def make_fs(self, node: str) -> None:
        dev = self.kernel_device(node)
        r = self.lab.run(self.ns[node], *MKFS, dev, timeout=120)
        if r.returncode:
            raise RuntimeError(f"mkfs.ext4 {dev}: {r.stderr.strip()}")
        script = ('mount -t ext4 "$1" "$2" && fallocate -l $3 "$2/DATA" && '
                  'dd if=/dev/zero of="$2/DATA" bs=1M count=$4 conv=fsync status=none && '
                  'umount "$2"')
        r = self.lab.run(self.ns[node], "sh", "-c", script, "sh", dev, str(self.mnt(node)),
                         str(DATA_BLOCKS * BLOCK), str(DATA_BLOCKS * BLOCK // MiB), timeout=120)
        if r.returncode:
            raise RuntimeError(f"preparing DATA on {dev}: {r.stderr.strip()}")

    def start_writer(self, node: str, sub: str, seed: int, log: Path, gen: int):
        dev, mnt = self.kernel_device(node), self.mnt(node)
        script = 'mount -t ext4 "$1" "$2" && exec "$3" -c "$4" "$2" "$5" "$6" "$7" "$8" "$9"'
        p = self.lab.popen(self.ns[node], ["sh", "-c", script, "sh", dev, str(mnt),
                                           sys.executable, EXT4_WRITER, sub, str(seed), str(log),
                                           str(gen), str(DATA_BLOCKS)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "connected":
            err = p.stderr.read() if p.stderr else ""
            raise RuntimeError(f"{node}: the ext4 writer did not start: {err.strip()[-500:]}")
        return p

    def check(self, node: str, files: dict[str, list[str]], blocks: dict[int, int]) -> dict:
        dev, mnt = self.kernel_device(node), self.mnt(node)
        script = ('mount -t ext4 "$1" "$2" || exit 90; "$3" -c "$4" "$2"; rc=$?; '
                  'umount "$2" || exit 91; exit $rc')
        r = subprocess.run(["ip", "netns", "exec", self.ns[node], "sh", "-c", script, "sh", dev,
                            str(mnt), sys.executable, EXT4_CHECKER],
                           input=json.dumps({"files": files, "blocks": blocks}),
                           capture_output=True, text=True, timeout=300)
        if r.returncode:
            raise RuntimeError(f"{node}: mount/check/umount of {dev}: exit {r.returncode}: "
                               f"{r.stderr.strip()[-1000:]}")
        out: dict = json.loads(r.stdout)
        return out

    def fsck(self, node: str) -> tuple[bool, str]:
        dev = self.kernel_device(node)
        r = self.lab.run(self.ns[node], "e2fsck", "-fn", dev, timeout=300)
        return r.returncode == 0, (r.stdout + r.stderr).strip()


def fold_ext4_acks(log: Path, files: dict[str, list[str]], blocks: dict[int, int]) -> int:
    """Fold one round's ack log into the expectations; the number of completed writes.
    files: REL -> acceptable contents, the fsynced one first, then any begun after it."""
    n = 0
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        kind, a, b = parts
        if kind == "B":
            blocks[int(a)] = max(blocks.get(int(a), -1), int(b))
            n += 1
        elif kind == "F":
            files[a] = [b]
            n += 1
        elif kind in ("f", "d") and a in files:
            files[a].append(b)              # the new content, or "-": may be gone
        elif kind == "D":
            files.pop(a, None)
            n += 1
    return n


def run_ext4(kills: int, log=print, seed: int | None = None, minor: int = 5,
             writer_s: tuple[float, float] = (0.5, 2.5), part: str = "kill loop, ext4",
             deadline: float | None = None) -> PartResult:
    """`kills` power-fails (or until `deadline`, a time.monotonic() value, for the soak)."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    res = PartResult(part, 0, "")
    files: dict[str, list[str]] = {}
    blocks: dict[int, int] = {}
    acks_total = fsck_clean = replayed = 0
    with Ext4Pair(size=64 * MiB, net=NET, disk="resync-rate 400M;", minor=minor) as p:
        p.blank_primary("alpha")
        p.make_fs("alpha")
        primary, secondary = "alpha", "beta"
        rnd = 0
        while (rnd < kills) if deadline is None else (time.monotonic() < deadline):
            ack_log = p.dir / f"ext4-acks-{rnd}.log"
            w = p.start_writer(primary, f"round{rnd}", rng.randrange(1 << 30), ack_log,
                               (rnd + 1) * 10_000_000)
            try:
                wait_acks(ack_log, 3)
                time.sleep(rng.uniform(*writer_s))
                if w.poll() is not None:
                    res.problems.append(f"round {rnd}: the writer ended before the power-fail: "
                                        f"{w.stderr.read().strip()[-500:] if w.stderr else ''}")
                p.power_fail(primary)
                w.wait(timeout=30)
            finally:
                stop_process(w)
            n = fold_ext4_acks(ack_log, files, blocks)
            acks_total += n
            p.wait(secondary, lambda s: s["connection"] != "Connected", "the peer gone", 30)
            p.ctl(secondary, "primary", "r0")
            head = p.lab.run(p.ns[secondary], "dumpe2fs", "-h", p.kernel_device(secondary))
            features = next((ln for ln in head.stdout.splitlines()
                             if ln.startswith("Filesystem features")), head.stderr.strip())
            replayed += "needs_recovery" in features
            if "needs_recovery" not in features:
                log(f"  ext4 round {rnd + 1}: no journal to replay: {features}")
            out = p.check(secondary, files, blocks)
            res.lost += len(out["bad"])
            res.problems += [f"round {rnd}: {x}" for x in out["bad"][:5]]
            files = {rel: [sha] for rel, sha in out["found"].items()}
            for x in out["bad"][:3]:
                log(f"  ext4 round {rnd + 1}: LOST: {x}")
            clean, text = p.fsck(secondary)
            fsck_clean += clean
            if not clean:
                res.problems.append(f"round {rnd}: e2fsck -fn not clean: {text[-800:]}")
            log(f"  ext4 round {rnd + 1}: {primary} power-failed after {n} fsynced writes; "
                f"{secondary} promoted; {len(files)} files + {len(blocks)} blocks checked, "
                f"{len(out['bad'])} lost; e2fsck -fn {'clean' if clean else 'NOT CLEAN'}")
            p.come_back(primary)
            primary, secondary = secondary, primary
            rnd += 1
        res.runs = rnd
        p.ctl(primary, "secondary", "r0")
        size = p.data_size()
        for node in ("alpha", "beta"):
            p.ctl(node, "down", "r0")
        if not p.disks_equal(size):
            res.problems.append(f"disks differ at the end, first at byte "
                                f"{p.first_difference(size)}")
    res.seconds = time.monotonic() - t0
    res.figure = (f"acknowledged writes lost: {res.lost} of {acks_total} "
                  f"({len(files)} files, {len(blocks)} blocks; e2fsck -fn clean {fsck_clean} "
                  f"of {res.runs}; journal replayed {replayed} of {res.runs})")
    return res
