# SPDX-License-Identifier: GPL-2.0-or-later
"""Builds and caches the boot image of the NBD test VM: Debian's cloud kernel + a base initramfs.

The running kernel here has no nbd module, so the real kernel NBD client is tested in a qemu
guest (see /work/shared/vm-nbd-recipe.md). This module owns everything that goes into that
guest except the per-run test script:

    linux-image-cloud-amd64 ──apt-cache depends──► linux-image-<abi>-cloud-amd64
        └─ apt-get download + dpkg -x (never installed) ─► boot/vmlinuz-*, lib/modules/*/nbd.ko …
    host binaries: busybox (static), nbd-client, mke2fs, e2fsck + every library ldd names
    guest_init.sh ─► /init
        └─► initramfs-<key>.img.gz   (gzip newc cpio, key = sha256 of every input's bytes)

Both are cached outside the repository, under $REPLICA_VM_CACHE, else $XDG_CACHE_HOME/
replica-ha-vm, else /var/cache/replica-ha-vm (root) or ~/.cache/replica-ha-vm. A cached check
only hashes the inputs; a cold build (download included) takes ~15 s. Anything that makes the
image impossible to build on this machine (no Debian mirror, missing host tool that apt-get
cannot install) raises ImageUnavailable, whose text is the reason tests skip with.

Modules are loaded by /init with insmod in an order computed here from each module's
`.modinfo depends=`, because the kernel .deb has no modules.dep (depmod runs at install time).

Run `python -m tests.e2e.vm.image` to build (or check) the image and print its paths.
"""
import fcntl
import gzip
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.vm.cpio import CpioWriter

HERE = Path(__file__).resolve().parent
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# Top-level modules the guest needs; their dependencies are added from .modinfo.
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "nbd")  # virtio_blk: the python disk (pydisk.py)
MODULE_PARAMS = {"nbd": "nbds_max=2"}
# Host programs copied into the guest (with their libraries), at the same path.
GUEST_PROGRAMS = ("nbd-client", "mke2fs", "e2fsck")
GUEST_SYMLINKS = {"/usr/sbin/mkfs.ext4": "mke2fs"}  # mke2fs picks ext4 from its argv[0]
# Busybox applets that would shadow the real programs above: never linked.
BUSYBOX_SKIP = {"nbd-client", "mke2fs", "mkfs.ext2", "mkfs.ext3", "mkfs.ext4", "e2fsck", "fsck",
                "fsck.ext2", "fsck.ext3", "fsck.ext4", "tune2fs", "init", "linuxrc"}
# command -> Debian package that provides it on the host
HOST_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static",
                 "nbd-client": "nbd-client", "mke2fs": "e2fsprogs", "e2fsck": "e2fsprogs",
                 "apt-get": "apt", "dpkg": "dpkg", "ldd": "libc-bin"}
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class ImageUnavailable(Exception):
    """The VM image cannot be built on this machine; str() is the reason to skip with."""


@dataclass(frozen=True, slots=True)
class BootImage:
    kernel: Path        # vmlinuz
    initrd: Path        # base initramfs (gzip newc); per-run archives are appended to a copy
    kernel_release: str
    key: str


def cache_dir() -> Path:
    if os.environ.get("REPLICA_VM_CACHE"):
        return Path(os.environ["REPLICA_VM_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "replica-ha-vm"
    if os.geteuid() == 0:
        return Path("/var/cache/replica-ha-vm")
    return Path.home() / ".cache" / "replica-ha-vm"


def which_sbin(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH + ":" + os.environ.get("PATH", ""))


def ensure_host_packages() -> None:
    """apt-get install whatever host package is missing (root only); ImageUnavailable if impossible."""
    missing = sorted({pkg for cmd, pkg in HOST_PACKAGES.items() if which_sbin(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise ImageUnavailable(f"vm image: missing host packages: {' '.join(missing)} (not root, cannot apt-get install)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=600, env=env)
    still = sorted({pkg for cmd, pkg in HOST_PACKAGES.items() if which_sbin(cmd) is None})
    if proc.returncode != 0 or still:
        raise ImageUnavailable(f"vm image: apt-get install {' '.join(missing)} failed: {_last_line(proc)}")


def kernel_package() -> str:
    """The ABI package that linux-image-cloud-amd64 currently depends on."""
    proc = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=60)
    found = re.findall(r"Depends:\s*(linux-image-[\w.+-]+-cloud-amd64)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise ImageUnavailable(f"cannot download the Debian kernel: {KERNEL_META_PACKAGE} is not in the "
                               f"apt lists (apt-get update needs the Debian mirrors): {_last_line(proc)}")
    return found[0]


def fetch_kernel(cache: Path, package: str) -> Path:
    """Download and unpack (not install) the kernel package once; returns the unpacked tree."""
    kernels = cache / "kernel"
    for done in sorted(kernels.glob(f"{package}_*/.complete")):
        return done.parent
    kernels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kernels, prefix=".download-") as tmp:
        proc = _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=tmp, timeout=300)
        debs = list(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not debs:
            raise ImageUnavailable(f"cannot download the Debian kernel package {package} "
                                   f"(no network to the Debian mirrors?): {_last_line(proc)}")
        tree = kernels / debs[0].name.removesuffix(".deb")
        unpack = Path(tmp) / "tree"
        proc = _run(["dpkg-deb", "-x", str(debs[0]), str(unpack)], timeout=300)
        if proc.returncode != 0:
            raise ImageUnavailable(f"vm image: dpkg-deb -x {debs[0].name} failed: {_last_line(proc)}")
        (unpack / ".complete").write_text(debs[0].name + "\n")
        shutil.rmtree(tree, ignore_errors=True)
        unpack.rename(tree)
    return tree


def read_modinfo(ko: Path) -> dict[str, str]:
    return parse_modinfo(ko.read_bytes(), str(ko))


def parse_modinfo(data: bytes, name: str = "module") -> dict[str, str]:
    """key=value pairs of an ELF64 little-endian module's .modinfo section ({} if it has none)."""
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise ImageUnavailable(f"vm image: {name}: not a little-endian ELF64 module (compressed?)")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shentsize < 0x40 or shstrndx >= shnum:
            raise ValueError(f"section header table: entsize={shentsize} count={shnum} strndx={shstrndx}")

        def section(i):
            name_off, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
            return name_off, off, size

        _, str_off, _ = section(shstrndx)
        for i in range(shnum):
            name_off, off, size = section(i)
            start = str_off + name_off
            if data[start:data.index(b"\0", start)] == b".modinfo":
                fields = (f.decode(errors="replace").split("=", 1) for f in data[off:off + size].split(b"\0"))
                return {f[0]: f[1] for f in fields if len(f) == 2}
    except (struct.error, ValueError, OverflowError) as e:
        raise ImageUnavailable(f"vm image: {name}: malformed ELF module: {e}") from None
    return {}


def module_load_order(modules_root: Path, wanted=GUEST_MODULES) -> list[Path]:
    """Every wanted module and its dependencies, each after everything it depends on."""
    by_name = {}
    for ko in modules_root.rglob("*.ko*"):
        by_name[ko.name.split(".ko")[0].replace("-", "_")] = ko
    order: list[Path] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        ko = by_name.get(name)
        if ko is None:
            raise ImageUnavailable(f"vm image: kernel module {name!r} not found under {modules_root}")
        if ko in order or name in visiting:
            return
        visiting.add(name)
        for dep in filter(None, read_modinfo(ko).get("depends", "").split(",")):
            visit(dep)
        order.append(ko)

    for name in wanted:
        visit(name)
    return order


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries (and ELF interpreter) ldd reports; [] for a static binary."""
    proc = _run(["ldd", binary], timeout=30)
    if proc.returncode != 0:
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            return []
        raise ImageUnavailable(f"vm image: ldd {binary} failed: {_last_line(proc)}")
    libs = []
    for line in proc.stdout.splitlines():
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(m.group(1))
        elif "not found" in line:
            raise ImageUnavailable(f"vm image: {binary}: library missing on the host: {line.strip()}")
    return libs


def _guest_tree(kernel_tree: Path):
    """Yields (kind, guest_path, payload, mode) for everything in the base initramfs."""
    busybox = which_sbin("busybox")
    yield "file", "/bin/busybox", Path(busybox).read_bytes(), 0o755
    applets = _run([busybox, "--list"], timeout=30).stdout.split()
    if "sh" not in applets:
        raise ImageUnavailable(f"vm image: {busybox} has no sh applet")
    for applet in sorted(set(applets) - BUSYBOX_SKIP - {"busybox"}):
        yield "symlink", f"/bin/{applet}", "busybox", 0
    libs = set(shared_libraries(busybox))
    for name in GUEST_PROGRAMS:
        path = which_sbin(name)
        yield "file", f"/usr/sbin/{name}", Path(path).read_bytes(), 0o755
        libs.update(shared_libraries(path))
    for link, target in GUEST_SYMLINKS.items():
        yield "symlink", link, target, 0
    for lib in sorted(libs):
        yield "file", lib, Path(lib).read_bytes(), 0o755
    yield "file", "/etc/mke2fs.conf", Path("/etc/mke2fs.conf").read_bytes(), 0o644
    yield "file", "/init", (HERE / "guest_init.sh").read_bytes(), 0o755
    modules_root = next((kernel_tree / "lib" / "modules").iterdir())
    order = []
    for ko in module_load_order(modules_root):
        yield "file", f"/lib/modules/{ko.name}", ko.read_bytes(), 0o644
        stem = ko.name.split(".ko")[0]
        order.append(f"{ko.name} {MODULE_PARAMS.get(stem, '')}".rstrip())
    yield "file", "/lib/modules/load-order", ("\n".join(order) + "\n").encode(), 0o644
    for d in ("/proc", "/sys", "/dev", "/tmp", "/mnt", "/run", "/root", "/etc"):
        yield "dir", d, None, 0o755
    yield "chardev", "/dev/console", (5, 1), 0o600
    yield "chardev", "/dev/null", (1, 3), 0o666


def build_boot_image() -> BootImage:
    """Return the cached kernel + base initramfs, building what is missing."""
    ensure_host_packages()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tree = fetch_kernel(cache, kernel_package())
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise ImageUnavailable(f"vm image: no boot/vmlinuz-* in {tree}")
        release = kernels[0].name.removeprefix("vmlinuz-")
        entries = list(_guest_tree(tree))
        digest = hashlib.sha256()
        for source in (Path(__file__), HERE / "cpio.py"):
            digest.update(source.read_bytes())
        digest.update((tree / ".complete").read_bytes())
        for kind, path, payload, mode in entries:
            blob = payload if isinstance(payload, bytes) else repr(payload).encode()
            digest.update(f"{kind} {path} {mode:o} {len(blob)}\n".encode())
            digest.update(hashlib.sha256(blob).digest())
        key = digest.hexdigest()[:20]
        initrd = cache / f"initramfs-{key}.img.gz"
        if not initrd.exists():
            archive = CpioWriter()
            for kind, path, payload, mode in entries:
                if kind == "file":
                    archive.add_file(path, payload, mode)
                elif kind == "symlink":
                    archive.add_symlink(path, payload)
                elif kind == "dir":
                    archive.add_dir(path, mode)
                else:
                    archive.add_chardev(path, *payload, mode=mode)
            tmp = initrd.with_suffix(".tmp")
            tmp.write_bytes(gzip.compress(archive.getvalue(), compresslevel=6, mtime=0))
            tmp.rename(initrd)
            for old in cache.glob("initramfs-*.img.gz"):
                if old != initrd:
                    old.unlink(missing_ok=True)
        return BootImage(kernels[0], initrd, release, key)


def _run(argv, timeout, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {e.strerror}")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{' '.join(argv)}: timed out after {timeout} s")


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip() and not ln.startswith("W:")]
    return lines[-1].strip() if lines else f"exit status {proc.returncode}"


def main() -> int:
    try:
        image = build_boot_image()
    except ImageUnavailable as e:
        print(f"vm image: unavailable: {e}", file=sys.stderr)
        return 77
    print(f"kernel  {image.kernel} ({image.kernel_release})")
    print(f"initrd  {image.initrd} ({image.initrd.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
