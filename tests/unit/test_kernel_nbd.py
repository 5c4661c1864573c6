# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.kernel_nbd without a kernel: the netlink messages we build (byte for byte against
the uapi layout), the replies we decode (golden replies shaped as drivers/block/nbd.c builds
them), the refusals, and a fuzz test of the reply decoder. The real nbd.ko path runs in
tests/e2e/test_kernel_nbd_vm.py."""
import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import kernel_nbd
from replica.kernel_nbd import (
    KernelNbdBackend,
    NbdCmd,
    NbdNetlinkError,
    connect_index,
    connect_request,
    decode_replies,
    disconnect_request,
    family_id,
    getfamily_request,
    status_devices,
    status_request,
)
from replica.protocol.nbd import transmission_flags_for

FAMILY = 0x1D
NLMSG_ERROR = 2


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + bytes(-len(raw) % 4)


def genl(kind: int, seq: int, cmd: int, attrs: bytes, version: int = 1) -> bytes:
    body = struct.pack("=BBH", cmd, version, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def ack(seq: int, err: int = 0) -> bytes:
    body = struct.pack("=i", -err) + struct.pack("=IHHII", 20, FAMILY, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, 0, seq, 0) + body


def parse_attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off < len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out.append((kind, data[off + 4:off + length]))
        off += (length + 3) & ~3
    return out


def status_reply(seq: int, devices: list[tuple[int, int]]) -> bytes:
    """As nbd_genl_status builds it: DEVICE_LIST { DEVICE_ITEM { INDEX u32, CONNECTED u8 } ... }."""
    items = b"".join(attr(1, attr(1, struct.pack("=I", i)) + attr(2, bytes([c]))) for i, c in devices)
    return genl(FAMILY, seq, NbdCmd.STATUS, attr(9, items))


# --- requests -----------------------------------------------------------------------------------

def test_connect_request_layout():
    flags = transmission_flags_for(read_only=False, can_multi_conn=True)
    data = connect_request(FAMILY, 7, size=64 << 20, socket_fds=[5, 9], server_flags=flags,
                           timeout_s=120, dead_conn_timeout_s=5, backend="replica:r0")
    length, kind, nl_flags, seq, pid = struct.unpack_from("=IHHII", data)
    assert (length, kind, nl_flags, seq, pid) == (len(data), FAMILY, 0x1 | 0x4, 7, 0)  # REQUEST|ACK
    assert data[16:20] == struct.pack("=BBH", NbdCmd.CONNECT, 1, 0)
    attrs = parse_attrs(data[20:])
    assert [k for k, _ in attrs] == [2, 3, 5, 4, 8, 7, 10]   # no INDEX: the kernel picks a device
    values = dict(attrs)
    assert struct.unpack("=Q", values[2]) == (64 << 20,)
    assert struct.unpack("=Q", values[3]) == (4096,)
    assert struct.unpack("=Q", values[5]) == (flags,)
    assert flags == 0x1 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100  # HAS_FLAGS FLUSH FUA TRIM WRITE_ZEROES MULTI_CONN
    assert struct.unpack("=Q", values[4]) == (120,) and struct.unpack("=Q", values[8]) == (5,)
    socks = parse_attrs(values[7])
    assert [k for k, _ in socks] == [1, 1]
    assert [parse_attrs(p) for _, p in socks] == [[(1, struct.pack("=I", 5))], [(1, struct.pack("=I", 9))]]
    assert values[10] == b"replica:r0\0"


def test_connect_request_with_index_and_refusals():
    data = connect_request(FAMILY, 1, size=4096, socket_fds=[3], server_flags=1, index=3)
    assert parse_attrs(data[20:])[0] == (1, struct.pack("=I", 3))
    with pytest.raises(ValueError, match="size 1000 is not a positive multiple of 4096"):
        connect_request(FAMILY, 1, size=1000, socket_fds=[3], server_flags=1)
    with pytest.raises(ValueError, match="needs at least one socket"):
        connect_request(FAMILY, 1, size=4096, socket_fds=[], server_flags=1)


def test_disconnect_status_and_getfamily_requests():
    d = disconnect_request(FAMILY, 3, 2)
    assert d[16] == NbdCmd.DISCONNECT and parse_attrs(d[20:]) == [(1, struct.pack("=I", 2))]
    s = status_request(FAMILY, 4)
    assert s[16] == NbdCmd.STATUS and parse_attrs(s[20:]) == []
    assert parse_attrs(status_request(FAMILY, 4, 1)[20:]) == [(1, struct.pack("=I", 1))]
    g = getfamily_request(5)
    assert struct.unpack_from("=H", g, 4) == (0x10,) and g[16] == 3   # GENL_ID_CTRL, CTRL_CMD_GETFAMILY
    assert parse_attrs(g[20:]) == [(2, b"nbd\0")]


# --- replies ------------------------------------------------------------------------------------

def test_connect_reply_gives_the_index():
    data = genl(FAMILY, 7, NbdCmd.CONNECT, attr(1, struct.pack("=I", 3))) + ack(7)
    msgs = decode_replies(data, FAMILY)
    assert [(m.type, m.seq, m.error) for m in msgs] == [(FAMILY, 7, None), (NLMSG_ERROR, 7, 0)]
    assert connect_index(msgs) == 3
    with pytest.raises(NbdNetlinkError, match="names no device index"):
        connect_index(decode_replies(ack(7), FAMILY))


def test_status_reply_lists_devices():
    msgs = decode_replies(status_reply(4, [(0, 1), (1, 0), (7, 1)]), FAMILY)
    assert status_devices(msgs) == {0: True, 1: False, 7: True}
    assert status_devices(decode_replies(status_reply(4, []), FAMILY)) == {}


def test_error_reply_carries_the_errno():
    (m,) = decode_replies(ack(9, errno.EBUSY), FAMILY)
    assert m.error == errno.EBUSY


def test_family_reply():
    data = genl(0x10, 1, 1, attr(2, b"nbd\0") + attr(1, struct.pack("=H", FAMILY)) + attr(3, struct.pack("=I", 1)))
    assert family_id(decode_replies(data, FAMILY)) == FAMILY


@pytest.mark.parametrize("data, message", [
    (b"\x10\x00", "too short for a header"),
    (struct.pack("=IHHII", 64, FAMILY, 0, 1, 0), "message of 64 bytes at offset 0 in 16"),
    (genl(FAMILY, 1, 5, attr(1, b"\x01\x02")), "attribute 1 has 2 bytes, expected 4"),
    (genl(FAMILY, 1, 5, attr(9, attr(1, attr(2, b"\x01\x00")))), "attributes/9/1: attribute 2 has 2 bytes"),
    (genl(FAMILY, 1, 5, struct.pack("=HH", 40, 1) + bytes(4)), "attribute 1 claims 40 bytes, 8 left"),
    (genl(FAMILY, 1, 5, b"\x00\x00"), "2 stray bytes after the attributes"),
    (struct.pack("=IHHII", 17, NLMSG_ERROR, 0, 1, 0) + b"\0", "error message of 17 bytes"),
    (struct.pack("=IHHII", 20, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", 5), "error code 5 is positive"),
    (struct.pack("=IHHII", 16, 77, 0, 1, 0), "unexpected message type 77"),
])
def test_malformed_replies_are_named(data, message):
    with pytest.raises(NbdNetlinkError, match="^nbd: malformed reply: ") as info:
        decode_replies(data, FAMILY)
    assert message in str(info.value)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_decoder_fuzz_malformed_attributes(data):
    """Mutated and truncated golden replies: a result or NbdNetlinkError, never anything else."""
    golden = data.draw(st.sampled_from([
        status_reply(4, [(0, 1), (1, 0)]) + ack(4),
        genl(FAMILY, 7, NbdCmd.CONNECT, attr(1, struct.pack("=I", 3))) + ack(7),
        genl(0x10, 1, 1, attr(2, b"nbd\0") + attr(1, struct.pack("=H", FAMILY))),
        ack(2, errno.EINVAL),
    ]))
    blob = bytearray(golden)
    for _ in range(data.draw(st.integers(0, 6))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob)))]
    try:
        msgs = decode_replies(bytes(blob), FAMILY)
    except NbdNetlinkError as e:
        assert str(e).startswith("nbd: ")
        return
    for parse in (connect_index, status_devices, family_id):
        try:
            parse(msgs)
        except NbdNetlinkError as e:
            assert str(e).startswith("nbd: ")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_fuzz_random_bytes(blob):
    try:
        decode_replies(blob, FAMILY)
    except NbdNetlinkError as e:
        assert str(e).startswith("nbd: malformed reply: ")


# --- the backend without a kernel NBD driver ---------------------------------------------------

def test_available_refuses_with_the_modprobe_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel_nbd, "SYS_MODULE", str(tmp_path / "no-such-module"))
    monkeypatch.setattr(kernel_nbd.shutil, "which", lambda *a, **k: None)
    reason = KernelNbdBackend.available()
    assert reason == ("the kernel has no NBD driver: run `modprobe nbd` (or use device-kind fuse) "
                      f"({tmp_path / 'no-such-module'} missing)")
    (tmp_path / "no-such-module").mkdir()
    assert KernelNbdBackend.available() is None


def test_attach_without_nbd_refuses_and_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel_nbd, "SYS_MODULE", str(tmp_path / "none"))
    monkeypatch.setattr(kernel_nbd.shutil, "which", lambda *a, **k: None)
    b = KernelNbdBackend("r0", str(tmp_path))
    with pytest.raises(kernel_nbd.ReplicaError, match=r"^r0: the kernel has no NBD driver: run `modprobe nbd`"):
        b.attach(object(), 1 << 20)   # type: ignore[arg-type]
    with pytest.raises(kernel_nbd.ReplicaError, match="size 1000 is not a positive multiple of 4096"):
        b.attach(object(), 1000)      # type: ignore[arg-type]
    assert b.path is None and b.stats() == {} and b._threads == []
    b.detach()                        # idempotent: nothing attached
    assert b.record()["index"] is None and b.record()["kind"] == "nbd"


def test_cleanup_ignores_foreign_or_empty_records(monkeypatch):
    assert KernelNbdBackend.cleanup({}) == []
    assert KernelNbdBackend.cleanup({"kind": "fuse", "index": 0}) == []
    assert KernelNbdBackend.cleanup({"kind": "nbd", "index": None}) == []
    assert KernelNbdBackend.cleanup({"kind": "nbd", "index": True}) == []
    sysfs = {"backend": "replica:other", "pid": "1"}
    monkeypatch.setattr(kernel_nbd, "_sysfs", lambda index, name: sysfs.get(name))
    assert KernelNbdBackend.cleanup({"kind": "nbd", "index": 2, "backend": "replica:r0", "pid": 5}) == [
        "left /dev/nbd2 alone: it now serves 'replica:other', not 'replica:r0'"]
    del sysfs["backend"]
    assert KernelNbdBackend.cleanup({"kind": "nbd", "index": 2, "backend": "replica:r0", "pid": 5, "task": 6}) == [
        "left /dev/nbd2 alone: it is attached by the running process 1"]


def test_netlink_without_the_nbd_family_is_a_clear_refusal():
    if kernel_nbd.os.path.isdir("/sys/module/nbd"):
        pytest.skip("this kernel has NBD: the missing family cannot be seen")
    with pytest.raises(kernel_nbd.NbdUnavailable, match="no generic netlink family 'nbd': the kernel has no NBD "
                                                        r"driver: run `modprobe nbd` \(or use device-kind fuse\)"):
        kernel_nbd.NbdGenl(2.0)
    assert kernel_nbd.device_connected(0) is None
    # cleanup after a dead daemon on a kernel without NBD: nothing to release, no error
    assert KernelNbdBackend.cleanup({"kind": "nbd", "index": 0, "backend": "replica:r0", "pid": 1}) == []
