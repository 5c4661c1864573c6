# SPDX-License-Identifier: GPL-2.0-or-later
"""The reliability suite (scripts/reliability.py) with small numbers, in `make test`: 3 power-fails
per kill loop, one split brain and the two heartbeat cuts, one disk failure, 8 s of the lossy
network, 10,000 inputs per fuzz target. `make reliability` runs the full numbers.

Beside it, root-free checks that the suite's own checkers can fail: a stale, torn or misplaced
block is reported lost; a decoder raising an undocumented exception, and one that kills its
process (a C fault), are counted as crashes with the input saved.
"""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from scripts.reliability.cluster import BLOCK, HEADER, MAGIC, block_gen, lost_blocks, make_block
from scripts.reliability.fuzz import Target, fuzz_target, mutate, run_fuzz

REPO = Path(__file__).resolve().parents[2]


# --- the checkers can fail (no root) ------------------------------------------------------------

def _disk(blocks: dict[int, bytes], nblocks: int = 8) -> bytes:
    return b"".join(blocks.get(b, bytes(BLOCK)) for b in range(nblocks))


def test_lost_blocks_reports_stale_torn_and_misplaced_blocks():
    pay = os.urandom(BLOCK - HEADER.size)
    good = {0: make_block(0, 5, pay), 1: make_block(1, 9, pay), 2: make_block(2, 3, pay)}
    disk = _disk(good)
    read = lambda n, o: disk[o:o + n]  # noqa: E731
    assert lost_blocks(read, {0: 5, 1: 8, 2: 3}, len(disk)) == []        # newer is fine
    torn = bytearray(make_block(3, 7, pay))
    torn[100] ^= 1
    disk = _disk({**good, 3: bytes(torn), 4: make_block(5, 7, pay)})
    read = lambda n, o: disk[o:o + n]  # noqa: E731
    lost = lost_blocks(read, {0: 6, 3: 7, 4: 7, 6: 1}, len(disk))
    assert [x.split(":")[0] for x in lost] == ["block 0", "block 3", "block 4", "block 6"]
    assert "found 5" in lost[0] and "garbage" in lost[1] and "garbage" in lost[2]
    assert block_gen(make_block(2, 3, pay), 2) == 3
    raw = make_block(2, 3, pay)
    assert raw[:8] == MAGIC and zlib.crc32(raw[:24] + raw[HEADER.size:]) == HEADER.unpack_from(raw)[3]


def test_fuzzer_counts_undocumented_exceptions_as_crashes_with_the_input(tmp_path):
    def run(data: bytes) -> bool:
        if len(data) > 6:
            raise KeyError("not a documented error")
        if not data:
            raise ValueError("documented")
        return True
    t = Target("selftest", [b"abcd"], run, (ValueError,), [b"xyzxyz"])
    res = fuzz_target(t, 3000, 1, tmp_path)
    assert res["done"] == 3000 and res["crashes"] > 0
    assert res["errors"].get("ValueError", 0) > 0 and res["accepted"] > 0
    saved = sorted(tmp_path.glob("crash-selftest-*.bin"))
    assert saved and all(len(p.read_bytes()) > 6 for p in saved)
    assert "KeyError" in saved[0].with_suffix(".txt").read_text()


def test_fuzzer_counts_a_dying_worker_as_a_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("RB_FUZZ_SELFTEST", "1")
    [res] = run_fuzz(2000, tmp_path, seed=1, targets=("selftest-abort",), log=lambda s: None)
    assert res["crashes"] == 1 and "exit" in res["died"]
    [saved] = res["saved"]
    assert b"\0" in Path(saved).read_bytes()          # the input that killed it
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("rb-fuzz-selftest-abort-")]


def test_mutations_stay_bounded_and_vary():
    import random
    rng = random.Random(3)
    outs = {mutate(rng, b"hello world 123", [b"other"], [b"tok"], True) for _ in range(500)}
    assert len(outs) > 300 and all(len(o) <= 4096 for o in outs)


# --- the suite itself (root) ----------------------------------------------------------------------

@pytest.mark.root
def test_reliability_suite_small(tmp_path):
    from tests.conftest import requires_commands, requires_module, requires_root
    requires_root()
    requires_commands("ip", "bridge", "losetup", "mount", "mkfs.ext4", "e2fsck", "dumpe2fs",
                      "fallocate", "flock")
    requires_module("nbd")
    if not os.path.exists("/dev/fuse") or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs /dev/fuse (ext4 kill loop) and /dev/net/tun (the impaired wire)")
    out = tmp_path / "results.json"
    had_drbd5 = os.path.lexists("/dev/drbd5")
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "reliability.py"), "--kills",
                             "3", "--partitions", "1", "--disk-runs", "1", "--netem-seconds", "8",
                             "--fuzz-inputs", "10000", "--fuzz-dir", str(tmp_path / "fuzz"),
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.terminate()              # the suite cleans up on SIGTERM
            proc.communicate(timeout=120)
    text = stdout + stderr
    assert out.exists(), text[-4000:]
    results = {r["part"]: r for r in json.loads(out.read_text())}
    print(text[-6000:])
    assert len(results) == 6, text[-4000:]
    for r in results.values():
        assert r["ok"] and r["lost"] == 0 and r["crashes"] == 0, (r, text[-4000:])
    for part in ("kill loop, raw device", "kill loop, ext4", "disk failure under the Primary"):
        fig = results[part]["figure"]
        assert fig.startswith("acknowledged writes lost: 0 of "), fig
        assert int(fig.split(" of ")[1].split()[0]) > 0, fig
    assert results["kill loop, raw device"]["runs"] == 3
    assert "e2fsck -fn clean 3 of 3" in results["kill loop, ext4"]["figure"]
    assert "silently merged: 0" in results["partition"]["figure"]
    assert "with STONITH one side serves" in results["partition"]["figure"]
    assert "false failovers 0" in results["slow and lossy network"]["figure"]
    assert "crashes: 0 in 90000 inputs over 9" in results["bad input (fuzz)"]["figure"]
    assert proc.returncode == 0, text[-4000:]
    for line in ("acknowledged writes lost: 0 of", "make reliability"):
        assert line in stdout
    # nothing of the run is left: namespaces, tmpfs directories, the device name
    ours = (f"rb{proc.pid % 100000}x", f"rbh{proc.pid % 100000}")
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not [n for n in left if n.startswith(ours)], left
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(ours)]
    assert os.path.lexists("/dev/drbd5") == had_drbd5
