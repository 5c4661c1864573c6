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

The NBD frontend's `start` is where the export's TLS settings (config.ExportTls) take effect: a
TCP export that would serve clear text to the network is refused (config.check_export_security,
FILE:LINE), and the certificates or PSK file are loaded into the server's TLS context, so a
missing or unreadable file fails `up` with the export's FILE:LINE too.
"""
from typing import Protocol

from replica.config import Endpoint, ExportTls, check_export_security
from replica.errors import ConfigError
from replica.mirror import Engine, TlsContext, TlsError
from replica.nbd_server import ExportServer, ExportTlsSetup
from replica.protocol.nbd import ExportInfo, TlsMode


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

    def __init__(self, name: str, endpoint: Endpoint, tls: ExportTls | None = None,
                 node: str = ""):
        self.name = name
        self.endpoint = endpoint
        self.tls = tls or ExportTls()
        self.node = node
        self._server: ExportServer | None = None
        self._engine: Engine | None = None

    @property
    def uri(self) -> str:
        return self.endpoint.nbd_uri(self.name, tls=self.tls.enabled)

    @property
    def is_serving(self) -> bool:
        return self._server is not None

    def start(self, engine: Engine, export: ExportInfo) -> None:
        check_export_security(self.name, self.node, self.endpoint, self.tls)
        self._server = ExportServer(self.name, self.endpoint, engine, export, self._tls_setup())
        self._engine = engine

    def _tls_setup(self) -> ExportTlsSetup:
        """The server TLS context for the configured credentials (ConfigError naming the export
        statement when they cannot be loaded)."""
        tls = self.tls
        if not tls.enabled:
            return ExportTlsSetup()
        try:
            if tls.psk:
                context = TlsContext(server=True, psk_file=tls.psk)
            else:
                context = TlsContext(server=True, certfile=tls.server_cert, keyfile=tls.server_key,
                                     cafile=tls.ca_cert if tls.verify_peer else None,
                                     verify_peer=tls.verify_peer)
        except TlsError as exc:
            raise ConfigError(f"{tls.where}: resource '{self.name}': on '{self.node}': export TLS: "
                              f"{str(exc).removeprefix('tls: ')}") from None
        return ExportTlsSetup(TlsMode(tls.mode), context)

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
