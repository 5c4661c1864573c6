# SPDX-License-Identifier: GPL-2.0-or-later
"""Boots the NBD test VM once with a per-run script, and reads its verdict from the console.

    base initramfs (image.py, cached) ++ per-run gzip cpio {/vmtest/env, /vmtest/test.sh}
        └─► timeout -k 5 T  qemu-system-x86_64 -accel tcg … -serial stdio  </dev/null
                └─► console text (\\r stripped) ─► GuestRun: verdict, tagged lines, md5s

The kernel unpacks concatenated archives in order, so the big base image is never rebuilt per
run. Lines the guest prints for the host start with "REPLICA-VM-" (see guest_init.sh). qemu runs
in its own session under the host `timeout`, whose limit is GUEST_MARGIN_S longer than the
guest's own, so a stuck guest still prints FAIL; whatever happens, the qemu process group we
started is killed and reaped before run_guest returns.

KVM hangs on this host, hence TCG; the guest has 1 vCPU (a second one competes with the NBD
server for the host's 2 cores and makes I/O slower). The cloud kernel has no e1000, so the NIC
is virtio-net-pci; user-mode networking makes the host's 127.0.0.1 reachable as 10.0.2.2.
"""
import argparse
import gzip
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.vm.cpio import CpioWriter
from tests.e2e.vm.image import BootImage, ImageUnavailable, build_boot_image, shared_libraries

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
GUEST_MARGIN_S = 30
TAG = "REPLICA-VM-"


@dataclass(frozen=True, slots=True)
class GuestRun:
    returncode: int     # of the host `timeout` wrapper: qemu's status, 124 = timed out
    console: str        # serial console, \r removed
    elapsed_s: float

    def values(self, tag: str) -> list[str]:
        """Text after "REPLICA-VM-<tag>: " on every console line carrying that tag, in order."""
        prefix = f"{TAG}{tag}: "
        return [line[len(prefix):] for line in self.console.splitlines() if line.startswith(prefix)]

    @property
    def verdict(self) -> str | None:
        found = self.values("RESULT")
        return found[-1] if found else None

    @property
    def passed(self) -> bool:
        return (self.verdict or "").startswith("PASS")

    def md5s(self) -> dict[str, str]:
        """{relative path: md5 hex} from "REPLICA-VM-MD5: <md5>  <path>" lines."""
        out = {}
        for value in self.values("MD5"):
            digest, _, path = value.partition("  ")
            out[path.strip()] = digest
        return out

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def per_run_archive(script: Path, env: dict[str, str], guest_timeout_s: int,
                    files: dict[str, tuple[bytes, int]] | None = None) -> bytes:
    """/vmtest/env, /vmtest/test.sh, and `files` ({guest path: (content, mode)})."""
    archive = CpioWriter()
    settings = dict(env, GUEST_TIMEOUT_S=str(guest_timeout_s))
    text = "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in settings.items())
    archive.add_file("/vmtest/env", text.encode())
    archive.add_file("/vmtest/test.sh", script.read_bytes(), 0o755)
    for path, (content, mode) in sorted((files or {}).items()):
        archive.add_file(path, content, mode)
    return gzip.compress(archive.getvalue(), mtime=0)


def project_files(repo: Path = REPO) -> dict[str, tuple[bytes, int]]:
    """The project's Python packages (and the C extension, with the libraries it needs beyond
    the base image's) as /src/..., for a guest that runs our own code (pydisk.py has Python)."""
    files = {}
    for package in ("replica", "hacommon"):
        for path in sorted((repo / package).rglob("*")):
            if path.is_file() and (path.suffix == ".py" or path.name.endswith(".so")) \
                    and "__pycache__" not in path.parts:
                files[f"/src/{path.relative_to(repo)}"] = (path.read_bytes(), 0o755 if path.suffix == ".so" else 0o644)
    for ext in sorted((repo / "replica").glob("_mirror*.so")):
        for lib in shared_libraries(str(ext)):
            name = os.path.basename(lib)
            if "ld-linux" not in name and not name.startswith("libc.so"):
                files[f"/src/libs/{name}"] = (Path(lib).read_bytes(), 0o755)
    return files


def qemu_argv(image: BootImage, initrd: Path, memory_mib: int = 512, drives: tuple[tuple[Path, bool], ...] = (),
              hostfwd: tuple[int, ...] = ()) -> list[str]:
    """`drives` ((raw file, read_only), ...) become /dev/vda, /dev/vdb... in the guest; each port
    in `hostfwd` on the host's 127.0.0.1 is forwarded to the same port on the guest (10.0.2.15)."""
    nic = "user,model=virtio-net-pci" + "".join(f",hostfwd=tcp:127.0.0.1:{p}-10.0.2.15:{p}" for p in hostfwd)
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mib), "-smp", "1",
            "-nodefaults", "-no-user-config", "-no-reboot",
            "-kernel", str(image.kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet",
            "-nic", nic,
            "-display", "none", "-monitor", "none", "-serial", "stdio"]
    for path, read_only in drives:
        argv += ["-drive", f"file={path},if=virtio,format=raw,"
                 + ("cache=unsafe,readonly=on" if read_only else "cache=writeback")]
    return argv


def run_guest(image: BootImage, script: Path, env: dict[str, str], workdir: Path,
              guest_timeout_s: int = 60, *, files: dict[str, tuple[bytes, int]] | None = None,
              drives: tuple[tuple[Path, bool], ...] = (), hostfwd: tuple[int, ...] = ()) -> GuestRun:
    """Boot, run `script` as /vmtest/test.sh with `env`, power off; never leaves qemu behind."""
    initrd = workdir / "vm-initrd.img"
    with open(initrd, "wb") as out:
        out.write(image.initrd.read_bytes())
        out.write(per_run_archive(script, env, guest_timeout_s, files))
    host_timeout_s = guest_timeout_s + GUEST_MARGIN_S
    argv = ["timeout", "-k", "5", str(host_timeout_s), *qemu_argv(image, initrd, drives=drives, hostfwd=hostfwd)]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            out, _ = proc.communicate(timeout=host_timeout_s + 15)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()  # retrying after TimeoutExpired loses no output
            out += f"\n{TAG}RESULT: FAIL host: qemu still running {host_timeout_s + 15} s after start\n".encode()
    finally:
        _kill_group(proc)
        initrd.unlink(missing_ok=True)
    console = out.decode(errors="replace").replace("\r", "")
    return GuestRun(proc.returncode, console, time.monotonic() - start)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the session we started for qemu (its pid is the group id), then reap."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.vm.guest",
        description="Attach an NBD export on this host with the real kernel nbd client in a VM "
                    "and run the ext4 test on it (destroys the export's data).")
    parser.add_argument("port", type=int, help="TCP port on 127.0.0.1 (the guest uses 10.0.2.2)")
    parser.add_argument("export", help="export name (nbd-client -N)")
    parser.add_argument("--files", type=int, default=4, help="fsync'd files (default 4)")
    parser.add_argument("--file-kib", type=int, default=4096, help="KiB per fsync'd file (default 4096)")
    parser.add_argument("--sync-files", type=int, default=24, help="small files each followed by sync")
    parser.add_argument("--timeout", type=int, default=90, help="guest timeout in seconds")
    args = parser.parse_args()
    try:
        image = build_boot_image()
    except ImageUnavailable as e:
        print(f"vm: unavailable: {e}", file=sys.stderr)
        return 77
    env = {"NBD_HOST": "10.0.2.2", "NBD_PORT": args.port, "NBD_EXPORT": args.export,
           "DATA_FILES": args.files, "DATA_KIB": args.file_kib, "SYNC_FILES": args.sync_files}
    run = run_guest(image, HERE / "nbd_ext4.sh", env, Path(os.environ.get("TMPDIR", "/tmp")), args.timeout)
    print(run.console)
    print(f"vm: {run.verdict or 'no verdict (boot failure?)'} after {run.elapsed_s:.1f} s")
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
