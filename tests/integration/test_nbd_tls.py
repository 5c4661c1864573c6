# SPDX-License-Identifier: GPL-2.0-or-later
"""TLS on the NBD export (NBD_OPT_STARTTLS) with clients we did not write: libnbd's nbdinfo and
nbdcopy (nbds:// and nbds+unix:// URIs, tls-certificates / tls-psk-file) and qemu-img/qemu-io
(--object tls-creds-x509 / tls-creds-psk), against a real replicad. Certificates are made by
the test (tests/tls_certs.py, cryptography) in qemu's and nbdkit's directory layout. Also: a
clear-text client against `export-tls require`, a client certificate from a wrong CA with
`export-tls-verify-peer`, a wrong PSK, STARTTLS followed by garbage, and the refusal at `up` of
a clear-text TCP export on a non-loopback address. All traffic stays on 127.0.0.1."""
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.waiting import WaitTimeout, wait_for
from tests.conftest import requires_commands
from tests.integration.replica_fixtures import Served
from tests.tls_certs import make_ca, make_node_cert

MiB = 1 << 20
TIMEOUT = 60


@dataclass(frozen=True)
class Certs:
    server: Path          # ca-cert.pem, server-cert.pem, server-key.pem
    client: Path          # ca-cert.pem, client-cert.pem, client-key.pem (signed by the same CA)
    stranger: Path        # a client certificate from another CA (and that CA as ca-cert.pem)
    expired: Path         # a client certificate of the right CA, expired yesterday
    no_cert: Path         # only the right ca-cert.pem: checks the server, presents nothing


def qemu_layout(directory: Path, ca_cert: Path, role: str, cert=None) -> Path:
    directory.mkdir()
    shutil.copy(ca_cert, directory / "ca-cert.pem")
    if cert is not None:
        shutil.copy(cert.certfile, directory / f"{role}-cert.pem")
        shutil.copy(cert.keyfile, directory / f"{role}-key.pem")
        (directory / f"{role}-key.pem").chmod(0o600)
    return directory


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    d = tmp_path_factory.mktemp("tn-certs")
    ca = make_ca(d)
    other = make_ca(d, "another CA")
    server = make_node_cert(d, ca, "localhost", ("127.0.0.1", "::1"), prefix="server-")
    client = make_node_cert(d, ca, "client", prefix="client-")
    stranger = make_node_cert(d, other, "client", prefix="stranger-")
    expired = make_node_cert(d, ca, "client", expired=True, prefix="expired-")
    return Certs(server=qemu_layout(d / "server", ca.certfile, "server", server),
                 client=qemu_layout(d / "client", ca.certfile, "client", client),
                 stranger=qemu_layout(d / "stranger", ca.certfile, "client", stranger),
                 expired=qemu_layout(d / "expired", ca.certfile, "client", expired),
                 no_cert=qemu_layout(d / "no-cert", ca.certfile, "client"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp: Path, export: str, tls_lines: str, size: int = 64 * MiB):
    """A standalone resource with these export and TLS lines: yields Served, then takes it down."""
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size)
    config = tmp / "replica.conf"
    config.write_text(f"resource r0 {{\n    on alpha {{\n        disk {disk};\n"
                      f"        export {export};\n        {tls_lines}\n    }}\n}}\n")
    served = Served(tmp, config, tmp / "run", disk, size, "")
    served.ctl("up", "r0")
    served.uri = served.ctl("nbd-uri", "r0").stdout.strip()
    pid = served.daemon_pid()
    try:
        yield served
    finally:
        served.ctl("down", "r0", check=False)
        if pid is not None:
            try:
                wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"replicad {pid} to exit", 10)
            except WaitTimeout:
                os.kill(pid, 9)


def log_text(served: Served) -> str:
    return (served.run_dir / "replicad.log").read_text()


def run(*cmd, check=True, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=check,
                          **kwargs)


@pytest.fixture
def x509_tcp(tmp_path, certs):
    requires_commands("nbdinfo", "nbdcopy", "qemu-img", "qemu-io")
    yield from serve(tmp_path, f"127.0.0.1:{free_port()}",
                     f"export-tls-certs {certs.server}; export-tls-verify-peer yes;")


@pytest.fixture
def x509_unix(tmp_path, certs):
    requires_commands("nbdinfo", "nbdcopy")
    yield from serve(tmp_path, f"unix:{tmp_path}/r0.sock", f"export-tls-certs {certs.server};")


@pytest.fixture
def psk_tcp(tmp_path):
    requires_commands("nbdinfo", "nbdcopy", "qemu-img")
    (tmp_path / "psk").mkdir()
    keys = tmp_path / "psk" / "keys.psk"     # qemu's tls-creds-psk reads DIR/keys.psk
    keys.write_text(f"alice:{os.urandom(32).hex()}\n")
    keys.chmod(0o600)
    yield from serve(tmp_path, f"127.0.0.1:{free_port()}", f"export-tls-psk {keys};")


def with_query(uri: str, query: str) -> str:
    return uri + ("&" if "?" in uri else "?") + query


def nbdcopy_round_trip(uri: str, tmp: Path, size: int = 8 * MiB) -> None:
    """Random data in through nbdcopy, back out through nbdcopy: the same bytes (cmp)."""
    src, back = tmp / "src.bin", tmp / "back.bin"
    src.write_bytes(os.urandom(size))
    run("nbdcopy", "--flush", str(src), uri)
    run("nbdcopy", uri, str(back))
    run("cmp", "-n", str(size), str(src), str(back))


# --- X.509 ---

def test_libnbd_x509_over_tcp(x509_tcp, certs, tmp_path):
    assert x509_tcp.uri.startswith("nbds://127.0.0.1:")
    uri = with_query(x509_tcp.uri, f"tls-certificates={certs.client}")
    info = run("nbdinfo", uri).stdout
    assert "with TLS" in info and "export-size: 67108864" in info
    nbdcopy_round_trip(uri, tmp_path)
    assert "TLS: TLSv1.3" in log_text(x509_tcp) and "peer /CN=client" in log_text(x509_tcp)


def test_libnbd_x509_over_unix(x509_unix, certs, tmp_path):
    assert x509_unix.uri.startswith("nbds+unix:///r0?socket=")
    uri = with_query(x509_unix.uri, f"tls-certificates={certs.client}")
    assert "with TLS" in run("nbdinfo", uri).stdout
    nbdcopy_round_trip(uri, tmp_path)


def test_qemu_x509_round_trip(x509_tcp, certs, tmp_path):
    port = x509_tcp.uri.split(":")[2].split("/")[0]
    tls = f"tls-creds-x509,id=tls0,dir={certs.client},endpoint=client"
    target = f"driver=nbd,host=127.0.0.1,port={port},export=r0,tls-creds=tls0"
    src, back = tmp_path / "src.raw", tmp_path / "back.raw"
    src.write_bytes(os.urandom(6 * MiB))
    run("qemu-img", "convert", "-n", "--object", tls, "-f", "raw", str(src),
        "--target-image-opts", target)
    run("qemu-img", "convert", "--object", tls, "--image-opts", target, "-O", "raw", str(back))
    run("cmp", "-n", str(6 * MiB), str(src), str(back))
    out = run("qemu-io", "--object", tls, "--image-opts", target,
              "-c", "write -P 0x5a 1M 64k", "-c", "read -P 0x5a 1M 64k").stdout
    assert "wrote 65536/65536" in out and "read 65536/65536" in out
    with open(x509_tcp.disk, "rb") as f:
        f.seek(MiB)
        assert f.read(65536) == b"\x5a" * 65536


def test_clear_text_client_is_refused_when_tls_is_required(x509_tcp):
    plain = x509_tcp.uri.replace("nbds://", "nbd://")
    result = run("nbdinfo", plain, check=False, env={**os.environ, "LIBNBD_DEBUG": "1"})
    assert result.returncode != 0
    assert "server error message: NBD_OPT_STRUCTURED_REPLY: TLS is required: send " \
           "NBD_OPT_STARTTLS first" in result.stderr
    assert "nbd_opt_go: server replied with error" in result.stderr
    assert "TLS is required" in log_text(x509_tcp)
    # qemu without TLS is refused as well
    port = x509_tcp.uri.split(":")[2].split("/")[0]
    result = run("qemu-img", "info", f"nbd://127.0.0.1:{port}/r0", check=False)
    assert result.returncode != 0


def test_client_certificate_from_a_wrong_ca_is_refused(x509_tcp, certs):
    for client_dir, why in ((certs.stranger, "certificate verify failed"),
                            (certs.expired, "certificate has expired"),
                            (certs.no_cert, "did not present a certificate")):
        uri = with_query(x509_tcp.uri, f"tls-certificates={client_dir}")
        result = run("nbdinfo", uri, check=False)
        assert result.returncode != 0, result.stdout
        assert "export-size" not in result.stdout
        wait_for(lambda why=why: why in log_text(x509_tcp), f"replicad to log {why!r}", 10)
    # and the right certificate still gets in afterwards
    good = with_query(x509_tcp.uri, f"tls-certificates={certs.client}")
    assert "with TLS" in run("nbdinfo", good).stdout


def test_starttls_then_garbage_drops_only_that_client(x509_tcp, certs):
    host, port = "127.0.0.1", int(x509_tcp.uri.split(":")[2].split("/")[0])
    with socket.create_connection((host, port), timeout=10) as s:
        greeting = s.recv(18, socket.MSG_WAITALL)
        assert greeting[:8] == b"NBDMAGIC"
        s.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 5, 0))
        reply = s.recv(20, socket.MSG_WAITALL)
        assert struct.unpack(">QIII", reply)[2] == 1            # NBD_REP_ACK
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")                     # not a ClientHello
        try:
            answer = s.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer[:1] == b"\x15"           # at most a TLS alert record
        wait_for(lambda: "tls: peer does not speak TLS" in log_text(x509_tcp),
                 "the failed handshake logged", 10)
    good = with_query(x509_tcp.uri, f"tls-certificates={certs.client}")
    assert "with TLS" in run("nbdinfo", good).stdout


# --- PSK ---

def test_psk_libnbd_and_qemu(psk_tcp, tmp_path):
    keys = tmp_path / "psk" / "keys.psk"
    port = psk_tcp.uri.split(":")[2].split("/")[0]
    uri = f"nbds://alice@127.0.0.1:{port}/r0?tls-psk-file={keys}"
    assert "with TLS" in run("nbdinfo", uri).stdout
    nbdcopy_round_trip(uri, tmp_path)
    tls = f"tls-creds-psk,id=tls0,dir={keys.parent},username=alice,endpoint=client"
    target = f"driver=nbd,host=127.0.0.1,port={port},export=r0,tls-creds=tls0"
    back = tmp_path / "qemu-back.raw"
    run("qemu-img", "convert", "--object", tls, "--image-opts", target, "-O", "raw", str(back))
    run("cmp", "-n", str(8 * MiB), str(tmp_path / "src.bin"), str(back))
    assert "psk alice" in log_text(psk_tcp)


def test_wrong_psk_is_refused(psk_tcp, tmp_path):
    wrong = tmp_path / "wrong.psk"
    wrong.write_text(f"alice:{os.urandom(32).hex()}\n")
    port = psk_tcp.uri.split(":")[2].split("/")[0]
    result = run("nbdinfo", f"nbds://alice@127.0.0.1:{port}/r0?tls-psk-file={wrong}", check=False)
    assert result.returncode != 0 and "export-size" not in result.stdout
    unknown = tmp_path / "mallory.psk"
    unknown.write_text(f"mallory:{os.urandom(32).hex()}\n")
    result = run("nbdinfo", f"nbds://mallory@127.0.0.1:{port}/r0?tls-psk-file={unknown}",
                 check=False)
    assert result.returncode != 0 and "export-size" not in result.stdout


# --- allow mode, config refusals at `up` ---

def test_allow_mode_serves_both(tmp_path, certs):
    requires_commands("nbdinfo")
    gen = serve(tmp_path, f"127.0.0.1:{free_port()}",
                f"export-tls-certs {certs.server}; export-tls allow;")
    served = next(gen)
    try:
        plain = served.uri.replace("nbds://", "nbd://")
        assert "without TLS" in run("nbdinfo", plain).stdout
        tls = with_query(served.uri, f"tls-certificates={certs.client}")
        assert "with TLS" in run("nbdinfo", tls).stdout
    finally:
        gen.close()


def test_up_refuses_a_clear_text_export_on_the_network(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(MiB))
    config = tmp_path / "replica.conf"
    # 192.0.2.1 (TEST-NET-1) is never bound or contacted: the refusal comes first.
    config.write_text(f"resource r0 {{\n  on alpha {{\n    disk {disk};\n"
                      f"    export 192.0.2.1:10809;\n  }}\n}}\n")
    served = Served(tmp_path, config, tmp_path / "run", disk, MiB, "")
    try:
        result = served.ctl("up", "r0", check=False)
        assert result.returncode != 0
        assert f"{config}:4: resource 'r0': on 'alpha': export 192.0.2.1:10809: refusing a TCP " \
               f"export on a non-loopback address without TLS" in result.stderr
        assert "export-insecure yes;" in result.stderr
    finally:
        served.ctl("down", "r0", check=False)


def test_up_names_the_export_when_the_certificates_are_missing(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(MiB))
    config = tmp_path / "replica.conf"
    config.write_text(f"resource r0 {{\n  on alpha {{\n    disk {disk};\n"
                      f"    export 127.0.0.1:{free_port()};\n"
                      f"    export-tls-certs {tmp_path}/nowhere;\n  }}\n}}\n")
    served = Served(tmp_path, config, tmp_path / "run", disk, MiB, "")
    try:
        result = served.ctl("up", "r0", check=False)
        assert result.returncode != 0
        assert f"{config}:4: resource 'r0': on 'alpha': export TLS: " in result.stderr
        assert f"{tmp_path}/nowhere/server-cert.pem" in result.stderr
    finally:
        served.ctl("down", "r0", check=False)
