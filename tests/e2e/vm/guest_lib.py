# SPDX-License-Identifier: GPL-2.0-or-later
"""What the guest programs share (knbd_guest.py, replicad_guest.py): the console protocol the
host reads ("REPLICA-VM-TAG: text" lines), checks that fail the run, and the ext4 workload both
put on their NBD device (fsync'd files, then small files each followed by a whole-system sync,
i.e. NBD FLUSH) with the md5 lines the host compares. Shipped beside them as /vmtest/."""
import hashlib
import os
import subprocess


def say(tag: str, text: str) -> None:
    print(f"REPLICA-VM-{tag}: {text}", flush=True)


def step(name: str) -> None:
    with open("/proc/uptime") as f:
        say("STEP", f"{name} at {f.read().split()[0]} s")


class Failed(Exception):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Failed(what)


def run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    check(proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-300:]}")


def files_md5(root: str) -> dict[str, str]:
    out = {}
    for d in ("fsync", "flush"):
        for name in sorted(os.listdir(os.path.join(root, d))):
            with open(os.path.join(root, d, name), "rb") as f:
                out[f"{d}/{name}"] = hashlib.md5(f.read()).hexdigest()
    return out


def ext4_workload(dev: str, mnt: str, data_files: int, data_kib: int, sync_files: int) -> dict[str, str]:
    """mkfs.ext4 on `dev`, mount it on `mnt`, write the files, print and return their md5s
    (left mounted)."""
    step("mkfs")
    run("mkfs.ext4", "-q", "-F", dev)
    run("mount", "-t", "ext4", dev, mnt)
    step("fsync-writes")
    os.mkdir(f"{mnt}/fsync")
    for i in range(data_files):
        with open(f"{mnt}/fsync/data{i}", "wb") as f:
            for _ in range(data_kib // 64):
                f.write(os.urandom(64 * 1024))
            f.flush()
            os.fsync(f.fileno())
    step("flush-writes")
    os.mkdir(f"{mnt}/flush")
    for i in range(sync_files):
        with open(f"{mnt}/flush/small{i}", "wb") as f:
            f.write(os.urandom(1000 + i * 777))
        os.sync()
    step("checksum")
    sums = files_md5(mnt)
    for rel, digest in sums.items():
        say("MD5", f"{digest}  {rel}")
    return sums
