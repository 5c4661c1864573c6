# SPDX-License-Identifier: GPL-2.0-or-later
"""One configured resource at run time on this node: its backing disk, engine and NBD export.

    down ──up()──► up (disk open and locked, engine running, export listening) ──down()──► down

A resource with a single `on` section is standalone: it comes up Primary with an UpToDate disk,
since there is no peer whose data could be newer.
"""
import fcntl
import logging
import os

from replica.config import Endpoint, Resource
from replica.errors import ReplicaError
from replica.mirror import Engine
from replica.nbd_server import ExportServer
from replica.protocol.nbd import ExportInfo, transmission_flags_for

log = logging.getLogger("replicad.resource")


class ResourceRuntime:
    def __init__(self, resource: Resource, node: str, default_export_path: str):
        self.resource = resource
        self.name = resource.name
        self.host = resource.host(node)
        self.endpoint = self.host.export or Endpoint(kind="unix", path=default_export_path,
                                                     host=None, port=None)
        self.fd: int | None = None
        self.engine: Engine | None = None
        self.server: ExportServer | None = None
        self.size = 0

    @property
    def is_up(self) -> bool:
        return self.server is not None

    @property
    def role(self) -> str:
        return "Primary" if self.is_up else "Unknown"

    def up(self) -> None:
        if self.is_up:
            return
        self.fd = self._open_disk()
        try:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            self.engine = Engine(self.fd, self.size)
            flags = transmission_flags_for(read_only=False, can_multi_conn=True)
            export = ExportInfo(name=self.name, size=self.size, transmission_flags=flags,
                                description=f"replica resource {self.name} on {self.host.name}")
            self.server = ExportServer(self.name, self.endpoint, self.engine, export)
        except BaseException:
            self._release()
            raise
        log.info("%s: up: disk %s (%d bytes) exported at %s", self.name, self.host.disk, self.size,
                 self.endpoint.nbd_uri(self.name))

    def down(self) -> None:
        if not self.is_up:
            return
        self.server.stop()
        self.server = None
        if self.engine is not None:
            self.engine.flush()
        self._release()
        log.info("%s: down", self.name)

    def _release(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open_disk(self) -> int:
        path = self.host.disk
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise ReplicaError(f"{self.name}: cannot open disk '{path}': {exc.strerror}") from exc
        try:
            # One daemon per disk: a second `up` elsewhere on this machine must not share it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ReplicaError(f"{self.name}: disk '{path}' is in use by another process") from None
        return fd

    def status(self) -> dict:
        return {
            "name": self.name,
            "node": self.host.name,
            "up": self.is_up,
            "role": self.role,
            "disk": self.host.disk,
            "disk_state": "UpToDate" if self.is_up else "Diskless",
            "connection": "StandAlone" if self.resource.standalone else "Connecting",
            "size": self.size,
            "nbd_uri": self.endpoint.nbd_uri(self.name),
            "stats": self.engine.stats() if self.engine else None,
        }
