# SPDX-License-Identifier: GPL-2.0-or-later
"""Guest program: replicad Primary with `device /dev/drbd0; device-kind nbd;`, its peer on the host.

Runs inside the test VM (knbd_ext4.sh with GUEST_PROGRAM pointing here). The guest node `alpha`
(its name sorts first, so it connects) reaches the host's Secondary `beta` at 10.0.2.2:PORT,
which slirp turns into the host's 127.0.0.1:PORT. replicactl runs in this process (its main()
per command: a Python start under TCG costs seconds); replicad is the daemon it starts.

    create-md -> up -> Connected -> new-current-uuid --clear-bitmap (both disks blank)
    -> UpToDate/UpToDate -> primary: /dev/drbd0 -> /dev/nbdN (our netlink attach)
    -> mkfs.ext4 /dev/drbd0 -> mount -> fsync-writes -> flush-writes -> checksum
    -> secondary refused while mounted -> umount -> e2fsck -fn -> secondary (device gone) -> down

Lines for the host as in knbd_guest.py, plus "REPLICA-VM-KERNEL: /dev/nbdN".
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import time

from guest_lib import Failed, check, ext4_workload, run, say, step  # shipped beside this file

CONF = "/vmtest/replica.conf"
RUN = "/run/replica"
DEV = "/dev/drbd0"
MNT = "/mnt"
DATA_FILES = int(os.environ.get("DATA_FILES", "3"))
DATA_KIB = int(os.environ.get("DATA_KIB", "1024"))
SYNC_FILES = int(os.environ.get("SYNC_FILES", "6"))


def ctl(*args: str, ok: bool = True) -> tuple[int, str, str]:
    """replicactl ARGS in this process."""
    from replica.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["--config", CONF, "--node", "alpha", "--run-dir", RUN, *args])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    if ok:
        check(rc == 0, f"replicactl {' '.join(args)}: exit {rc}: {err.getvalue().strip()[-400:]}\n"
                       f"{log_tail()}")
    return rc, out.getvalue(), err.getvalue()


def log_tail() -> str:
    try:
        with open(f"{RUN}/replicad.log") as f:
            return "--- replicad.log ---\n" + "".join(f.readlines()[-25:])
    except OSError:
        return "(no replicad.log)"


def status() -> dict:
    out = json.loads(ctl("status", "--json")[1])
    return out[0] if out else {}


def wait(pred, what: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        last = status()
        if last and pred(last):
            return last
        time.sleep(0.2)
    raise Failed(f"{what}: not within {timeout:g} s; last status "
                 f"{ {k: last.get(k) for k in ('role', 'connection', 'disk_state', 'peer_disk_state', 'link_error')} }"
                 f"\n{log_tail()}")


def main() -> int:
    os.makedirs(RUN, exist_ok=True)
    step("create-md")
    ctl("create-md", "--force", "r0")
    step("up")
    ctl("up", "r0")
    wait(lambda s: s["connection"] == "Connected", "Connected to the host's replicad", 60)
    step("connected")
    ctl("new-current-uuid", "--clear-bitmap", "r0")
    wait(lambda s: s["disk_state"] == "UpToDate" and s["peer_disk_state"] == "UpToDate", "UpToDate/UpToDate", 30)
    check(not os.path.lexists(DEV), f"{DEV} exists while Secondary")

    step("primary")
    ctl("primary", "r0")
    dev = status()["device"]
    say("DEVICE", json.dumps(dev))
    check(dev["kind"] == "nbd" and dev["path"] == DEV, f"device: {dev}")
    kernel = dev["kernel"]
    say("KERNEL", kernel)
    check(os.readlink(DEV) == kernel == os.readlink("/dev/replica/r0"), f"{DEV} does not point at {kernel}")
    check(kernel.startswith("/dev/nbd"), f"kernel device {kernel} is not an NBD device")

    ext4_workload(DEV, MNT, DATA_FILES, DATA_KIB, SYNC_FILES)

    step("held")
    rc, _, err = ctl("secondary", "r0", ok=False)
    check(rc == 17 and f"mounted on {MNT}" in err, f"secondary while mounted: exit {rc}: {err.strip()}")
    step("umount")
    run("umount", MNT)
    step("e2fsck")
    run("e2fsck", "-fn", DEV)
    stats = status()["stats"]
    say("STATS", json.dumps(stats))
    step("secondary")
    ctl("secondary", "r0")
    check(not os.path.lexists(DEV) and not os.path.lexists("/dev/replica/r0"), f"{DEV} left after secondary")
    step("down")
    ctl("down", "r0")
    step("done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        say("FAIL", str(e))
    except Exception as e:
        import traceback
        traceback.print_exc()
        say("FAIL", f"{type(e).__name__}: {e}")
    subprocess.run(["sh", "-c", "dmesg | tail -n 20 | sed 's/^/REPLICA-VM-DMESG: /'"])
    ctl("down", "--force", "r0", ok=False)
    sys.exit(1)
