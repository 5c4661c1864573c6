# SPDX-License-Identifier: GPL-2.0-or-later
"""Guest program: replica.kernel_nbd attaches an Engine to the real nbd.ko (no nbd-client).

Runs inside the test VM (knbd_ext4.sh), on the guest's Python from the python disk, with our
packages in /src. The Engine serves /dev/vdb, a raw file on the host that the host checks after
the VM is gone. Steps, each printed as "REPLICA-VM-STEP: NAME at S s":

    available -> attach (KernelNbdBackend, 2 socketpairs, index chosen by the kernel)
    -> mkfs (ext4, discards) -> fsync-writes -> flush-writes (os.sync after each file)
    -> checksum -> umount -> e2fsck -> detach (NBD_CMD_DISCONNECT; serving threads end on DISC)
    -> reattach -> verify (mount ro, md5s again) -> force-detach (still mounted: must not hang)
    -> released (umount; the kernel frees the device) -> killed-owner (a child attaches and is
    SIGKILLed; KernelNbdBackend.cleanup(record) disconnects its device) -> done

Other lines: "REPLICA-VM-DEVICE: /dev/nbdN", "REPLICA-VM-MD5: MD5  RELPATH", "REPLICA-VM-STATS:
{json}", "REPLICA-VM-CLEANUP: line", "REPLICA-VM-FAIL: WHAT". Exit status 0 = every step passed.
"""
import json
import os
import signal
import subprocess
import sys
import time

from guest_lib import Failed, check, ext4_workload, files_md5, run, say, step  # shipped beside this file

BACKING = "/dev/vdb"
MNT = "/mnt"
DATA_FILES = int(os.environ.get("DATA_FILES", "3"))
DATA_KIB = int(os.environ.get("DATA_KIB", "2048"))
SYNC_FILES = int(os.environ.get("SYNC_FILES", "8"))


def open_engine():
    from replica.mirror import Engine
    fd = os.open(BACKING, os.O_RDWR | os.O_CLOEXEC)
    size = os.lseek(fd, 0, os.SEEK_END)
    return fd, Engine(fd, size), size


def child_attach_and_wait() -> int:
    """Run as `knbd_guest.py child RECORD`: attach, write the record, then wait to be killed."""
    from replica.kernel_nbd import KernelNbdBackend
    _fd, engine, size = open_engine()
    backend = KernelNbdBackend("r0", "/run/replica")
    backend.attach(engine, size)
    with open(sys.argv[2] + ".tmp", "w") as f:
        json.dump(backend.record(), f)
    os.rename(sys.argv[2] + ".tmp", sys.argv[2])
    time.sleep(600)
    return 0


def main() -> int:
    from replica.kernel_nbd import KernelNbdBackend, device_connected

    step("available")
    reason = KernelNbdBackend.available()
    check(reason is None, f"KernelNbdBackend.available(): {reason}")

    step("attach")
    fd, engine, size = open_engine()
    backend = KernelNbdBackend("r0", "/run/replica")
    dev = backend.attach(engine, size)
    say("DEVICE", dev)
    index = int(dev.removeprefix("/dev/nbd"))
    check(backend.path == dev, f"path {backend.path} != {dev}")
    with open(f"/sys/block/nbd{index}/size") as f:
        check(int(f.read()) * 512 == size, f"/sys/block/nbd{index}/size is not {size // 512} sectors")
    with open(f"/sys/block/nbd{index}/queue/logical_block_size") as f:
        check(int(f.read()) == 4096, "logical block size is not 4096")
    rec = backend.record()
    say("RECORD", json.dumps(rec))
    check(rec["connected"] is True and rec["index"] == index, f"record() while attached: {rec}")
    if os.path.exists(f"/sys/block/nbd{index}/backend"):
        with open(f"/sys/block/nbd{index}/backend") as f:
            check(f.read().strip() == "replica:r0", "sysfs backend is not replica:r0")

    sums = ext4_workload(dev, MNT, DATA_FILES, DATA_KIB, SYNC_FILES)
    step("umount")
    run("umount", MNT)
    step("e2fsck")
    run("e2fsck", "-fn", dev)

    step("detach")
    threads = list(backend._threads)
    backend.detach()
    check(backend.path is None, "path still set after detach")
    check(not any(t.is_alive() for t in threads), "a serving thread outlived detach")
    ends = [r.reason if r else None for r in backend._results]
    say("ENDS", json.dumps(ends))
    check(all(r is not None and r.clean for r in backend._results), f"connections did not end cleanly: {ends}")
    check(device_connected(index) is False, f"/dev/nbd{index} still connected after detach")
    backend.detach()   # idempotent
    stats = engine.stats()
    say("STATS", json.dumps(stats))
    check(stats["io_errors"] == 0, f"engine io_errors {stats['io_errors']}")

    step("reattach")
    backend = KernelNbdBackend("r0", "/run/replica", connections=1)
    dev = backend.attach(engine, size)
    index = int(dev.removeprefix("/dev/nbd"))
    run("mount", "-t", "ext4", "-o", "ro", dev, MNT)
    step("verify")
    check(files_md5(MNT) == sums, "files differ after detach and reattach")

    step("force-detach")
    rec = backend.record()
    t0 = time.monotonic()
    backend.detach(force=True)
    took = time.monotonic() - t0
    say("FORCE-DETACH-S", f"{took:.2f}")
    check(backend.path is None, "path still set after forced detach")
    check(took < 10, f"forced detach of a mounted device took {took:.1f} s")
    step("released")
    subprocess.run(["umount", MNT], capture_output=True, timeout=60)
    deadline = time.monotonic() + 10
    while device_connected(index) and time.monotonic() < deadline:
        time.sleep(0.05)
    check(device_connected(index) is False, f"/dev/nbd{index} still configured after the last close")
    check(KernelNbdBackend.cleanup(rec) == [], "cleanup() of a released device released something")

    step("killed-owner")
    record_path = "/tmp/child-record.json"
    child = subprocess.Popen([sys.executable, __file__, "child", record_path])
    deadline = time.monotonic() + 60
    while not os.path.exists(record_path) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    check(os.path.exists(record_path), f"the child never attached (exit {child.poll()})")
    with open(record_path) as f:
        rec = json.load(f)
    child.send_signal(signal.SIGKILL)
    child.wait()
    check(device_connected(rec["index"]) is True, "the dead owner's device is not configured any more")
    lines = KernelNbdBackend.cleanup(rec)
    for line in lines:
        say("CLEANUP", line)
    check(len(lines) == 1 and lines[0].startswith(f"disconnected /dev/nbd{rec['index']}"), f"cleanup: {lines}")
    deadline = time.monotonic() + 10
    while device_connected(rec["index"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    check(device_connected(rec["index"]) is False, "still configured after cleanup()")
    check(KernelNbdBackend.cleanup(rec) == [], "cleanup() is not idempotent")

    engine.close()
    os.fsync(fd)
    os.close(fd)
    step("done")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_attach_and_wait())
    try:
        sys.exit(main())
    except Failed as e:
        say("FAIL", str(e))
    except Exception as e:   # a crash is a failure with its traceback on the console
        import traceback
        traceback.print_exc()
        say("FAIL", f"{type(e).__name__}: {e}")
    subprocess.run(["sh", "-c", "dmesg | tail -n 20 | sed 's/^/REPLICA-VM-DMESG: /'"])
    sys.exit(1)
