# SPDX-License-Identifier: GPL-2.0-or-later
"""How a resource's data reaches its users: the frontend interface and the NBD frontend.

Owns `Frontend`, what every way of exposing a resource implements (the NBD export server now,
a FUSE file for a loop device next), and `NbdFrontend`. A frontend serves the engine it is
started with; the runtime (replica.resource) tells it the export's size, flags and read-only
state, and asks how many users hold the device open (`holders`: `down` of a Primary refuses
while there are any, DRBD's "Device is held open by someone")::

    start(engine, export) ──► serving ──set_export(export)──► (role changed: read-only or not)
                                 │
                               stop() ──► every connection ended, endpoint removed
"""
from typing import Protocol

from replica.config import Endpoint
from replica.mirror import Engine
from replica.nbd_server import ExportServer
from replica.protocol.nbd import ExportInfo


class Frontend(Protocol):
    def start(self, engine: Engine, export: ExportInfo) -> None: ...

    def stop(self) -> None: ...

    def set_export(self, export: ExportInfo) -> None: ...

    def holders(self) -> int: ...

    @property
    def is_serving(self) -> bool: ...

    @property
    def uri(self) -> str: ...


class NbdFrontend:
    """The resource's NBD export (replica.nbd_server) on its configured endpoint."""

    def __init__(self, name: str, endpoint: Endpoint):
        self.name = name
        self.endpoint = endpoint
        self._server: ExportServer | None = None
        self._engine: Engine | None = None

    @property
    def uri(self) -> str:
        return self.endpoint.nbd_uri(self.name)

    @property
    def is_serving(self) -> bool:
        return self._server is not None

    def start(self, engine: Engine, export: ExportInfo) -> None:
        self._server = ExportServer(self.name, self.endpoint, engine, export)
        self._engine = engine

    def stop(self) -> None:
        server, self._server, self._engine = self._server, None, None
        if server is not None:
            server.stop()

    def set_export(self, export: ExportInfo) -> None:
        if self._server is not None:
            self._server.export = export

    def holders(self) -> int:
        if self._engine is None:
            return 0
        return int(self._engine.stats().get("active_connections", 0))
