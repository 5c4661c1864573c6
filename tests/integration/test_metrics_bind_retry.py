# SPDX-License-Identifier: GPL-2.0-or-later
"""`--metrics ADDR:PORT` on a port another process holds: hacommon.metrics_server retries for a
bounded time (an old daemon still stopping lets go), then refuses naming the address; hbd exits
1 with that message on stderr before it detaches. Loopback only, no root."""
import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from hacommon import metrics_server
from hacommon.metrics_server import MetricsServer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_port_released_while_retrying_is_taken_and_served():
    registry = CollectorRegistry()
    Counter("t_things", "things", registry=registry).inc(2)
    taken = held_port()
    port = taken.getsockname()[1]
    release = threading.Timer(0.6, taken.close)
    release.start()
    t0 = time.monotonic()
    try:
        server = MetricsServer(("127.0.0.1", port), registry, name="hbd", bind_retry_s=10).start()
    finally:
        release.cancel()
        taken.close()
    waited = time.monotonic() - t0
    try:
        assert server.address == ("127.0.0.1", port)
        assert waited >= 0.5, waited          # it did wait for the holder, not bind beside it
        with urllib.request.urlopen(server.url(), timeout=5) as r:
            assert "t_things_total 2.0" in r.read().decode()
    finally:
        server.close()


def test_port_held_throughout_fails_after_the_bound_naming_the_address():
    with held_port() as taken:
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(OSError) as exc:
            MetricsServer(("127.0.0.1", port), CollectorRegistry(), name="replicad", bind_retry_s=0.5)
        waited = time.monotonic() - t0
    assert exc.value.errno == errno.EADDRINUSE
    assert str(exc.value) == (
        f"[Errno 98] replicad: metrics: cannot listen on 127.0.0.1:{port}: Address already in use "
        f"(still in use after 0.5 s: another process listens there; if it is an old replicad still "
        f"stopping, wait for it, else choose another --metrics address)")
    # bounded: it gave up after the retry time (plus one retry interval), not at once, not later
    assert 0.5 <= waited < 0.5 + metrics_server.BIND_RETRY_INTERVAL_S + 1.0, waited


def test_other_bind_errors_are_not_retried():
    t0 = time.monotonic()
    with pytest.raises(OSError) as exc:      # an address this host does not have
        MetricsServer(("192.0.2.1", 9), CollectorRegistry(), name="hbd", bind_retry_s=5)
    assert exc.value.errno == errno.EADDRNOTAVAIL
    assert str(exc.value).startswith("[Errno 99] hbd: metrics: cannot listen on 192.0.2.1:9: ")
    assert time.monotonic() - t0 < 1.0


def test_hbd_with_its_metrics_port_held_exits_1_naming_the_address(tmp_path):
    conf = tmp_path / "ha.d"
    shutil.copytree(os.path.join(REPO, "examples", "seed"), conf)
    os.chmod(conf / "authkeys", 0o600)
    code = ("import sys\nfrom hacommon import metrics_server\nmetrics_server.BIND_RETRY_S = 0.5\n"
            "from hbd.daemon import main\nsys.exit(main(sys.argv[1:]))")
    with held_port() as taken:
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", code, "-f", "--config-dir", str(conf), "--node", "ha1",
                            "--run-dir", str(tmp_path / "run"), "--metrics", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        waited = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"hbd: metrics: cannot listen on 127.0.0.1:{port}: Address already in use " \
           f"(still in use after 0.5 s" in r.stderr, r.stderr
    assert waited >= 0.5
    assert not (tmp_path / "run" / "hbd.pid").exists()     # it never started
