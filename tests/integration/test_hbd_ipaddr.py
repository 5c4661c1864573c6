# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.ipaddr and the IPaddr/Filesystem scripts for real, inside a network namespace we create.

A veth pair (nsA:eth0 10.9.0.1/24 <-> nsB:eth0 10.9.0.2/24) and a second link (nsA:dum0
192.168.77.1/24, a veth too): subnet-based interface choice, idempotent add, remove, gratuitous ARP seen on
the wire in both request and reply form, with the configured count.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from scripts.lab import NetLab
from tests.conftest import requires_commands, requires_root

pytestmark = pytest.mark.root
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    requires_root()
    requires_commands("ip")
    with NetLab(f"hbip{os.getpid()}") as lab:
        a, b = lab.veth_pair("a", "b", "10.9.0.1/24", "10.9.0.2/24")
        # a second link (the kernel here has no dummy module): veth dum0 <-> nsB:peer1
        lab.add_veth(a, "dum0", b, "peer1")
        lab.set_link(b, "peer1", True)
        lab.add_address(a, "dum0", "192.168.77.1/24")
        lab.set_link(a, "dum0", True)
        yield a, b


def in_ns(ns, code, timeout=30):
    env = dict(os.environ, PYTHONPATH=REPO)
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def addrs(ns, dev):
    return sh("ip", "-n", ns, "-4", "-o", "addr", "show", "dev", dev).stdout


def test_add_picks_interface_by_subnet_and_is_idempotent(netns):
    a, _ = netns
    out = in_ns(a, """
        import json
        from hbd import ipaddr
        r1 = ipaddr.add_address(None, "192.168.77.50")
        r2 = ipaddr.add_address(None, "192.168.77.50/24")
        r3 = ipaddr.add_address("eth0", "10.9.0.50/24", label="eth0:vip")
        has = [ipaddr.has_address(None, "192.168.77.50"), ipaddr.has_address("eth0", "192.168.77.50")]
        print(json.dumps({"r1": r1, "r2": r2, "r3": r3, "has": has}))
    """)
    assert out["r1"] == ["dum0", True] and out["r2"] == ["dum0", False] and out["r3"] == ["eth0", True]
    assert out["has"] == [True, False]
    listing = addrs(a, "dum0")
    assert listing.count("192.168.77.50/24") == 1 and "brd 192.168.77.255" in listing
    assert "10.9.0.50/24" in addrs(a, "eth0") and "eth0:vip" in addrs(a, "eth0")
    out = in_ns(a, """
        import json
        from hbd import ipaddr
        print(json.dumps([ipaddr.remove_address(None, "192.168.77.50"), ipaddr.remove_address(None, "192.168.77.50"),
                          ipaddr.has_address(None, "192.168.77.50")]))
    """)
    assert out == [True, False, False]
    assert "192.168.77.50" not in addrs(a, "dum0")


def test_no_interface_for_foreign_subnet(netns):
    a, _ = netns
    out = in_ns(a, """
        import json
        from hbd import ipaddr
        try:
            ipaddr.add_address(None, "172.31.0.9")
            print(json.dumps("added"))
        except ipaddr.IpAddrError as e:
            print(json.dumps(str(e)))
    """)
    assert out.startswith("ipaddr: no interface for 172.31.0.9: no configured subnet contains it")


def test_gratuitous_arp_request_and_reply_on_the_wire(netns):
    a, b = netns
    listener = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c", textwrap.dedent("""
            import json, socket, struct, time
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
            s.bind(("eth0", 0)); s.settimeout(0.2)
            print("ready", flush=True)
            seen = []; end = time.time() + 4
            while time.time() < end:
                try:
                    f = s.recv(100)
                except socket.timeout:
                    continue
                op = struct.unpack("!H", f[20:22])[0]
                spa, tpa = socket.inet_ntoa(f[28:32]), socket.inet_ntoa(f[38:42])
                if spa == "10.9.0.77":
                    seen.append([op, spa, tpa, f[0:6].hex(), f[32:38].hex()])
            print(json.dumps(seen))
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        env = dict(os.environ, PYTHONPATH=REPO, HBD_GARP_COUNT="3", HBD_GARP_INTERVAL_MS="100",
                   HBD_PYTHON=sys.executable)
        r = subprocess.run(["ip", "netns", "exec", a, os.path.join(REPO, "scripts", "resource.d", "IPaddr"),
                            "10.9.0.77/24/eth0", "start"], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0 and "10.9.0.77 added to eth0" in r.stdout, r.stderr
        r = subprocess.run(["ip", "netns", "exec", a, os.path.join(REPO, "scripts", "resource.d", "IPaddr"),
                            "10.9.0.77/24/eth0", "status"], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "running"
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
    seen = json.loads(out.strip().splitlines()[-1])
    requests = [f for f in seen if f[0] == 1]
    replies = [f for f in seen if f[0] == 2]
    assert len(requests) == 3 and len(replies) == 3
    assert all(f[2] == "10.9.0.77" and f[3] == "ffffffffffff" for f in seen)
    assert requests[0][4] == "000000000000" and replies[0][4] == "ffffffffffff"
    env = dict(os.environ, PYTHONPATH=REPO, HBD_PYTHON=sys.executable)
    stop = [os.path.join(REPO, "scripts", "resource.d", "IPaddr"), "10.9.0.77/24/eth0"]
    assert subprocess.run(["ip", "netns", "exec", a, *stop, "stop"], env=env).returncode == 0
    assert subprocess.run(["ip", "netns", "exec", a, *stop, "stop"], env=env).returncode == 0
    r = subprocess.run(["ip", "netns", "exec", a, *stop, "status"], env=env, capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout.strip() == "stopped"


def test_filesystem_script_mounts_and_unmounts(tmp_path):
    requires_root()
    mnt = tmp_path / "data"
    fs = [os.path.join(REPO, "scripts", "resource.d", "Filesystem"), "tmpfs", str(mnt), "tmpfs", "size=1m"]
    try:
        assert subprocess.run([*fs, "start"]).returncode == 0
        assert subprocess.run([*fs, "start"]).returncode == 0           # already mounted
        r = subprocess.run([*fs, "status"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip() == "running"
        with open("/proc/mounts") as f:
            assert any(line.split()[1] == str(mnt) and "size=1024k" in line for line in f)
        assert subprocess.run([*fs, "stop"]).returncode == 0
        assert subprocess.run([*fs, "stop"]).returncode == 0
        assert subprocess.run([*fs, "status"], capture_output=True).returncode == 3
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
