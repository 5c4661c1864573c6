# SPDX-License-Identifier: GPL-2.0-or-later
"""Malformed and vanishing clients against a live replicad: each only ends its own connection."""
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.waiting import wait_for
from tests.conftest import requires_module
from tests.integration.replica_fixtures import serve_resource

IHAVEOPT = 0x49484156454F5054
NBDMAGIC = b"NBDMAGIC"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    yield from serve_resource(tmp_path_factory.mktemp("robust"))


def sock_path(served):
    return str(served.dir / "r0.sock")


def open_transmission(served) -> socket.socket:
    """Fixed newstyle handshake by hand, with NBD_OPT_EXPORT_NAME and NO_ZEROES."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path(served))
    assert s.recv(18, socket.MSG_WAITALL)[:8] == NBDMAGIC
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 1, 2) + b"r0")
    size, flags = struct.unpack(">QH", s.recv(10, socket.MSG_WAITALL))
    assert size == served.size
    return s


def assert_still_serving(served):
    nbd = requires_module("nbd")
    h = nbd.NBD()
    h.connect_uri(served.uri)
    try:
        h.pwrite(b"alive", 4096)
        assert h.pread(5, 4096) == b"alive"
    finally:
        h.shutdown()
    assert served.ctl("status").returncode == 0


def test_client_vanishing_mid_write_leaves_others_alone(served):
    """A large payload goes to the disk as it arrives: the bytes a vanished client did send land
    (an unanswered write may be torn, as on a disk), and nothing else changes for the others."""
    nbd = requires_module("nbd")
    other = nbd.NBD()
    other.connect_uri(served.uri)
    try:
        other.pwrite(b"before", 0)
        bad = open_transmission(served)
        bad.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, 1 << 20) + b"x" * 1000)
        bad.close()  # gone in the middle of a 1 MiB payload
        wait_for(lambda: other.pread(6, 0) == b"x" * 6, "the cut write's first bytes on disk", 10, interval_s=0.01)
        assert other.pread(1001, 0) == b"x" * 1000 + b"\0"
        other.pwrite(b"after!", 0)
        assert other.pread(6, 0) == b"after!"
    finally:
        other.shutdown()
    assert_still_serving(served)


def test_oversized_option_is_refused_without_reading_it(served):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path(served))
    s.recv(18, socket.MSG_WAITALL)
    s.sendall(struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, 1, 0x7FFFFFFF))
    assert s.recv(100) == b""  # clean disconnect, no attempt to read 2 GiB
    s.close()
    assert_still_serving(served)


def test_garbage_during_transmission_disconnects_only_that_client(served):
    s = open_transmission(served)
    s.sendall(b"\xde\xad\xbe\xef" * 16)  # not a request magic: the server must hang up
    assert s.recv(100) == b""
    s.close()
    assert_still_serving(served)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda flags, opts: struct.pack(">I", flags) + b"".join(
        struct.pack(">QII", IHAVEOPT, o, len(p)) + p for o, p in opts),
        st.integers(0, 3), st.lists(st.tuples(st.integers(0, 12), st.binary(max_size=40)), max_size=4))))
def test_fuzz_handshake_against_live_daemon(served, data):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path(served))
    try:
        s.recv(18, socket.MSG_WAITALL)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except OSError:
        pass
    finally:
        s.close()
    assert served.ctl("status").returncode == 0


def test_daemon_serves_after_fuzzing(served):
    assert_still_serving(served)
