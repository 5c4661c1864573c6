# SPDX-License-Identifier: GPL-2.0-or-later
"""TLS sessions in C (csrc/tls.c) over socketpairs: handshakes with mutual certificate checks,
the one-line reasons for every refusal, PSK, and whole reads and writes in both directions at
once from several threads (one session, one mutex, poll outside it: csrc/tls.h)."""
import hashlib
import os
import re
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica.mirror import TlsContext, TlsError, TlsSession
from tests.tls_certs import make_ca, make_node_cert

TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(d), make_ca(d, "other CA")
    return {
        "dir": d, "ca": ca.certfile, "other_ca": other_ca.certfile,
        "alpha": make_node_cert(d, ca, "alpha", ("127.0.0.1",)),
        "beta": make_node_cert(d, ca, "beta", ("10.99.0.2",)),
        "beta_expired": make_node_cert(d, ca, "beta", expired=True),
        "beta_other": make_node_cert(d, other_ca, "beta", prefix="other-"),
    }


def ctx(pki, server, node, ca="ca", verify=True):
    cert = pki[node] if node else None
    return TlsContext(server=server, certfile=str(cert.certfile) if cert else None,
                      keyfile=str(cert.keyfile) if cert else None, cafile=str(pki[ca]), verify_peer=verify)


def handshake_pair(client_ctx, server_ctx, client_name=None, server_name=None, timeout_s=TIMEOUT_S):
    """Both ends of a socketpair at once: (client result, server result, sockets); a result is a
    TlsSession or the TlsError it raised."""
    a, b = socket.socketpair()
    out = {}

    def run(key, context, sock, name):
        try:
            out[key] = context.handshake(sock.fileno(), timeout_s, name)
        except TlsError as e:
            out[key] = e
            sock.shutdown(socket.SHUT_RDWR)     # as the daemon does: close on failure
    t = threading.Thread(target=run, args=("server", server_ctx, b, server_name))
    t.start()
    run("client", client_ctx, a, client_name)
    t.join()
    return out["client"], out["server"], (a, b)


def close_all(*things):
    for x in things:
        if isinstance(x, TlsSession):
            x.close()
        elif isinstance(x, socket.socket):
            x.close()


def test_mutual_authentication_and_bytes_both_ways(pki):
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"), client_name="beta",
                                 server_name="127.0.0.1")
    try:
        assert isinstance(c, TlsSession) and isinstance(s, TlsSession), (c, s)
        assert c.describe().startswith("TLSv1.3 TLS_")
        assert "CN=beta" in c.describe() and "CN=alpha" in s.describe()
        c.write_all(b"hello from alpha")
        assert s.read_exact(16, TIMEOUT_S) == b"hello from alpha"
        s.write_all(b"and from beta")
        assert c.read_exact(13, TIMEOUT_S) == b"and from beta"
    finally:
        close_all(c, s, *socks)


def test_close_sends_close_notify_and_the_peer_reads_eof(pki):
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"))
    try:
        c.close()
        with pytest.raises(ConnectionResetError):
            s.read_exact(1, TIMEOUT_S)
        assert os.get_blocking(socks[0].fileno()), "close restores the fd's blocking mode"
    finally:
        close_all(c, s, *socks)


def test_a_read_times_out(pki):
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"))
    try:
        with pytest.raises(TimeoutError):
            s.read_exact(1, 0.2)
    finally:
        close_all(c, s, *socks)


def test_concurrent_reads_and_writes_on_one_session(pki):
    """Each side writes 16 MiB from one thread while another thread reads the other side's
    16 MiB from the same session. A socketpair holds a few hundred KiB, so with a lock held
    across a blocking call (or a blocking fd) both writers would wait for ever."""
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"))
    size, chunk = 16 << 20, 200_003          # odd chunks: records straddle the reads
    data = {"c": os.urandom(size), "s": os.urandom(size)}
    got, errors = {}, []

    def writer(sess, blob):
        try:
            for off in range(0, len(blob), chunk):
                sess.write_all(blob[off:off + chunk])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader(sess, key):
        try:
            h = hashlib.sha256()
            left = size
            while left:
                n = min(left, 65_537)
                h.update(sess.read_exact(n, 60.0))
                left -= n
            got[key] = h.hexdigest()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(c, data["c"])), threading.Thread(target=writer, args=(s, data["s"])),
               threading.Thread(target=reader, args=(s, "from_c")), threading.Thread(target=reader, args=(c, "from_s"))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "deadlock: a thread is still blocked"
        assert errors == []
        assert got == {"from_c": hashlib.sha256(data["c"]).hexdigest(),
                       "from_s": hashlib.sha256(data["s"]).hexdigest()}
    finally:
        for sock in socks:
            sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        close_all(c, s, *socks)


def test_a_certificate_from_another_ca_is_refused(pki):
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta_other"))
    close_all(*socks)
    assert str(c) == "tls: certificate verify failed: unable to get local issuer certificate"
    assert isinstance(s, TlsError) and str(s).startswith("tls: peer refused the handshake: alert unknown CA")


def test_an_expired_certificate_is_refused_with_the_reason(pki):
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta_expired"))
    close_all(*socks)
    assert str(c) == "tls: certificate verify failed: certificate has expired"
    assert str(s) == "tls: peer refused the handshake: alert certificate expired"
    # the other way round: the server finds the client's certificate expired
    c, s, socks = handshake_pair(ctx(pki, False, "beta_expired"), ctx(pki, True, "alpha"))
    try:
        assert str(s) == "tls: certificate verify failed: certificate has expired"
        # TLS 1.3: the client is done before the server checks its certificate; the server's
        # alert reaches it on its first read
        assert isinstance(c, TlsSession)
        with pytest.raises(TlsError, match="^tls: peer refused the handshake: alert certificate expired$"):
            c.read_exact(1, TIMEOUT_S)
    finally:
        close_all(c, *socks)


def test_a_client_without_a_certificate_is_refused(pki):
    c, s, socks = handshake_pair(ctx(pki, False, None), ctx(pki, True, "beta"))
    try:
        assert str(s) == "tls: peer did not present a certificate"
        with pytest.raises(TlsError, match="^tls: peer requires a certificate and we presented none$"):
            c.read_exact(1, TIMEOUT_S)
    finally:
        close_all(c, *socks)


def test_the_peer_name_is_checked_against_its_certificate(pki):
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"), client_name="gamma")
    close_all(*socks)
    assert str(c) == "tls: certificate verify failed: hostname mismatch"
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"), client_name="10.99.0.3")
    close_all(*socks)
    assert str(c) == "tls: certificate verify failed: IP address mismatch"
    c, s, socks = handshake_pair(ctx(pki, False, "alpha"), ctx(pki, True, "beta"), client_name="10.99.0.2",
                                 server_name="127.0.0.2")
    close_all(c, *socks)
    assert str(s) == "tls: certificate verify failed: IP address mismatch"


def test_a_plain_peer_is_refused(pki):
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x83\x74\x05\x09" + bytes(60))     # a plain replication frame header
        with pytest.raises(TlsError, match=r"^tls: peer does not speak TLS: "):
            ctx(pki, True, "beta").handshake(a.fileno(), TIMEOUT_S)
    finally:
        close_all(a, b)


def test_a_silent_peer_times_out(pki):
    a, b = socket.socketpair()
    try:
        with pytest.raises(TlsError, match=r"^tls: handshake timed out after 200 ms$"):
            ctx(pki, False, "alpha").handshake(a.fileno(), 0.2)
    finally:
        close_all(a, b)


def test_a_peer_that_hangs_up_is_reported(pki):
    a, b = socket.socketpair()
    b.close()
    try:
        with pytest.raises(TlsError, match=r"^tls: peer closed the connection during the handshake"):
            ctx(pki, False, "alpha").handshake(a.fileno(), TIMEOUT_S)
    finally:
        a.close()


def write_psk(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_psk_only(tmp_path):
    key = os.urandom(32).hex()
    srv = TlsContext(server=True, psk_file=write_psk(tmp_path / "srv.psk", ["# keys", "", "other:" + "11" * 32,
                                                                           "alpha:" + key]))
    cli = TlsContext(server=False, psk_file=write_psk(tmp_path / "cli.psk", ["alpha:" + key]), psk_identity="alpha")
    c, s, socks = handshake_pair(cli, srv)
    try:
        assert isinstance(c, TlsSession) and isinstance(s, TlsSession), (c, s)
        assert s.describe().endswith(" psk alpha")
        c.write_all(b"x" * 100_000)
        assert s.read_exact(100_000, TIMEOUT_S) == b"x" * 100_000
    finally:
        close_all(c, s, *socks)
    wrong = TlsContext(server=False, psk_file=write_psk(tmp_path / "wrong.psk", ["alpha:" + "22" * 32]))
    c, s, socks = handshake_pair(wrong, srv)
    close_all(c, s, *socks)
    assert isinstance(c, TlsError) and isinstance(s, TlsError)


@pytest.mark.parametrize("kwargs, message", [
    ({"server": True}, "tls: a TLS server needs a certificate or a psk file"),
    ({"server": False, "verify_peer": True}, "tls: verifying the peer needs a CA file"),
    ({"server": False, "certfile": "/nonexistent.crt", "keyfile": "/nonexistent.key"},
     "tls: certificate file /nonexistent.crt: "),
    ({"server": False, "certfile": "x.crt"}, "tls: a certificate needs its key file and a key its certificate"),
    ({"server": False, "cafile": "/nonexistent-ca.crt"}, "tls: CA file /nonexistent-ca.crt: "),
    ({"server": False, "psk_file": "/nonexistent.psk"}, "tls: psk file /nonexistent.psk: No such file or directory"),
])
def test_context_errors(kwargs, message):
    with pytest.raises(TlsError) as e:
        TlsContext(**kwargs)
    assert str(e.value).startswith(message)


def test_a_key_that_does_not_match_its_certificate(pki):
    with pytest.raises(TlsError, match="does not match certificate"):
        TlsContext(server=True, certfile=str(pki["alpha"].certfile), keyfile=str(pki["beta"].keyfile))


@pytest.mark.parametrize("lines, message", [
    (["alpha"], "psk file {}:1: expected identity:hexkey"),
    (["# only a comment"], "psk file {}: no identity:hexkey line"),
    (["ok:00", ":00"], "psk file {}:2: identity must be 1..128 bytes"),
    (["alpha:abc"], "psk file {}:1: key must be 1..64 bytes of hex"),
    (["alpha:zz"], "psk file {}:1: key is not hexadecimal"),
])
def test_psk_file_errors(tmp_path, lines, message):
    path = write_psk(tmp_path / "bad.psk", lines)
    with pytest.raises(TlsError) as e:
        TlsContext(server=True, psk_file=path)
    assert str(e.value) == "tls: " + message.format(path)
    with pytest.raises(TlsError, match="no key for identity 'nobody'"):
        TlsContext(server=False, psk_file=write_psk(tmp_path / "ok.psk", ["alpha:00"]), psk_identity="nobody")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=600))
def test_psk_file_parser_fuzz(tmp_path, content):
    """Any file content gives a context or a located TlsError: never a crash."""
    path = tmp_path / "fuzz.psk"
    path.write_bytes(content)
    try:
        TlsContext(server=True, psk_file=str(path)).close()
    except TlsError as e:
        assert str(e).startswith(f"tls: psk file {path}")


def test_interoperates_with_another_tls_stack_and_falls_back_to_tls12(pki):
    """Python's ssl module as the peer (server capped at TLS 1.2, requiring our certificate)."""
    import ssl
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["beta"].certfile, pki["beta"].keyfile)
    server.load_verify_locations(pki["ca"])
    server.verify_mode = ssl.CERT_REQUIRED
    server.maximum_version = ssl.TLSVersion.TLSv1_2
    a, b = socket.socketpair()
    seen = {}

    def serve():
        with server.wrap_socket(b, server_side=True) as ss:
            seen["peer"] = dict(x[0] for x in ss.getpeercert()["subject"])["commonName"]
            seen["got"] = ss.recv(5)
            ss.sendall(b"pong!")
    t = threading.Thread(target=serve)
    t.start()
    ours = None
    try:
        ours = ctx(pki, False, "alpha").handshake(a.fileno(), TIMEOUT_S, "beta")
        ours.write_all(b"ping!")
        assert ours.read_exact(5, TIMEOUT_S) == b"pong!"
        assert re.fullmatch(r"TLSv1\.2 ECDHE-ECDSA-AES(128|256)-GCM-SHA(256|384) peer /CN=beta", ours.describe())
    finally:
        t.join(TIMEOUT_S)
        close_all(ours, a)
    assert seen == {"peer": "alpha", "got": b"ping!"}
