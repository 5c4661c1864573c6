# SPDX-License-Identifier: GPL-2.0-or-later
"""A backing-file directory that fails on command: a small tmpfs of the test's own.

    with FillableTmpfs(48 * MiB) as fs:     mount -t tmpfs -o size=48m on a fresh /tmp dir
        fs.fill(leave=0)                    a filler file takes the free space: every write to
                                            a block not yet allocated fails with ENOSPC (a
                                            write larger than `leave` reaches the disk in part)
        fs.repair()                         the filler goes: writes work again
    (exit: umount, lazily if something still holds it, and rmdir, even after a failure)

Writes fail at once (pwrite/splice return ENOSPC), unlike a device-mapper error target under a
loop device, whose buffered writes fail only at writeback.
"""
from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path


class FillableTmpfs:
    def __init__(self, size: int):
        self.size = size
        self.path: Path | None = None
        self._mounted = False

    def __enter__(self) -> FillableTmpfs:
        self.path = Path(tempfile.mkdtemp(prefix="rplfail", dir="/tmp"))
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs",
                            str(self.path)], check=True, capture_output=True, timeout=30)
            self._mounted = True
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Take all free space, then give `leave` bytes back."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 4096):
                buf = b"\xee" * chunk
                while True:
                    try:
                        os.write(fd, buf)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)

    def repair(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.path is None:
            return
        if self._mounted:
            r = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self._mounted = False
        try:
            self.path.rmdir()
        except OSError:
            pass
        self.path = None
