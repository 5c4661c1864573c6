# SPDX-License-Identifier: GPL-2.0-or-later
"""Online resize of a replicated resource (drbdadm resize), agreed between the two nodes.

Owns `ResizeControl` (one per runtime) and `agree_size`, the pure decision. Both backing disks
have grown (truncate, lvextend, losetup -c); then, on either node, while Connected:

    replicactl resize r0 [--size S] [--assume-clean]
    A ── Sizes(size=S or 0, max=A's largest) ──────────────► B   agree_size(); B resizes itself
    A ◄── Sizes(REPLY, size=agreed, max=B's) or (REPLY, 0, reason) ─┘ (metadata moved, C grown)
    A resizes itself to the same size, then
    A ── Sizes(DONE, size=agreed) ─────────────────────────► B
    grown, without --assume-clean: both marked the new area out of sync; the Primary (A when
    neither or both are) becomes SyncSource of a bitmap resync: the new area is all it sends

The agreed size is the smaller of the two nodes' largest (DRBD: min of the backing devices),
or --size. Without --size a smaller result is refused ("Implicit shrink not allowed", DRBD's
words); a --size larger than either disk holds is refused ("Low.dev. smaller than requested
DRBD-dev. size."). With --size a shrink is done as asked: the data past the new end is no longer
part of the device (shrink the filesystem first, as with DRBD).

Each node: replica.disk.ResourceDisk.resize (the metadata's crash-safe move, then C), then the
NBD export announces the new size to new clients; the block device (/dev/replica/RES) follows
where it can (FUSE+loop: LOOP_SET_CAPACITY); a kernel NBD device keeps its size until it is
made again (secondary, primary), and status says so.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from replica.errors import ReplicaError
from replica.protocol.repl_control import Sizes
from replica.protocol.repl_wire import SizesFlag
from replica.states import ReplState, Role

if TYPE_CHECKING:
    from replica.resource import ResourceRuntime

log = logging.getLogger("replicad.resource")

BLOCK = 4096
REPLY_TIMEOUT_S = 60.0
IMPLICIT_SHRINK = "Implicit shrink not allowed. See kernel log for details."
TOO_SMALL = "Low.dev. smaller than requested DRBD-dev. size."


def agree_size(current: int, local_max: int, peer_max: int, requested: int | None) -> int | str:
    """The size both nodes take, or the refusal (DRBD's sentence plus the values)."""
    limit = min(local_max, peer_max) // BLOCK * BLOCK
    if requested:
        if requested > limit:
            return f"{TOO_SMALL} (asked {requested} bytes, the disks hold {limit})"
        return requested // BLOCK * BLOCK
    if limit < current:
        return f"{IMPLICIT_SHRINK} (the disks hold {limit} bytes, the device has {current})"
    return limit


class ResizeControl:
    def __init__(self, rt: ResourceRuntime):
        self.rt = rt
        self.name = rt.name
        self._waiting: threading.Event | None = None
        self._result: str | None = None          # None: done; else why it failed
        self._assume_clean = False
        self.device_size_stale = False            # the block device still has the old size

    # --- the node that ran `resize` --------------------------------------------------------------

    def start(self, requested: int | None, assume_clean: bool) -> threading.Event:
        """Under the runtime's lock: check, ask the peer; the returned event is set once done
        (result() then says how). Raises ReplicaError for what is refused here already."""
        rt = self.rt
        s = rt.state
        if rt.resource.standalone or not rt.disk.has_md:
            raise ReplicaError(f"{self.name}: resize: needs an attached, replicated resource")
        if not s.is_connected or s.repl is not ReplState.Established:
            raise ReplicaError(f"{self.name}: resize: needs a Connected peer with no resync "
                               f"running (both nodes agree on the size), have {s.cstate_text()}")
        if self._waiting is not None:
            raise ReplicaError(f"{self.name}: resize: a resize is already under way")
        if requested is not None and requested % BLOCK:
            raise ReplicaError(f"{self.name}: resize: --size must be a multiple of 4 KiB, got "
                               f"{requested} bytes")
        self._waiting, self._result = threading.Event(), "no answer from the peer"
        self._assume_clean = assume_clean
        flags = SizesFlag.ASSUME_CLEAN if assume_clean else SizesFlag(0)
        rt.conn.send_control(Sizes(requested or 0, rt.disk.max_size(), flags))
        log.info("%s: resize: asking %s (--size %s%s)", self.name, rt.conn.peer_text,
                 requested or "the largest both hold", ", --assume-clean" if assume_clean else "")
        return self._waiting

    def result(self) -> None:
        """After start()'s event (or its timeout): raise ReplicaError unless the resize is done."""
        why, self._result, self._waiting = self._result, None, None
        if why is not None:
            raise ReplicaError(f"{self.name}: resize: {why}")

    def _finish(self, why: str | None) -> None:
        self._result = why
        if self._waiting is not None:
            self._waiting.set()

    # --- control messages (monitor thread, under the runtime's lock) -------------------------

    def on_sizes(self, msg: Sizes) -> None:
        if SizesFlag.DONE in msg.flags:
            self._peer_done(msg)
        elif SizesFlag.REPLY in msg.flags:
            self._on_reply(msg)
        else:
            self._on_request(msg)

    def _on_request(self, msg: Sizes) -> None:
        """The peer ran `resize`: agree, resize here, answer."""
        rt = self.rt
        assume_clean = SizesFlag.ASSUME_CLEAN in msg.flags
        verdict: int | str
        try:
            verdict = agree_size(rt.disk.size, rt.disk.max_size(), msg.max_size, msg.size or None)
            if isinstance(verdict, int) and verdict != rt.disk.size:
                self._apply(verdict, assume_clean)
        except ReplicaError as exc:
            verdict = str(exc)
        if isinstance(verdict, str):
            log.error("%s: resize asked by the peer: refused: %s", self.name, verdict)
            rt.conn.send_control(Sizes(0, rt.disk.max_size(), SizesFlag.REPLY, verdict))
            return
        rt.conn.send_control(Sizes(verdict, rt.disk.max_size(), msg.flags | SizesFlag.REPLY))

    def _on_reply(self, msg: Sizes) -> None:
        rt = self.rt
        if self._waiting is None:
            return
        if not msg.size:
            self._finish(f"the peer refused: {msg.reason}")
            return
        try:
            if msg.size != rt.disk.size:
                if msg.size > rt.disk.max_size():
                    raise ReplicaError(f"the peer took {msg.size} bytes, this disk holds "
                                       f"{rt.disk.max_size()}")
                grew = msg.size > rt.disk.size
                self._apply(msg.size, self._assume_clean)
            else:
                grew = False
        except ReplicaError as exc:
            # the peer has the new size and we do not: the next handshake would find the
            # sizes differ; say so loudly (the link stays: nothing is written past our end)
            log.error("%s: resize: the peer resized to %d bytes but this node could not: %s",
                      self.name, msg.size, exc)
            self._finish(f"the peer resized to {msg.size} bytes but this node could not: {exc}")
            return
        rt.conn.send_control(Sizes(msg.size, rt.disk.max_size(), msg.flags | SizesFlag.DONE))
        if grew and not self._assume_clean and self._is_source(initiator=True):
            rt.sync.begin_source(full=False)
        self._finish(None)

    def _peer_done(self, msg: Sizes) -> None:
        grew_here = SizesFlag.ASSUME_CLEAN not in msg.flags and self.rt.disk.out_of_sync_bytes()
        if grew_here and self._is_source(initiator=False):
            self.rt.sync.begin_source(full=False)

    def _is_source(self, initiator: bool) -> bool:
        """Who resyncs the new area: the Primary; the node that ran resize if neither (or both)
        is."""
        s = self.rt.state
        me, peer = s.role is Role.Primary, s.peer_role is Role.Primary
        return me and not peer or (me == peer and initiator)

    def _apply(self, size: int, assume_clean: bool) -> None:
        rt = self.rt
        rt.disk.resize(size, mark_new=not assume_clean)
        rt.frontend.set_export(rt.export_info())
        if rt.device is not None and rt.device.exists and not rt.device.resize(size):
            self.device_size_stale = True
            log.warning("%s: resize: the block device %s keeps its old size until it is made "
                        "again (secondary, then primary); the NBD export has the new size",
                        self.name, rt.device.path)

    def on_link_lost(self) -> None:
        if self._waiting is not None:
            self._finish("the connection was lost")

    def status(self) -> dict[str, object] | None:
        return {"device_size_stale": True} if self.device_size_stale else None
