# SPDX-License-Identifier: GPL-2.0-or-later
"""In-memory writer for the "newc" cpio format that the Linux kernel unpacks as an initramfs.

Owns the archive byte layout only (linux Documentation/driver-api/early-userspace/
buffer-format.rst): a 110-byte ASCII header per entry ("070701" + 13 eight-digit hex fields),
the NUL-terminated name padded to 4 bytes, the data padded to 4 bytes, and a final
"TRAILER!!!" entry. Entries are owned by root with mtime 0, so equal inputs give equal bytes.
Parent directories are emitted before their children because the kernel's unpacker does not
create them.
"""
import stat

NEWC_MAGIC = b"070701"


class CpioWriter:
    """Collects entries; `getvalue()` returns the finished, uncompressed archive."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._paths: set[str] = set()
        self._ino = 1
        self._closed = False

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        path = self._clean(path)
        if path in self._paths:
            return
        self._ensure_parents(path)
        self._entry(path, stat.S_IFDIR | mode, b"", nlink=2)

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._clean(path)
        self._ensure_parents(path)
        self._entry(path, stat.S_IFREG | mode, data)

    def add_symlink(self, path: str, target: str) -> None:
        path = self._clean(path)
        self._ensure_parents(path)
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = self._clean(path)
        self._ensure_parents(path)
        self._entry(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def has(self, path: str) -> bool:
        return self._clean(path) in self._paths

    def getvalue(self) -> bytes:
        if not self._closed:
            self._header("TRAILER!!!", 0, 0, 0, (0, 0), ino=0)
            self._closed = True
        return b"".join(self._parts)

    def _clean(self, path: str) -> str:
        if self._closed:
            raise ValueError(f"cpio: archive already finished: cannot add {path!r}")
        path = path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"cpio: invalid entry name: {path!r}")
        return path

    def _ensure_parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self._paths:
                self._entry(parent, stat.S_IFDIR | 0o755, b"", nlink=2)

    def _entry(self, path: str, mode: int, data: bytes, nlink: int = 1, rdev=(0, 0)) -> None:
        if path in self._paths:
            raise ValueError(f"cpio: duplicate entry: {path!r}")
        self._paths.add(path)
        self._header(path, mode, len(data), nlink, rdev, ino=self._ino)
        self._ino += 1
        self._parts.append(data + _pad(len(data)))

    def _header(self, name: str, mode: int, size: int, nlink: int, rdev, ino: int) -> None:
        raw_name = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(raw_name), 0)
        header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields) + raw_name
        self._parts.append(header + _pad(len(header)))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)
