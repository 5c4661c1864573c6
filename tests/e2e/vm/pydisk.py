# SPDX-License-Identifier: GPL-2.0-or-later
"""A read-only disk with this host's Python, so that the test VM runs OUR code against nbd.ko.

The cloud kernel has no 9p (CONFIG_NET_9P is not set) and virtiofs would need a host daemon, so
the guest gets Python as a second virtio disk: an ext4 image made with `mke2fs -d` (no mount, no
loop device) from a staging tree, cached beside the boot image and keyed by what went into it:

    /py/     the interpreter's prefix (sys.base_prefix) without tests, idle, tkinter, ensurepip;
             stdlib compiled to .pyc (the disk is read-only in the guest, and compiling under
             TCG costs seconds per run)
    /site/   the venv's packages the daemon imports at run time (pyroute2, cffi, cryptography)
    /libs/   every shared library those binaries need that the base initramfs lacks

The project's own code is not on this disk: it changes with every commit, so it travels in the
per-run archive (guest.project_archive_files). In the guest:

    mount -o ro /dev/vda /pydisk
    PYTHONHOME=/pydisk/py PYTHONPATH=/src:/pydisk/site LD_LIBRARY_PATH=/pydisk/libs:/src/libs:...
"""
import fcntl
import hashlib
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from tests.e2e.vm.image import ImageUnavailable, _last_line, _run, shared_libraries, which_sbin

# Run-time dependencies of replicad (setup.py install_requires, and what they import).
SITE_PACKAGES = ("pyroute2", "cffi", "_cffi_backend", "cryptography", "typing_extensions")
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "site-packages",
               "pydoc_data", "__phello__", "unittest/test", "distutils/tests", "ctypes/test",
               "sqlite3/test", "tkinter/test"}
# Libraries the base initramfs (image.py: busybox, e2fsprogs, nbd-client) already carries.
GUEST_SCRIPT_ENV = ("PYTHONHOME=/pydisk/py PYTHONPATH=/src:/pydisk/site "
                    "LD_LIBRARY_PATH=/pydisk/libs:/src/libs:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu")


def _venv_site() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def _site_entries(site: Path) -> list[Path]:
    found = []
    for name in SITE_PACKAGES:
        hits = [p for p in site.iterdir() if p.name == name or re.fullmatch(rf"{re.escape(name)}(\..*)?\.(py|so)", p.name)]
        if not hits:
            raise ImageUnavailable(f"vm python disk: {name} is not installed in {site} (run make deps)")
        found.extend(hits)
    return found


def _inputs() -> list[tuple[Path, str]]:
    """(host path, path on the disk) for every top-level input."""
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    items = [(Path(os.path.realpath(sys.executable)), f"py/bin/{version}")]
    libdir = Path(sysconfig.get_config_var("LIBDIR") or prefix / "lib")
    ldlib = sysconfig.get_config_var("INSTSONAME")
    if ldlib and (libdir / ldlib).exists():
        items.append((libdir / ldlib, f"py/lib/{ldlib}"))
    items.append((prefix / "lib" / version, f"py/lib/{version}"))
    items += [(p, f"site/{p.name}") for p in _site_entries(_venv_site())]
    return items


def _digest(items: list[tuple[Path, str]]) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    for src, dst in items:
        h.update(f"{src} {dst}\n".encode())
        for root, dirs, files in os.walk(src) if src.is_dir() else [(str(src.parent), [], [src.name])]:
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(f"{root}/{f} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _ignore_stdlib(base: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(directory, base)
        skip = {n for n in names if (n if rel == "." else f"{rel}/{n}") in STDLIB_SKIP}
        skip |= {n for n in names if n == "__pycache__" or n.startswith("config-")}
        return skip
    return ignore


def build_python_disk(cache: Path) -> Path:
    """The cached disk image (raw ext4), built when its inputs changed."""
    if which_sbin("mke2fs") is None:
        raise ImageUnavailable("vm python disk: needs mke2fs (e2fsprogs)")
    items = _inputs()
    image = cache / f"pydisk-{_digest(items)}.img"
    with open(cache / ".pydisk.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not image.exists():
            _build(items, cache, image)
    return image


def _build(items: list[tuple[Path, str]], cache: Path, image: Path) -> None:
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pydisk-") as tmp:
        stage = Path(tmp) / "root"
        for src, dst in items:
            target = stage / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, symlinks=False, ignore=_ignore_stdlib(src))
            else:
                shutil.copy2(src, target)
        libs = set()
        for so in [stage / "py/bin" / items[0][1].rsplit("/", 1)[1], *stage.rglob("*.so"), *stage.rglob("*.so.*")]:
            if so.is_file():
                libs.update(shared_libraries(str(so)))
        (stage / "libs").mkdir()
        for lib in sorted(libs):
            name = os.path.basename(lib)
            if "ld-linux" in name or name.startswith("libc.so") or "/.pydisk-" in lib:
                continue
            shutil.copy2(lib, stage / "libs" / name)
        proc = _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-x", r"/(test|tests)/",
                     str(stage / "py"), str(stage / "site")], timeout=600)
        if proc.returncode not in (0, 1):   # 1: some file did not compile (py2 leftovers); harmless
            raise ImageUnavailable(f"vm python disk: compileall failed: {_last_line(proc)}")
        size_kib = sum(f.stat().st_size for f in stage.rglob("*") if f.is_file()) // 1024
        size_kib = size_kib * 5 // 4 + 32 * 1024
        part = image.with_suffix(".tmp")
        proc = _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "pydisk", "-d", str(stage), str(part),
                     f"{size_kib}k"], timeout=300)
        if proc.returncode != 0:
            part.unlink(missing_ok=True)
            raise ImageUnavailable(f"vm python disk: mke2fs -d failed: {_last_line(proc)}")
        part.rename(image)
    for old in cache.glob("pydisk-*.img"):
        if old != image:
            old.unlink(missing_ok=True)


def main() -> int:
    from tests.e2e.vm.image import cache_dir
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        image = build_python_disk(cache)
    except ImageUnavailable as e:
        print(f"vm python disk: unavailable: {e}", file=sys.stderr)
        return 77
    print(f"pydisk  {image} ({image.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
