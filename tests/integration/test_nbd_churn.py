# SPDX-License-Identifier: GPL-2.0-or-later
"""A protocol C Primary under every client behaviour at once, round after round (issue 9).

The sequence that crashed replicad (SIGSEGV, 1 in 7 runs) and locked clients out after a burst:
hundreds of connections sending garbage, handshakes cut at every byte, options announcing huge
lengths, 10,000 connect/close as fast as a client can, 500 idle connections held then closed,
a client holding a half-sent 32 MiB write while another works, out-of-range requests, and 16
writers pipelining 4 KiB writes that all hang up at once while the Secondary still owes their
acknowledgements. After each round the same daemon must answer, a libnbd client must work, and
at the end both disks must be identical. `make sanitize` runs this file against the ASan/UBSan
build of the C data path as well.
"""
import errno
import os
import random
import socket
import struct
import threading
import time

import pytest

from tests.conftest import requires_module, requires_root
from tests.integration.netns import TwoNodes

pytestmark = [pytest.mark.root, pytest.mark.slow]

MiB = 1 << 20
IHAVEOPT = 0x49484156454F5054
REQUEST = struct.Struct(">IHHQQI")
REQUEST_MAGIC, READ, WRITE, DISC = 0x25609513, 0, 1, 2
NBD_OPT_EXPORT_NAME, NBD_OPT_LIST = 1, 3
ROUNDS = 3
BURST = 10_000


def export_path(lab: TwoNodes) -> str:
    return str(lab.dir / "alpha" / "r0.sock")


def connect(lab: TwoNodes, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(export_path(lab))
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"server closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def handshake_bytes() -> bytes:
    """Client flags (FIXED_NEWSTYLE | NO_ZEROES) and NBD_OPT_EXPORT_NAME "r0"."""
    return struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, NBD_OPT_EXPORT_NAME, 2) + b"r0"


def open_transmission(lab: TwoNodes) -> tuple[socket.socket, int]:
    s = connect(lab)
    recv_exact(s, 18)
    s.sendall(handshake_bytes())
    size, _flags = struct.unpack(">QH", recv_exact(s, 10))
    return s, size


def garbage_clients(lab: TwoNodes, rng: random.Random, count: int) -> None:
    for _ in range(count):
        s = connect(lab)
        try:
            s.sendall(rng.randbytes(rng.randrange(1, 4096)))
        except OSError:
            pass   # the server may hang up first: that is the point
        s.close()


def cut_handshakes(lab: TwoNodes) -> None:
    """Every prefix of a valid handshake, then hang up; then options announcing huge lengths."""
    full = handshake_bytes()
    for cut in range(len(full)):
        s = connect(lab)
        recv_exact(s, 18)
        s.sendall(full[:cut])
        s.close()
    for length in (0xFFFFFFFF, 1 << 30, 70000):
        s = connect(lab)
        recv_exact(s, 18)
        try:
            s.sendall(struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, NBD_OPT_LIST, length))
            s.recv(1)   # the server answers nothing and hangs up, or replies an error
        except OSError:
            pass
        s.close()


def burst(lab: TwoNodes, count: int) -> int:
    """connect/close as fast as possible, non-blocking as libnbd connects; returns EAGAIN count."""
    refused = 0
    path = export_path(lab)
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            refused += 1
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise
            refused += 1
        s.close()
    return refused


LOCKOUT_S = 2.0     # a client refused for longer than this after a burst is locked out


def libnbd_connects(lab: TwoNodes, count: int) -> tuple[list[str], int]:
    """`count` libnbd clients, each retrying a refused connect (EAGAIN: the backlog is full
    while the server drains a burst, e.g. on a starved CPU) for up to LOCKOUT_S. Returns the
    clients that never got in, and how many connects were retried."""
    nbd = requires_module("nbd")
    failures, retries = [], 0
    for _ in range(count):
        deadline = time.monotonic() + LOCKOUT_S
        while True:
            h = nbd.NBD()
            try:
                h.connect_uri(lab.uri("alpha"))
                h.shutdown()
                break
            except nbd.Error as exc:
                if exc.errnum != errno.EAGAIN or time.monotonic() >= deadline:
                    failures.append(str(exc))
                    break
                retries += 1
                time.sleep(0.02)
    return failures, retries


def idle_connections(lab: TwoNodes, count: int) -> None:
    """Hold `count` connections, half in the handshake and half in transmission, then close all."""
    held = []
    try:
        for i in range(count):
            if i % 2:
                held.append(open_transmission(lab)[0])
            else:
                s = connect(lab)
                recv_exact(s, 18)
                held.append(s)
    finally:
        for s in held:
            s.close()


def half_sent_write_while_another_works(lab: TwoNodes, rng: random.Random) -> None:
    nbd = requires_module("nbd")
    stuck, size = open_transmission(lab)
    try:
        stuck.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 1, 0, 32 * MiB) + rng.randbytes(MiB))
        h = nbd.NBD()
        h.connect_uri(lab.uri("alpha"))
        try:
            block = rng.randbytes(65536)
            for i in range(16):
                h.pwrite(block, 8 * MiB + i * len(block))
            assert h.pread(len(block), 8 * MiB + 15 * len(block)) == block
            # Out of range: answered with an error, the connection stays usable.
            with pytest.raises(nbd.Error):
                h.pread(4096, size)
            with pytest.raises(nbd.Error):
                h.pwrite(b"x" * 4096, size - 1)
            h.flush()
        finally:
            h.shutdown()
    finally:
        stuck.close()


def writers_hanging_up_together(lab: TwoNodes, rng: random.Random, size: int) -> None:
    """16 connections pipeline 4 KiB writes (two in flight each) for a moment, then all close
    without reading what is still owed."""
    socks = [open_transmission(lab)[0] for _ in range(16)]
    stop = time.monotonic() + 1.0
    errors: list[BaseException] = []

    def run(s: socket.socket, seed: int) -> None:
        r = random.Random(seed)
        payload = r.randbytes(4096)
        cookie = 0
        try:
            while time.monotonic() < stop:
                for _ in range(2):
                    cookie += 1
                    offset = r.randrange(size // 4096) * 4096
                    s.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, cookie, offset, 4096) + payload)
                recv_exact(s, 16)
                recv_exact(s, 16)
            for _ in range(8):   # these stay unanswered when the socket closes
                cookie += 1
                s.sendall(REQUEST.pack(REQUEST_MAGIC, 0, WRITE, cookie, 0, 4096) + payload)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, rng.random())) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in socks:
        s.close()
    assert not errors, errors


def assert_alive(lab: TwoNodes, pid: int, what: str) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise AssertionError(f"replicad died after {what}\n--- log ---\n{lab.log('alpha')[-3000:]}") from None
    assert lab.daemon_pid("alpha") == pid
    nbd = requires_module("nbd")
    h = nbd.NBD()
    h.connect_uri(lab.uri("alpha"))
    try:
        h.pwrite(b"alive", 4096)
        assert h.pread(5, 4096) == b"alive"
    finally:
        h.shutdown()
    st = lab.status("alpha")
    assert st["role"] == "Primary" and st["connection"] == "Connected", st


def test_primary_survives_every_client_behaviour():
    requires_root()
    requires_module("nbd")
    rng = random.Random(9)
    with TwoNodes(size=64 * MiB) as lab:
        lab.create_and_up()
        lab.ctl("alpha", "new-current-uuid", "--clear-bitmap", "r0")
        lab.ctl("alpha", "primary", "r0")
        lab.wait_synced()
        pid = lab.daemon_pid("alpha")
        size = lab.data_size()
        for rnd in range(ROUNDS):
            garbage_clients(lab, rng, 200)
            assert_alive(lab, pid, f"round {rnd}: garbage")
            cut_handshakes(lab)
            assert_alive(lab, pid, f"round {rnd}: cut handshakes")
            refused = burst(lab, BURST)
            failures, retries = libnbd_connects(lab, 500)
            # A client looping on connect/close can outrun any server for a moment; what must
            # not happen is the backlog staying full (before: 85-95 % of the burst refused, and
            # up to 268 of the next 500 libnbd connects failing with EAGAIN, for good).
            assert not failures, f"round {rnd}: {len(failures)} of 500 libnbd clients locked out " \
                                 f"for {LOCKOUT_S} s after the burst ({retries} retries): {failures[:3]}"
            # refusals during the burst itself: 85-95 % before the fix; under 5 % on a quiet
            # machine now, 12 % seen with the CPU starved by other work
            assert refused < BURST // 4, f"round {rnd}: {refused} of {BURST} connects refused " \
                                         f"(backlog full)"
            idle_connections(lab, 500)
            assert_alive(lab, pid, f"round {rnd}: 500 idle connections")
            half_sent_write_while_another_works(lab, rng)
            assert_alive(lab, pid, f"round {rnd}: half-sent write")
            writers_hanging_up_together(lab, rng, size)
            assert_alive(lab, pid, f"round {rnd}: 16 writers hanging up together")
        log = lab.log("alpha")
        assert "Traceback" not in log, log[-3000:]
        st = lab.status("alpha")
        assert st["out_of_sync_bytes"] == 0 and st["peer_disk_state"] == "UpToDate", st
        lab.ctl("alpha", "secondary", "r0")
        lab.wait_synced()
        assert lab.disks_equal(size), f"disks differ at {lab.first_difference(size)}"
