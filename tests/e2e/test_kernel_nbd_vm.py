# SPDX-License-Identifier: GPL-2.0-or-later
"""The real Linux NBD client (nbd.ko) in a qemu guest: Debian's nbd-client against replicad, and
replicad's own netlink attach code (replica.kernel_nbd) driving nbd.ko with no nbd-client at all.

The host kernel has no nbd module, so Debian's cloud kernel boots under qemu TCG (tests/e2e/vm/)
and attaches replicad's TCP export on the host's 127.0.0.1 (10.0.2.2 in the guest). The guest
makes ext4, writes files with fsync and with a sync after each (FLUSH-heavy), checks them, runs
e2fsck, disconnects, reconnects and reads them back. The host then proves the bytes reached
replicad's backing file: `e2fsck -fn` on it, and a read-only loop mount whose md5s must equal
the guest's. One boot, ~11 s under TCG on 2 cores, plus a ~4 s boot proving a failing guest is
reported as a failure.

Our attach code runs in the guest on this host's Python (a read-only second disk built by
tests/e2e/vm/pydisk.py, cached) with our packages in the per-run archive: an Engine on /dev/vdb
(a raw file here) is attached by KernelNbdBackend, carries ext4 through fsync, sync, umount,
e2fsck, detach, reattach, a forced detach while mounted and a cleanup after its owner was
killed; the host then checks the raw file as above. Then the whole product: replicad Primary in
the guest (`device /dev/drbd0; device-kind nbd;`, protocol C) and its Secondary on this host;
ext4 on /dev/drbd0 in the guest, and afterwards the Secondary's own disk holds the same files.
All four boots take ~47 s here (13 + 3 + 12 + 18). The image builder's parsers (newc cpio, ELF .modinfo, console lines) are
checked here too, without root and without a VM.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scripts.waiting import WaitTimeout, wait_for
from tests.conftest import requires_commands, requires_root
from tests.e2e.vm.cpio import CpioWriter
from tests.e2e.vm.guest import GuestRun, project_files, run_guest
from tests.e2e.vm.image import ImageUnavailable, build_boot_image, cache_dir, module_load_order, parse_modinfo
from tests.e2e.vm.pydisk import build_python_disk
from tests.integration.replica_fixtures import serve_resource

MiB = 1 << 20
DISK_SIZE = 128 * MiB
DATA_FILES = 4          # fsync'd files ...
DATA_KIB = 4096         # ... of 4 MiB random data each
SYNC_FILES = 24         # small files, each followed by a whole-system sync (NBD FLUSH)
GUEST_TIMEOUT_S = 90
SCRIPT = Path(__file__).resolve().parent / "vm" / "nbd_ext4.sh"
KNBD_SCRIPT = Path(__file__).resolve().parent / "vm" / "knbd_ext4.sh"
KNBD_GUEST = Path(__file__).resolve().parent / "vm" / "knbd_guest.py"
KNBD_DISK_SIZE = 64 * MiB
REPLICAD_GUEST = Path(__file__).resolve().parent / "vm" / "replicad_guest.py"
GUEST_LIB = Path(__file__).resolve().parent / "vm" / "guest_lib.py"      # what both import
BIN = Path(sys.executable).parent
# Generous under TCG: a guest vCPU busy with mkfs must not look like a dead peer.
VM_NET = "protocol C; ping-int 10; ping-timeout 50; timeout 50; connect-int 6;"


@pytest.fixture(scope="module")
def boot_image():
    requires_root()
    requires_commands("timeout", "mount", "umount", "losetup", "e2fsck")
    try:
        return build_boot_image()
    except ImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def python_disk(boot_image):
    try:
        return build_python_disk(cache_dir())
    except ImageUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def scratch():
    """A directory on tmpfs; anything mounted or loop-attached below it is released afterwards."""
    path = Path(tempfile.mkdtemp(prefix="replica-vm-", dir="/dev/shm"))
    try:
        yield path
    finally:
        for mnt in reversed(_mounts_under(path)):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        for img in path.glob("*.img"):
            _detach_loops(img)
        shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path) + "/")]


def _loops_of(img: Path) -> list[str]:
    out = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
    return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]


def _detach_loops(img: Path) -> None:
    for dev in _loops_of(img):
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.root
@pytest.mark.slow
def test_kernel_nbd_client_ext4_data_reaches_replicad_disk(boot_image, scratch):
    port = _free_port()
    env = {"NBD_HOST": "10.0.2.2", "NBD_PORT": port, "NBD_EXPORT": "r0",
           "DATA_FILES": DATA_FILES, "DATA_KIB": DATA_KIB, "SYNC_FILES": SYNC_FILES}
    serve = contextlib.contextmanager(serve_resource)
    with serve(scratch, size=DISK_SIZE, export=f"127.0.0.1:{port}") as served:
        run = run_guest(boot_image, SCRIPT, env, scratch, GUEST_TIMEOUT_S)
        pid = served.daemon_pid()
        assert pid is not None and Path(f"/proc/{pid}").exists(), f"replicad died while serving the VM:\n{run.tail()}"
        stats = json.loads(served.ctl("status", "--json", "r0").stdout)[0]["stats"]
        disk = served.disk
    # The resource is down and replicad gone: only its backing file is left to inspect.
    report = f"guest verdict {run.verdict!r}, qemu exit {run.returncode}, {run.elapsed_s:.1f} s; console tail:\n{run.tail()}"
    assert run.values("INIT"), f"the guest never reached /init: {report}"
    assert run.passed, report
    assert run.values("SIZE") == [str(DISK_SIZE)], report
    steps = [s.split()[0] for s in run.values("STEP")]
    assert steps == ["unknown-export", "connect", "mkfs", "fsync-writes", "flush-writes", "checksum", "umount",
                     "e2fsck", "disconnect", "reconnect", "done"], report
    guest_md5 = run.md5s()
    expected = {f"fsync/data{i}" for i in range(DATA_FILES)} | {f"flush/small{i}" for i in range(SYNC_FILES)}
    assert set(guest_md5) == expected, report
    # What replicad saw: the kernel's requests, not just the guest's page cache.
    assert stats["connections"] == 2 and stats["active_connections"] == 0, stats
    assert stats["bytes_written"] >= DATA_FILES * DATA_KIB * 1024, stats
    assert stats["flushes"] >= SYNC_FILES, stats   # every sync after a small file is an NBD FLUSH
    assert stats["trims"] >= 1, stats              # mkfs.ext4 discards the device
    assert stats["io_errors"] == 0, stats

    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True, timeout=60)
    assert fsck.returncode == 0, f"host e2fsck -fn {disk}: exit {fsck.returncode}\n{fsck.stdout}{fsck.stderr}"

    mnt = scratch / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "ro,loop,noload", "-t", "ext4", str(disk), str(mnt)],
                   check=True, capture_output=True, timeout=30)
    try:
        host_files = {str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file()}
        host_md5 = {rel: _md5(mnt / rel) for rel in sorted(host_files - {"lost+found"})}
        sizes = {rel: (mnt / rel).stat().st_size for rel in host_md5}
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True, timeout=30)
        _detach_loops(disk)   # autoclear releases it too, but asynchronously
    assert host_md5 == guest_md5, "the backing file's files differ from what the guest wrote"
    assert sizes["fsync/data0"] == DATA_KIB * 1024
    assert sizes[f"flush/small{SYNC_FILES - 1}"] == 1000 + (SYNC_FILES - 1) * 777


@pytest.mark.root
@pytest.mark.slow
def test_guest_reports_failure_when_nothing_listens(boot_image, scratch):
    """The harness must be able to fail: no server on the port -> FAIL at connect, quickly."""
    env = {"NBD_HOST": "10.0.2.2", "NBD_PORT": _free_port(), "NBD_EXPORT": "r0",
           "DATA_FILES": 1, "DATA_KIB": 64, "SYNC_FILES": 1}
    run = run_guest(boot_image, SCRIPT, env, scratch, guest_timeout_s=30)
    assert run.verdict is not None and run.verdict.startswith("FAIL test.sh exit status 1"), run.tail()
    assert [s.split()[0] for s in run.values("STEP")] == ["unknown-export", "connect"], run.tail()
    assert run.values("FAIL")[0].startswith("nbd-client 10.0.2.2 "), run.tail()
    assert run.values("POWEROFF") and run.returncode == 0, run.tail()


def _check_backing_file(disk: Path, guest_md5: dict[str, str], scratch: Path) -> dict[str, int]:
    """Host side: e2fsck -fn the raw file, loop-mount it read-only, compare md5s with the guest's."""
    fsck = subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True, text=True, timeout=60)
    assert fsck.returncode == 0, f"host e2fsck -fn {disk}: exit {fsck.returncode}\n{fsck.stdout}{fsck.stderr}"
    mnt = scratch / "mnt"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "ro,loop,noload", "-t", "ext4", str(disk), str(mnt)],
                   check=True, capture_output=True, timeout=30)
    try:
        host_files = {str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file()}
        host_md5 = {rel: _md5(mnt / rel) for rel in sorted(host_files - {"lost+found"})}
        sizes = {rel: (mnt / rel).stat().st_size for rel in host_md5}
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True, timeout=30)
        _detach_loops(disk)
    assert host_md5 == guest_md5, "the backing file's files differ from what the guest wrote"
    return sizes


@pytest.mark.root
@pytest.mark.slow
def test_our_netlink_attach_drives_kernel_nbd_ext4(boot_image, python_disk, scratch):
    """replica.kernel_nbd in the guest: no nbd-client, our Engine and our netlink binding."""
    disk = scratch / "backing.img"
    with open(disk, "wb") as f:
        f.truncate(KNBD_DISK_SIZE)
    files = project_files()
    files["/vmtest/knbd_guest.py"] = (KNBD_GUEST.read_bytes(), 0o644)
    files["/vmtest/guest_lib.py"] = (GUEST_LIB.read_bytes(), 0o644)
    env = {"GUEST_PROGRAM": "/vmtest/knbd_guest.py", "DATA_FILES": 3, "DATA_KIB": 2048, "SYNC_FILES": 8}
    run = run_guest(boot_image, KNBD_SCRIPT, env, scratch, GUEST_TIMEOUT_S, files=files,
                    drives=((python_disk, True), (disk, False)))
    report = f"guest verdict {run.verdict!r}, qemu exit {run.returncode}, {run.elapsed_s:.1f} s; console tail:\n{run.tail()}"
    assert run.values("INIT"), f"the guest never reached /init: {report}"
    assert run.passed, report
    steps = [s.split()[0] for s in run.values("STEP")]
    assert steps == ["available", "attach", "mkfs", "fsync-writes", "flush-writes", "checksum", "umount", "e2fsck",
                     "detach", "reattach", "verify", "force-detach", "released", "killed-owner", "done"], report
    assert run.values("DEVICE") == ["/dev/nbd0"], report    # the kernel picked the free device
    assert json.loads(run.values("ENDS")[0]) == ["disconnect requested"] * 2, report
    stats = json.loads(run.values("STATS")[0])
    # What the engine saw: the kernel's requests through the C frontend, over both sockets.
    assert stats["connections"] == 2, stats
    assert stats["bytes_written"] >= 3 * 2048 * 1024, stats
    assert stats["flushes"] >= 8, stats
    assert stats["trims"] >= 1, stats
    assert stats["io_errors"] == 0, stats
    assert len(run.values("CLEANUP")) == 1, report
    guest_md5 = run.md5s()
    assert set(guest_md5) == {f"fsync/data{i}" for i in range(3)} | {f"flush/small{i}" for i in range(8)}, report
    sizes = _check_backing_file(disk, guest_md5, scratch)
    assert sizes["fsync/data0"] == 2048 * 1024 and sizes["flush/small7"] == 1000 + 7 * 777


def _replica_conf(alpha: str, beta: str, beta_disk: Path, beta_export: Path) -> str:
    """One resource, two views: each node's config names the other by the address it can reach."""
    return f"""\
resource r0 {{
    device /dev/drbd0;
    device-kind nbd;
    net {{ {VM_NET} }}
    on alpha {{
        disk /dev/vdb;
        meta-disk internal;
        address {alpha};
        export unix:/run/replica/r0.sock;
    }}
    on beta {{
        disk {beta_disk};
        meta-disk internal;
        address {beta};
        export unix:{beta_export};
    }}
}}
"""


@pytest.mark.root
@pytest.mark.slow
def test_replicad_primary_in_guest_mirrors_ext4_to_secondary_on_host(boot_image, python_disk, scratch):
    """Issue 11 item 6: replicad Primary in the guest, /dev/drbd0 on the real nbd.ko attached by
    our netlink code, protocol C to replicad Secondary on this host; the Secondary's disk then
    holds the same files."""
    port = _free_port()
    guest_disk, host_disk = scratch / "alpha.img", scratch / "beta.img"
    for disk in (guest_disk, host_disk):
        with open(disk, "wb") as f:
            f.truncate(KNBD_DISK_SIZE)
    # The guest (alpha) connects: to it the host is 10.0.2.2; slirp's connections reach the
    # host's replicad (beta, listening on 127.0.0.1) from 127.0.0.1.
    host_conf = scratch / "replica.conf"
    host_conf.write_text(_replica_conf("127.0.0.1:7789", f"127.0.0.1:{port}", host_disk, scratch / "beta.sock"))
    guest_conf = _replica_conf("10.0.2.15:7789", f"10.0.2.2:{port}", Path("/dev/null"), Path("/run/beta.sock"))
    run_dir = scratch / "run"

    def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([str(BIN / "replicactl"), "--config", str(host_conf), "--node", "beta",
                              "--run-dir", str(run_dir), *args], capture_output=True, text=True, timeout=90)
        assert not check or res.returncode == 0, f"host replicactl {' '.join(args)}: {res.stderr}"
        return res

    ctl("create-md", "--force", "r0")
    ctl("up", "r0")
    pid = int((run_dir / "replicad.pid").read_text())
    try:
        files = project_files()
        files["/vmtest/replicad_guest.py"] = (REPLICAD_GUEST.read_bytes(), 0o644)
        files["/vmtest/guest_lib.py"] = (GUEST_LIB.read_bytes(), 0o644)
        files["/vmtest/replica.conf"] = (guest_conf.encode(), 0o644)
        env = {"GUEST_PROGRAM": "/vmtest/replicad_guest.py", "DATA_FILES": 3, "DATA_KIB": 1024, "SYNC_FILES": 6}
        run = run_guest(boot_image, KNBD_SCRIPT, env, scratch, GUEST_TIMEOUT_S, files=files,
                        drives=((python_disk, True), (guest_disk, False)))
        host_status = json.loads(ctl("status", "--json").stdout)[0]
        host_log = (run_dir / "replicad.log").read_text() if (run_dir / "replicad.log").exists() else ""
    finally:
        ctl("down", "--force", "r0", check=False)
        try:
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"host replicad {pid} to exit", 15)
        except WaitTimeout:
            os.kill(pid, signal.SIGKILL)
    report = (f"guest verdict {run.verdict!r}, qemu exit {run.returncode}, {run.elapsed_s:.1f} s; console tail:\n"
              f"{run.tail(80)}\n--- host replicad.log ---\n{host_log[-2500:]}")
    assert run.values("INIT"), f"the guest never reached /init: {report}"
    assert run.passed, report
    steps = [s.split()[0] for s in run.values("STEP")]
    assert steps == ["create-md", "up", "connected", "primary", "mkfs", "fsync-writes", "flush-writes", "checksum",
                     "held", "umount", "e2fsck", "secondary", "down", "done"], report
    assert run.values("KERNEL") == ["/dev/nbd0"], report
    assert host_status["role"] == "Secondary" and host_status["disk_state"] == "UpToDate", host_status
    guest_stats = json.loads(run.values("STATS")[0])
    assert guest_stats["peer_writes_sent"] > 0 and guest_stats["io_errors"] == 0, guest_stats
    guest_md5 = run.md5s()
    assert set(guest_md5) == {f"fsync/data{i}" for i in range(3)} | {f"flush/small{i}" for i in range(6)}, report
    # The Secondary's own disk, replicad down: the guest's files, byte for byte.
    sizes = _check_backing_file(host_disk, guest_md5, scratch)
    assert sizes["fsync/data2"] == 1024 * 1024 and sizes["flush/small5"] == 1000 + 5 * 777


# --- the image builder's parts, root-free -------------------------------------------------------

def make_module(modinfo: dict[str, str]) -> bytes:
    """A minimal ELF64 LE relocatable with .modinfo and .shstrtab sections."""
    info = b"".join(f"{k}={v}\0".encode() for k, v in modinfo.items())
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    info_off = 64
    str_off = info_off + len(info)
    sh_off = (str_off + len(shstrtab) + 7) & ~7
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 1, 62, 1, 0, 0, sh_off,
                         0, 64, 0, 0, 64, 3, 2)
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, info_off, len(info), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, str_off, len(shstrtab), 0, 0, 1, 0)]
    body = header + info + shstrtab
    return body + bytes(sh_off - len(body)) + b"".join(sections)


def test_parse_modinfo_reads_depends_and_params():
    info = parse_modinfo(make_module({"license": "GPL", "depends": "virtio_ring,virtio", "name": "virtio_pci"}))
    assert info == {"license": "GPL", "depends": "virtio_ring,virtio", "name": "virtio_pci"}
    assert parse_modinfo(make_module({})) == {}


def test_parse_modinfo_refuses_compressed_module():
    with pytest.raises(ImageUnavailable, match=r"^vm image: x\.ko: not a little-endian ELF64 module"):
        parse_modinfo(b"\xfd7zXZ\0" + bytes(100), "x.ko")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_parse_modinfo_fuzz_malformed_elf(data):
    blob = bytearray(make_module({"depends": "a,b", "vermagic": "6.1.0"}))
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        result = parse_modinfo(bytes(blob[:cut] if data.draw(st.booleans()) else blob), "fuzz.ko")
    except ImageUnavailable as e:
        assert str(e).startswith("vm image: fuzz.ko: ")
    else:
        assert isinstance(result, dict)


def test_module_load_order_puts_every_dependency_first(tmp_path):
    tree = tmp_path / "lib/modules/6.1.0-test"
    (tree / "kernel/net").mkdir(parents=True)
    mods = {"virtio_net": "virtio_ring,virtio,net_failover", "net_failover": "failover", "failover": "",
            "virtio": "virtio_ring", "virtio_ring": "", "nbd": "", "loop_a": "loop_b", "loop_b": "loop_a"}
    for name, deps in mods.items():
        (tree / "kernel/net" / f"{name.replace('_', '-') if name == 'net_failover' else name}.ko").write_bytes(
            make_module({"depends": deps}))
    order = [p.name for p in module_load_order(tree, ("virtio_net", "nbd"))]
    assert order == ["virtio_ring.ko", "virtio.ko", "failover.ko", "net-failover.ko", "virtio_net.ko", "nbd.ko"]
    assert sorted(p.name for p in module_load_order(tree, ("loop_a",))) == ["loop_a.ko", "loop_b.ko"]  # cycle: no hang
    with pytest.raises(ImageUnavailable, match="kernel module 'drbd' not found"):
        module_load_order(tree, ("drbd",))


def test_cpio_writer_output_unpacks_with_gnu_cpio(tmp_path):
    requires_commands("cpio")
    w = CpioWriter()
    w.add_file("/usr/sbin/tool", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
    w.add_file("etc/odd", b"abc", 0o600)
    w.add_symlink("/bin/sh", "busybox")
    w.add_dir("/proc")
    w.add_chardev("/dev/console", 5, 1)
    with pytest.raises(ValueError, match="cpio: duplicate entry: 'etc/odd'"):
        w.add_file("/etc/odd", b"")
    with pytest.raises(ValueError, match="cpio: invalid entry name"):
        w.add_file("/../escape", b"")
    archive = w.getvalue()
    assert len(archive) % 4 == 0 and archive.startswith(b"070701")
    listing = subprocess.run(["cpio", "-tv"], input=archive, capture_output=True, check=True).stdout.decode()
    assert re.search(r"^crw------- .* 5,\s+1 .* dev/console$", listing, re.M), listing
    assert re.search(r"^lrwxrwxrwx .* bin/sh -> busybox$", listing, re.M), listing
    out = tmp_path / "root"
    out.mkdir()
    extract = subprocess.run(["cpio", "-id", "--no-absolute-filenames", "--quiet", "--nonmatching", "dev/console"],
                             input=archive, cwd=out, capture_output=True)
    assert extract.returncode == 0, extract.stderr
    assert (out / "usr/sbin/tool").read_bytes() == b"\x7fELF" + bytes(range(256)) * 3
    assert (out / "usr/sbin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "etc/odd").read_bytes() == b"abc" and (out / "etc/odd").stat().st_mode & 0o777 == 0o600
    assert os.readlink(out / "bin/sh") == "busybox"
    assert (out / "proc").is_dir()
    with pytest.raises(ValueError, match="already finished"):
        w.add_file("late", b"")


def test_guest_run_reads_tagged_console_lines():
    console = ("[    1.0] Run /init as init process\nREPLICA-VM-INIT: 6.1.0 at 1.9 s\n"
               "REPLICA-VM-MD5: d41d8cd98f00b204e9800998ecf8427e  fsync/data0\n"
               "noise REPLICA-VM-MD5: 0000  not/at/line/start\n"
               "REPLICA-VM-MD5: 9e107d9d372bb6826bd81d3542a419d6  flush/small 1\n"
               "REPLICA-VM-RESULT: PASS at 9.1 s\n")
    run = GuestRun(0, console, 9.5)
    assert run.passed and run.verdict == "PASS at 9.1 s"
    assert run.md5s() == {"fsync/data0": "d41d8cd98f00b204e9800998ecf8427e",
                          "flush/small 1": "9e107d9d372bb6826bd81d3542a419d6"}
    assert not GuestRun(124, "REPLICA-VM-INIT: x\n", 120.0).passed
    assert GuestRun(0, "REPLICA-VM-RESULT: FAIL x\nREPLICA-VM-RESULT: PASS\n", 1).verdict == "PASS"
