# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's control socket: RUN_DIR/hbd.sock, one JSON request line in, one JSON answer line out.

The server side of hbctl (hbd.ctl).  Requests and answers::

    {"cmd": "status", "journal": N}   -> {"ok": true, "node", "pid", "membership", "groups", "journal"}
    {"cmd": "nodestatus", "node": X}  -> {"ok": true, "status": "up|active|dead|init|..."}
    {"cmd": "rscstatus"}              -> {"ok": true, "rscstatus": "none|local|foreign|all|transition"}
    {"cmd": "standby"|"takeover", "which": "all|local|foreign"}  -> {"ok": true} or
                                         {"ok": false, "error": "<the refusal sentence>"}

Standby and takeover requests are journaled (accepted or refused).  The socket
is mode 0600: only root may move resources.
"""
from __future__ import annotations

import asyncio
import json
import os
import time

from replica.errors import ReplicaError, StateChangeRefused

from hbd.journal import read_journal

SOCKET_NAME = "hbd.sock"


class ControlSocket:
    """Serves hbctl for one Daemon (its membership `m`, groups `g`, `journal`, `kick()`)."""

    def __init__(self, daemon, run_dir: str):
        self.daemon = daemon
        self.path = os.path.join(run_dir, SOCKET_NAME)
        self._server: asyncio.AbstractServer | None = None

    async def open(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._server = await asyncio.start_unix_server(self._on_client, path=self.path)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _on_client(self, reader, writer) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            try:
                req = json.loads(line)
                resp = self.handle_request(req if isinstance(req, dict) else {})
            except (ValueError, TypeError):
                resp = {"ok": False, "error": "control: bad request: expected one JSON object per line"}
            writer.write(json.dumps(resp, default=str).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def handle_request(self, req: dict) -> dict:
        d = self.daemon
        cmd = req.get("cmd")
        now = time.monotonic()
        if cmd == "status":
            return {"ok": True, "node": d.node, "pid": os.getpid(), "membership": d.m.snapshot(),
                    "groups": d.g.snapshot(),
                    "journal": read_journal(d.journal.path, limit=int(req.get("journal", 15)))}
        if cmd == "nodestatus":
            try:
                return {"ok": True, "status": d.m.node_status(str(req.get("node", "")))}
            except ReplicaError as e:
                return {"ok": False, "error": f"nodestatus: {e}"}
        if cmd == "rscstatus":
            return {"ok": True, "rscstatus": d.g.rscstatus()}
        if cmd in ("standby", "takeover"):
            which = str(req.get("which", "all"))
            try:
                (d.g.request_standby if cmd == "standby" else d.g.request_takeover)(which, now)
            except StateChangeRefused as e:
                d.journal.record("request", what=cmd, which=which, result="refused", detail=str(e))
                return {"ok": False, "error": str(e)}
            d.journal.record("request", what=cmd, which=which, result="ok")
            d.kick()
            return {"ok": True}
        return {"ok": False, "error": f"control: unknown command {cmd!r}"}

