# SPDX-License-Identifier: GPL-2.0-or-later
"""Kernel NBD attached by replicad itself: /dev/nbdN through the kernel's "nbd" generic-netlink family.

No `nbd-client` is involved and no handshake happens: the kernel's NBD driver is told the size,
block size and transmission flags directly, and is handed already-connected sockets on which it
starts sending NBD requests at once. Each socket's other end is served by the C frontend
(`Engine.serve_nbd`, the NBD transmission phase, simple replies only: the kernel never asks for
structured replies), so a request from the block device goes through the request layer (range
checks, activity log, mirroring per protocol A/B/C, completion) exactly as a request from any
NBD client does, never through Python.

    KernelNbdBackend.attach(engine, size)
        N x socketpair(AF_UNIX, SOCK_STREAM) ── our end ──► thread: engine.serve_nbd(fd)
                                              └ kernel end ─► NBD_CMD_CONNECT {SIZE_BYTES,
            BLOCK_SIZE_BYTES, SERVER_FLAGS, TIMEOUT, DEAD_CONN_TIMEOUT, BACKEND_IDENTIFIER,
            SOCKETS: [SOCK_ITEM: {SOCK_FD}...]}   (no INDEX: the kernel picks a free /dev/nbdN)
        ◄── reply {INDEX: N} + ack                 -> "/dev/nbdN"
    detach: NBD_CMD_DISCONNECT {INDEX}: the kernel sends NBD_CMD_DISC on every socket and shuts
        them down; serve_nbd returns (DISC or EOF) and the threads end.
    status: NBD_CMD_STATUS {INDEX} ◄── {DEVICE_LIST: [DEVICE_ITEM: {DEVICE_INDEX, DEVICE_CONNECTED}]}

The attributes are the kernel's uapi (include/uapi/linux/nbd-netlink.h); the kernel side is
drivers/block/nbd.c (nbd_genl_connect/disconnect/status). Messages are built and decoded with
pyroute2's generic-netlink message classes (`genlmsg`, `ctrlmsg`, nested `nla` maps). The socket
is a plain blocking AF_NETLINK socket with a receive timeout, not pyroute2's
GenericNetlinkSocket: that one drives its own asyncio loop with run_until_complete, which raises
"This event loop is already running" when called from replicad's event-loop thread, where
promotion and demotion run. Replies are checked attribute by attribute (every length, every
nested level) before pyroute2 decodes them, because pyroute2 turns a malformed attribute into
raw bytes silently; anything malformed is an NbdNetlinkError naming what is wrong.

Policy choices, all constructor keywords of KernelNbdBackend:
- connections=2: two sockets, served by two C threads; the kernel maps one hardware queue to
  each (CAN_MULTI_CONN is advertised, as on our TCP export: FLUSH covers every connection's
  completed writes because the request layer's flush is per device, not per connection).
- timeout_s=120: a request the engine has not answered in this long makes the kernel drop that
  socket. The engine has its own peer timeouts (ping-timeout, ko-count) and answers long before;
  the kernel's own default (30 s) could cut a connection during a slow protocol-C resync burst.
- dead_conn_timeout_s=5: once every socket is gone (replicad died), the kernel fails queued I/O
  after this long instead of holding it for a reconnect we never make.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, ctrlmsg, genlmsg, nla

from replica.errors import ReplicaError
from replica.protocol.nbd import transmission_flags_for

if TYPE_CHECKING:
    from replica.mirror import Engine, ServeResult

log = logging.getLogger(__name__)

NBD_GENL_FAMILY_NAME = "nbd"
NBD_GENL_VERSION = 1
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
NETLINK_GENERIC = 16
NLMSG_HDR = struct.Struct("=IHHII")      # length, type, flags, sequence, port id
GENL_HDR = struct.Struct("=BBH")         # cmd, version, reserved
NLA_HDR = struct.Struct("=HH")           # length, type (top bits: NESTED, NET_BYTEORDER)
NLA_TYPE_MASK = 0x3FFF

BLOCK_SIZE = 4096
NO_NBD_HINT = "the kernel has no NBD driver: run `modprobe nbd` (or use device-kind fuse)"
SYS_MODULE = "/sys/module/nbd"


class NbdCmd(IntEnum):
    CONNECT = 1
    DISCONNECT = 2
    RECONFIGURE = 3
    LINK_DEAD = 4
    STATUS = 5


class NbdAttr(IntEnum):
    INDEX = 1
    SIZE_BYTES = 2
    BLOCK_SIZE_BYTES = 3
    TIMEOUT = 4
    SERVER_FLAGS = 5
    CLIENT_FLAGS = 6
    SOCKETS = 7
    DEAD_CONN_TIMEOUT = 8
    DEVICE_LIST = 9
    BACKEND_IDENTIFIER = 10


class NbdClientFlag(IntFlag):
    DESTROY_ON_DISCONNECT = 1 << 0
    DISCONNECT_ON_CLOSE = 1 << 1


class nbd_msg(genlmsg):
    """The "nbd" family's messages (pyroute2 nla map in uapi order)."""
    prefix = "NBD_ATTR_"
    nla_map = (
        ("NBD_ATTR_UNSPEC", "none"),
        ("NBD_ATTR_INDEX", "uint32"),
        ("NBD_ATTR_SIZE_BYTES", "uint64"),
        ("NBD_ATTR_BLOCK_SIZE_BYTES", "uint64"),
        ("NBD_ATTR_TIMEOUT", "uint64"),
        ("NBD_ATTR_SERVER_FLAGS", "uint64"),
        ("NBD_ATTR_CLIENT_FLAGS", "uint64"),
        ("NBD_ATTR_SOCKETS", "sockets"),
        ("NBD_ATTR_DEAD_CONN_TIMEOUT", "uint64"),
        ("NBD_ATTR_DEVICE_LIST", "device_list"),
        ("NBD_ATTR_BACKEND_IDENTIFIER", "asciiz"),
    )

    class sockets(nla):
        nla_map = (("NBD_SOCK_ITEM_UNSPEC", "none"), ("NBD_SOCK_ITEM", "sock_item"))

        class sock_item(nla):
            nla_map = (("NBD_SOCK_UNSPEC", "none"), ("NBD_SOCK_FD", "uint32"))

    class device_list(nla):
        nla_map = (("NBD_DEVICE_ITEM_UNSPEC", "none"), ("NBD_DEVICE_ITEM", "device_item"))

        class device_item(nla):
            nla_map = (("NBD_DEVICE_UNSPEC", "none"), ("NBD_DEVICE_INDEX", "uint32"),
                       ("NBD_DEVICE_CONNECTED", "uint8"))


class NbdNetlinkError(ReplicaError):
    """A request to the kernel's NBD driver failed; errno is the kernel's (0 if none)."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class NbdUnavailable(NbdNetlinkError):
    """This kernel cannot provide /dev/nbdN (no driver, no generic-netlink family)."""


# --- building requests -------------------------------------------------------------------------

def _finish(msg: genlmsg, msg_type: int, seq: int, cmd: int, version: int) -> bytes:
    msg["cmd"] = cmd
    msg["version"] = version
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.encode()
    return bytes(msg.data)


def getfamily_request(seq: int, name: str = NBD_GENL_FAMILY_NAME) -> bytes:
    msg = ctrlmsg()
    msg["attrs"] = [("CTRL_ATTR_FAMILY_NAME", name)]
    return _finish(msg, GENL_ID_CTRL, seq, CTRL_CMD_GETFAMILY, 1)


def connect_request(family: int, seq: int, *, size: int, socket_fds: list[int], server_flags: int,
                    block_size: int = BLOCK_SIZE, timeout_s: int = 120, dead_conn_timeout_s: int = 5,
                    backend: str | None = None, index: int | None = None) -> bytes:
    """NBD_CMD_CONNECT; without `index` the kernel picks a free device (or adds one)."""
    if size <= 0 or size % block_size:
        raise ValueError(f"nbd: connect: size {size} is not a positive multiple of {block_size}")
    if not socket_fds:
        raise ValueError("nbd: connect: needs at least one socket")
    attrs: list[tuple[str, Any]] = []
    if index is not None:
        attrs.append(("NBD_ATTR_INDEX", index))
    attrs += [("NBD_ATTR_SIZE_BYTES", size),
              ("NBD_ATTR_BLOCK_SIZE_BYTES", block_size),
              ("NBD_ATTR_SERVER_FLAGS", server_flags),
              ("NBD_ATTR_TIMEOUT", timeout_s),
              ("NBD_ATTR_DEAD_CONN_TIMEOUT", dead_conn_timeout_s),
              ("NBD_ATTR_SOCKETS", {"attrs": [("NBD_SOCK_ITEM", {"attrs": [("NBD_SOCK_FD", fd)]})
                                              for fd in socket_fds]})]
    if backend:
        attrs.append(("NBD_ATTR_BACKEND_IDENTIFIER", backend))
    msg = nbd_msg()
    msg["attrs"] = attrs
    return _finish(msg, family, seq, NbdCmd.CONNECT, NBD_GENL_VERSION)


def disconnect_request(family: int, seq: int, index: int) -> bytes:
    msg = nbd_msg()
    msg["attrs"] = [("NBD_ATTR_INDEX", index)]
    return _finish(msg, family, seq, NbdCmd.DISCONNECT, NBD_GENL_VERSION)


def status_request(family: int, seq: int, index: int | None = None) -> bytes:
    """NBD_CMD_STATUS for one device, or every device without `index`."""
    msg = nbd_msg()
    msg["attrs"] = [] if index is None else [("NBD_ATTR_INDEX", index)]
    return _finish(msg, family, seq, NbdCmd.STATUS, NBD_GENL_VERSION)


# --- decoding replies --------------------------------------------------------------------------

# What each attribute must look like: a payload size, or a nested schema. Attributes not named
# are skipped (newer kernels may add some) once their length is checked.
_Schema = dict[int, "int | _Schema"]
_DEVICE_ITEM: _Schema = {1: 4, 2: 1}                      # NBD_DEVICE_INDEX u32, _CONNECTED u8
_NBD_REPLY: _Schema = {NbdAttr.INDEX: 4, NbdAttr.DEVICE_LIST: {1: _DEVICE_ITEM}}
_CTRL_REPLY: _Schema = {CTRL_ATTR_FAMILY_ID: 2}


@dataclass(frozen=True, slots=True)
class NlMessage:
    """One netlink message of a reply: type, sequence number, and either an errno (NLMSG_ERROR:
    0 is the ack) or a decoded generic-netlink body."""
    type: int
    seq: int
    error: int | None = None
    body: genlmsg | None = None


def _check_attrs(data: bytes, start: int, end: int, schema: _Schema, where: str) -> None:
    """Walk the attributes in data[start:end]; raise NbdNetlinkError on the first malformed one."""
    off = start
    while off < end:
        if end - off < NLA_HDR.size:
            raise NbdNetlinkError(f"nbd: malformed reply: {where}: {end - off} stray bytes after the attributes")
        length, kind = NLA_HDR.unpack_from(data, off)
        kind &= NLA_TYPE_MASK
        if length < NLA_HDR.size or off + length > end:
            raise NbdNetlinkError(f"nbd: malformed reply: {where}: attribute {kind} claims {length} bytes, "
                                  f"{end - off} left")
        want = schema.get(kind)
        payload = length - NLA_HDR.size
        if isinstance(want, int) and payload != want:
            raise NbdNetlinkError(f"nbd: malformed reply: {where}: attribute {kind} has {payload} bytes, "
                                  f"expected {want}")
        if isinstance(want, dict):
            _check_attrs(data, off + NLA_HDR.size, off + length, want, f"{where}/{kind}")
        off += (length + 3) & ~3


def decode_replies(data: bytes, family: int) -> list[NlMessage]:
    """Split one datagram from the kernel into messages, each checked before it is decoded."""
    out = []
    off = 0
    while off < len(data):
        if len(data) - off < NLMSG_HDR.size:
            raise NbdNetlinkError(f"nbd: malformed reply: {len(data) - off} bytes left, too short for a header")
        length, kind, _flags, seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if length < NLMSG_HDR.size or off + length > len(data):
            raise NbdNetlinkError(f"nbd: malformed reply: message of {length} bytes at offset {off} "
                                  f"in {len(data)}")
        body_at = off + NLMSG_HDR.size
        if kind == NLMSG_ERROR:
            if length < NLMSG_HDR.size + 4:
                raise NbdNetlinkError(f"nbd: malformed reply: error message of {length} bytes")
            (err,) = struct.unpack_from("=i", data, body_at)
            if err > 0:
                raise NbdNetlinkError(f"nbd: malformed reply: error code {err} is positive")
            out.append(NlMessage(kind, seq, error=-err))
        elif kind == NLMSG_DONE:
            out.append(NlMessage(kind, seq))
        elif kind in (family, GENL_ID_CTRL):
            if length < NLMSG_HDR.size + GENL_HDR.size:
                raise NbdNetlinkError(f"nbd: malformed reply: generic netlink message of {length} bytes")
            schema = _CTRL_REPLY if kind == GENL_ID_CTRL else _NBD_REPLY
            _check_attrs(data, body_at + GENL_HDR.size, off + length, schema, "attributes")
            msg = (ctrlmsg if kind == GENL_ID_CTRL else nbd_msg)(data[off:off + length])
            try:
                msg.decode()
            except Exception as e:   # pyroute2 raises anything from struct.error to KeyError
                raise NbdNetlinkError(f"nbd: malformed reply: cannot decode: {e!r}") from None
            out.append(NlMessage(kind, seq, body=msg))
        else:
            raise NbdNetlinkError(f"nbd: malformed reply: unexpected message type {kind}")
        off += (length + 3) & ~3
    return out


def connect_index(replies: list[NlMessage]) -> int:
    """The device the kernel chose, from the reply to NBD_CMD_CONNECT."""
    for m in replies:
        if m.body is not None and m.body["cmd"] == NbdCmd.CONNECT:
            index = m.body.get_attr("NBD_ATTR_INDEX")
            if isinstance(index, int):
                return index
    raise NbdNetlinkError("nbd: connect: the kernel's reply names no device index")


def status_devices(replies: list[NlMessage]) -> dict[int, bool]:
    """{index: connected} from the reply to NBD_CMD_STATUS."""
    devices: dict[int, bool] = {}
    for m in replies:
        if m.body is None or m.body["cmd"] != NbdCmd.STATUS:
            continue
        for lst in m.body.get_attrs("NBD_ATTR_DEVICE_LIST"):
            for item in lst.get_attrs("NBD_DEVICE_ITEM"):
                index = item.get_attr("NBD_DEVICE_INDEX")
                connected = item.get_attr("NBD_DEVICE_CONNECTED")
                if not isinstance(index, int) or not isinstance(connected, int):
                    raise NbdNetlinkError(f"nbd: status: device item without index or connected: {item}")
                devices[index] = bool(connected)
    return devices


def family_id(replies: list[NlMessage]) -> int:
    for m in replies:
        if m.body is not None and m.type == GENL_ID_CTRL:
            fid = m.body.get_attr("CTRL_ATTR_FAMILY_ID")
            if isinstance(fid, int) and fid > GENL_ID_CTRL:
                return fid
    raise NbdNetlinkError("nbd: generic netlink: the controller's reply names no family id")


# --- the socket --------------------------------------------------------------------------------

_ERRNO_HINTS = {
    errno.EPERM: "needs CAP_SYS_ADMIN (run replicad as root)",
    errno.EBUSY: "the device is already in use",
    errno.EINVAL: "the kernel refused the request (dmesg says why, in lines starting with 'nbd')",
}


class NbdGenl:
    """One request at a time to the kernel's "nbd" family; every wait is bounded by timeout_s."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._seq = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(timeout_s)
            self.timeout_s = timeout_s
            self.family = GENL_ID_CTRL
            try:
                self.family = family_id(self._request("resolve family", lambda seq: getfamily_request(seq)))
            except NbdNetlinkError as e:
                if e.errno == errno.ENOENT:
                    raise NbdUnavailable(f"nbd: no generic netlink family {NBD_GENL_FAMILY_NAME!r}: "
                                         f"{NO_NBD_HINT}", e.errno) from None
                raise
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NbdGenl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, what: str, build) -> list[NlMessage]:
        self._seq += 1
        seq = self._seq
        try:
            self._sock.send(build(seq))
        except OSError as e:
            raise NbdNetlinkError(f"nbd: {what}: send: {e.strerror}", e.errno or 0) from None
        got: list[NlMessage] = []
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise NbdNetlinkError(f"nbd: {what}: no answer from the kernel in {self.timeout_s:g} s",
                                      errno.ETIMEDOUT) from None
            except OSError as e:
                raise NbdNetlinkError(f"nbd: {what}: receive: {e.strerror}", e.errno or 0) from None
            for m in decode_replies(data, self.family):
                if m.seq != seq:
                    continue          # a late answer to an earlier request that timed out
                if m.type == NLMSG_ERROR:
                    if m.error:
                        hint = _ERRNO_HINTS.get(m.error or 0)
                        raise NbdNetlinkError(f"nbd: {what}: {os.strerror(m.error or 0)}"
                                              + (f" ({hint})" if hint else ""), m.error or 0)
                    return got
                if m.type == NLMSG_DONE:
                    return got
                got.append(m)
            if time.monotonic() > deadline:
                raise NbdNetlinkError(f"nbd: {what}: no acknowledgement from the kernel in "
                                      f"{self.timeout_s:g} s", errno.ETIMEDOUT)

    def connect(self, **kw: Any) -> int:
        return connect_index(self._request("connect", lambda seq: connect_request(self.family, seq, **kw)))

    def disconnect(self, index: int) -> None:
        self._request(f"disconnect /dev/nbd{index}", lambda seq: disconnect_request(self.family, seq, index))

    def status(self, index: int | None = None) -> dict[int, bool]:
        what = "status" if index is None else f"status /dev/nbd{index}"
        return status_devices(self._request(what, lambda seq: status_request(self.family, seq, index)))


def device_connected(index: int, timeout_s: float = 5.0) -> bool | None:
    """NBD_CMD_STATUS for /dev/nbd<index>: True while configured (connected, or still held open
    after a disconnect), False when free, None when the kernel has no such device or no NBD."""
    try:
        with NbdGenl(timeout_s) as nl:
            return nl.status(index).get(index)
    except NbdUnavailable:
        return None


def disconnect_device(index: int, timeout_s: float = 5.0) -> None:
    with NbdGenl(timeout_s) as nl:
        nl.disconnect(index)


# --- the block-device backend ------------------------------------------------------------------

def _sysfs(index: int, name: str) -> str | None:
    try:
        with open(f"/sys/block/nbd{index}/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


class KernelNbdBackend:
    """replicad's resource as /dev/nbdN, served by the C frontend over socketpairs."""

    kind = "nbd"

    def __init__(self, name: str, run_dir: str, *, connections: int = 2, timeout_s: int = 120,
                 dead_conn_timeout_s: int = 5, netlink_timeout_s: float = 10.0) -> None:
        if connections < 1:
            raise ValueError(f"nbd: connections must be at least 1, got {connections}")
        self.name = name
        self.run_dir = run_dir
        self.connections = connections
        self.timeout_s = timeout_s
        self.dead_conn_timeout_s = dead_conn_timeout_s
        self.netlink_timeout_s = netlink_timeout_s
        self.backend_id = f"replica:{name}"
        self._index: int | None = None
        self._size = 0
        self._task = 0      # the thread that connected: the kernel shows its id in /sys/block/nbdN/pid
        self._ours: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._results: list[ServeResult | None] = []
        self._stranded: list[socket.socket] = []   # served by a thread that did not end in time
        self._lock = threading.Lock()

    @classmethod
    def available(cls) -> str | None:
        if os.path.isdir(SYS_MODULE):
            return None
        modprobe = shutil.which("modprobe", path="/usr/sbin:/sbin:/usr/bin:/bin")
        if modprobe is not None:
            try:
                subprocess.run([modprobe, "nbd"], capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if os.path.isdir(SYS_MODULE):
                return None
        return f"{NO_NBD_HINT} ({SYS_MODULE} missing)"

    @property
    def path(self) -> str | None:
        return None if self._index is None else f"/dev/nbd{self._index}"

    def attach(self, engine: Engine, size: int) -> str:
        with self._lock:
            if self._index is not None:
                raise ReplicaError(f"{self.name}: nbd: already attached as /dev/nbd{self._index}")
            if size <= 0 or size % BLOCK_SIZE:
                raise ReplicaError(f"{self.name}: nbd: device size {size} is not a positive multiple "
                                   f"of {BLOCK_SIZE} bytes")
            reason = self.available()
            if reason is not None:
                raise ReplicaError(f"{self.name}: {reason}")
            pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(self.connections)]
            self._ours = [ours for ours, _ in pairs]
            self._results = [None] * self.connections
            self._threads = [threading.Thread(target=self._serve, args=(engine, i), daemon=True,
                                              name=f"nbd-{self.name}-{i}") for i in range(self.connections)]
            for t in self._threads:
                t.start()
            flags = transmission_flags_for(read_only=False, can_multi_conn=True)
            try:
                with NbdGenl(self.netlink_timeout_s) as nl:
                    index = nl.connect(size=size, socket_fds=[k.fileno() for _, k in pairs],
                                       server_flags=flags, block_size=BLOCK_SIZE, timeout_s=self.timeout_s,
                                       dead_conn_timeout_s=self.dead_conn_timeout_s, backend=self.backend_id)
            except NbdNetlinkError as e:
                self._stop_serving(timeout_s=5.0)
                raise ReplicaError(f"{self.name}: cannot attach /dev/nbdN: {e}") from None
            finally:
                for _, kernel_end in pairs:
                    kernel_end.close()    # the kernel holds its own reference now
            self._index, self._size, self._task = index, size, threading.get_native_id()
        path = f"/dev/nbd{index}"
        deadline = time.monotonic() + 2.0
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("%s: attached %s (%d bytes, %d connections, kernel NBD via netlink)", self.name, path, size,
                 self.connections)
        return path

    def _serve(self, engine: Engine, i: int) -> None:
        result = engine.serve_nbd(self._ours[i].fileno())
        self._results[i] = result
        if not result.clean:
            log.warning("%s: nbd connection %d ended: %s (%s)", self.name, i, result.reason,
                        os.strerror(result.errno) if result.errno else "no error")

    def _stop_serving(self, timeout_s: float) -> None:
        """Wait for the serving threads (the kernel has shut its ends down), then close ours. A
        thread still running after timeout_s gets EOF by a shutdown of our end; its socket is
        only closed once it has ended, so that C never reads from a recycled descriptor."""
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        late = [i for i, t in enumerate(self._threads) if t.is_alive()]
        for i in late:
            try:
                self._ours[i].shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for i in late:
            self._threads[i].join(1.0)
        for i, (t, s) in enumerate(zip(self._threads, self._ours, strict=True)):
            if t.is_alive():
                log.warning("%s: nbd connection %d still busy after detach; its socket stays open", self.name, i)
                self._stranded.append(s)
            else:
                s.close()
        self._threads, self._ours = [], []

    def detach(self, force: bool = False) -> None:
        with self._lock:
            index = self._index
            if index is None:
                return
            try:
                with NbdGenl(self.netlink_timeout_s) as nl:
                    nl.disconnect(index)
                    if not force:
                        # free once nobody holds it: the caller checked, so this is quick
                        deadline = time.monotonic() + 5.0
                        while nl.status(index).get(index) and time.monotonic() < deadline:
                            time.sleep(0.02)
            except NbdNetlinkError as e:
                if not force:
                    raise ReplicaError(f"{self.name}: cannot detach /dev/nbd{index}: {e}") from None
                log.warning("%s: detach /dev/nbd%d: %s; closing its sockets", self.name, index, e)
            self._stop_serving(timeout_s=2.0 if force else 10.0)
            self._index = None
        log.info("%s: detached /dev/nbd%d%s", self.name, index, " (forced)" if force else "")

    def record(self) -> dict:
        index = self._index
        rec: dict[str, Any] = {"kind": self.kind, "device": self.path, "index": index, "pid": os.getpid(),
                               "task": self._task, "backend": self.backend_id}
        if index is not None:
            try:
                rec["connected"] = device_connected(index, self.netlink_timeout_s)
            except NbdNetlinkError as e:
                rec["connected"] = None
                rec["status_error"] = str(e)
        return rec

    @staticmethod
    def cleanup(record: dict) -> list[str]:
        index = record.get("index")
        if record.get("kind") != "nbd" or not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return []
        dev = f"/dev/nbd{index}"
        backend = _sysfs(index, "backend")
        if backend and record.get("backend") and backend != record["backend"]:
            return [f"left {dev} alone: it now serves {backend!r}, not {record['backend']!r}"]
        pid = _sysfs(index, "pid")
        if pid and pid not in (str(record.get("pid")), str(record.get("task"))) and os.path.exists(f"/proc/{pid}"):
            return [f"left {dev} alone: it is attached by the running process {pid}"]
        try:
            with NbdGenl(5.0) as nl:
                if not nl.status(index).get(index):
                    return []
                nl.disconnect(index)
        except NbdUnavailable:
            return []
        except NbdNetlinkError as e:
            return [f"could not disconnect {dev}: {e}"]
        return [f"disconnected {dev} (kernel NBD; I/O on it now fails until its last user closes it)"]

    def stats(self) -> dict:
        if self._index is None:
            return {}
        return {"device": self.path, "connections": len(self._threads),
                "serving": sum(t.is_alive() for t in self._threads)}
