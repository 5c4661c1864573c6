# SPDX-License-Identifier: GPL-2.0-or-later
"""replicad's NBD export driven by clients we did not write: libnbd, qemu-io/qemu-img, nbdcopy, nbdinfo."""
import json
import os
import subprocess

import pytest

from tests.conftest import requires_commands, requires_module
from tests.integration.replica_fixtures import serve_resource

MiB = 1 << 20


@pytest.fixture
def served(tmp_path):
    yield from serve_resource(tmp_path)


@pytest.fixture
def tcp_served(tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    yield from serve_resource(tmp_path, export=f"127.0.0.1:{port}")


def read_disk(served, offset, length):
    with open(served.disk, "rb") as f:
        f.seek(offset)
        return f.read(length)


def connect(uri):
    nbd = requires_module("nbd")
    h = nbd.NBD()
    h.connect_uri(uri)
    return nbd, h


def test_libnbd_round_trip_and_flags(served):
    nbd, h = connect(served.uri)
    try:
        assert h.get_size() == served.size
        assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero()
        assert h.can_multi_conn()
        assert not h.is_read_only()
        data = os.urandom(128 * 1024)
        h.pwrite(data, 3 * MiB + 512)
        assert h.pread(len(data), 3 * MiB + 512) == data
        h.pwrite(b"F" * 4096, 8 * MiB, nbd.CMD_FLAG_FUA)
        h.flush()
        assert read_disk(served, 8 * MiB, 4096) == b"F" * 4096
        assert read_disk(served, 3 * MiB + 512, len(data)) == data
    finally:
        h.shutdown()


def test_libnbd_trim_and_zero(served):
    nbd, h = connect(served.uri)
    try:
        h.pwrite(b"\xaa" * MiB, 0)
        h.zero(64 * 1024, 4096)
        h.zero(64 * 1024, 128 * 1024, nbd.CMD_FLAG_NO_HOLE)
        h.trim(64 * 1024, 512 * 1024)
        got = h.pread(MiB, 0)
        assert got[4096:4096 + 65536] == bytes(65536)
        assert got[128 * 1024:192 * 1024] == bytes(65536)
        assert got[:4096] == b"\xaa" * 4096
        assert got[192 * 1024:512 * 1024] == b"\xaa" * (320 * 1024)
        h.flush()
        assert read_disk(served, 4096, 65536) == bytes(65536)
    finally:
        h.shutdown()


def test_libnbd_64_concurrent_aio_writes(served):
    nbd, h = connect(served.uri)
    try:
        blocks = {i: os.urandom(4096) for i in range(64)}
        cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(buf)), i * 8192)
                   for i, buf in blocks.items()]
        assert h.aio_in_flight() > 1  # really pipelined, not one at a time
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for cookie in cookies:
            assert h.aio_command_completed(cookie)
        for i, buf in blocks.items():
            assert h.pread(4096, i * 8192) == buf
    finally:
        h.shutdown()


def test_libnbd_two_connections_see_each_other(served):
    _, a = connect(served.uri)
    _, b = connect(served.uri)
    try:
        a.pwrite(b"one" * 1000, 0)
        a.flush()
        assert b.pread(3000, 0) == b"one" * 1000
        b.pwrite(b"two" * 1000, 4096)
        b.flush()
        assert a.pread(3000, 4096) == b"two" * 1000
    finally:
        a.shutdown()
        b.shutdown()


def test_libnbd_out_of_range_errors_keep_connection(served):
    nbd, h = connect(served.uri)
    h.set_strict_mode(0)  # let the requests reach the server instead of libnbd's own checks
    try:
        with pytest.raises(nbd.Error) as read_err:
            h.pread(4096, served.size - 1024)
        assert read_err.value.errnum == 22  # EINVAL
        with pytest.raises(nbd.Error) as write_err:
            h.pwrite(b"x" * 4096, served.size)
        assert write_err.value.errnum == 28  # ENOSPC
        with pytest.raises(nbd.Error):
            h.zero(4096, served.size + 4096)
        h.pwrite(b"still here", 0)  # the connection goes on
        assert h.pread(10, 0) == b"still here"
    finally:
        h.shutdown()


def test_libnbd_over_tcp(tcp_served):
    _, h = connect(tcp_served.uri)
    try:
        assert tcp_served.uri.startswith("nbd://127.0.0.1:")
        data = os.urandom(MiB)
        h.pwrite(data, 5 * MiB)
        assert h.pread(MiB, 5 * MiB) == data
    finally:
        h.shutdown()


def test_qemu_io_pattern_write_read(served):
    requires_commands("qemu-io")
    out = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M", "-c", "read -P 0x5a 1M 2M",
                          "-c", "write -z 1M 4k", "-c", "read -P 0 1M 4k", served.uri],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Pattern verification failed" not in out.stdout + out.stderr
    assert read_disk(served, 2 * MiB, 4096) == b"\x5a" * 4096


def test_qemu_img_convert_and_compare(served, tmp_path):
    requires_commands("qemu-img")
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(4 * MiB) + bytes(8 * MiB) + os.urandom(MiB) + bytes(51 * MiB))
    conv = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), served.uri],
                          capture_output=True, text=True, timeout=120)
    assert conv.returncode == 0, conv.stderr
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), served.uri],
                         capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert "Images are identical" in cmp.stdout


def test_nbdcopy_both_ways(served, tmp_path):
    requires_commands("nbdcopy")
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(served.size))
    up = subprocess.run(["nbdcopy", str(src), served.uri], capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back.img"
    down = subprocess.run(["nbdcopy", served.uri, str(back)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == src.read_bytes()
    assert served.disk.read_bytes() == src.read_bytes()


def test_nbdinfo_json(served):
    requires_commands("nbdinfo")
    out = subprocess.run(["nbdinfo", "--json", served.uri], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["protocol"] == "newstyle-fixed"
    export = info["exports"][0]
    assert export["export-name"] == "r0"
    assert export["export-size"] == served.size
    assert export["can_flush"] and export["can_fua"] and export["can_trim"] and export["can_zero"]
    assert export["can_multi_conn"] and not export["is_read_only"]
    assert export["block_size_minimum"] == 1
    assert export["block_size_preferred"] == 4096
    assert export["block_size_maximum"] == 32 * MiB


def test_nbdinfo_list(served):
    requires_commands("nbdinfo")
    out = subprocess.run(["nbdinfo", "--list", "--json", served.uri], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [e["export-name"] for e in json.loads(out.stdout)["exports"]] == ["r0"]
