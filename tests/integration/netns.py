# SPDX-License-Identifier: GPL-2.0-or-later
"""Two replica nodes in two network namespaces joined by a veth pair, for tests and the demo.

    PFX-a [vPFXa 10.99.N.1/24] <--veth--> [vPFXb 10.99.N.2/24] PFX-b

Node `alpha` lives in PFX-a, `beta` in PFX-b (alpha's name sorts first: it connects, beta
accepts). Backing files and run directories are on tmpfs under /dev/shm/PFX; each node's NBD
export is a unix socket there, so NBD clients run on the host, outside the namespaces.
`replicactl` runs inside the node's namespace (`ip netns exec`) and starts `replicad` there.

The namespaces, the veth pair and their cleanup are scripts/lab.py's NetLab: close() always kills
every process left in the two namespaces (all started by us: the namespaces are ours), deletes the
namespaces (which removes the veth pair), then the tmpfs directory. Waiting is scripts/waiting.py.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.lab import NetLab, kill_namespace_processes
from scripts.waiting import wait_for

BIN = Path(sys.executable).parent
NODES = ("alpha", "beta")
MiB = 1 << 20
_counter = itertools.count()

DEFAULT_NET = "protocol C; ping-int 3; ping-timeout 5; timeout 15; connect-int 2;"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


class TwoNodes:
    def __init__(self, size: int = 32 * MiB, net: str = DEFAULT_NET, disk: str = "",
                 handlers: str = "", node_net: dict[str, str] | None = None,
                 root: str = "/dev/shm", external_md: bool = False,
                 disk_dirs: dict[str, Path] | None = None, device: str = "", startup: str = "",
                 prefix: str = "rpl"):
        n = next(_counter)
        assert len(prefix) == 3, "three letters: the veth names keep what follows them"
        self.prefix = f"{prefix}{os.getpid() % 100000}x{n}"
        self.subnet = (os.getpid() * 7 + n) % 200 + 20
        self.dir = Path(root) / self.prefix
        self.lab = NetLab(self.prefix)
        self.ns = {"alpha": self.lab.ns("a"), "beta": self.lab.ns("b")}
        self.veth = {"alpha": f"v{self.prefix[3:]}a"[-15:], "beta": f"v{self.prefix[3:]}b"[-15:]}
        self.addr = {"alpha": f"10.99.{self.subnet}.1", "beta": f"10.99.{self.subnet}.2"}
        self.size = size
        self.net, self.disk_opts, self.handlers = net, disk, handlers
        self.node_net = node_net or {}
        self.external_md = external_md
        self.disk_dirs = disk_dirs or {}     # node -> directory of its backing file (a test's mount)
        self.device = device                 # e.g. "device minor 5; device-kind fuse;"
        self.startup = startup               # startup{} options, e.g. "degr-wfc-timeout 2;"

    # --- setup / teardown ---------------------------------------------------------------

    def __enter__(self) -> TwoNodes:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        self.lab.veth_pair("a", "b", f"{self.addr['alpha']}/24", f"{self.addr['beta']}/24",
                           if_a=self.veth["alpha"], if_b=self.veth["beta"])
        for node in NODES:
            (self.dir / node).mkdir()
            with open(self.disk_path(node), "wb") as f:
                f.truncate(self.size)
            self.write_config(node)

    def write_config(self, node: str) -> None:
        hosts = "".join(f"""
    on {n} {{
        disk {self.disk_path(n)};
        meta-disk {self.dir / (n + '.md') if self.external_md else 'internal'};
        address {self.addr[n]}:7789;
        export unix:{self.dir / n / 'r0.sock'};
    }}""" for n in NODES)
        text = self.handlers.replace("{node}", node).replace("{dir}", str(self.dir))
        handlers = f"\n    handlers {{ {text} }}" if text else ""
        disk = f"\n    disk {{ {self.disk_opts} }}" if self.disk_opts else ""
        device = f"\n    {self.device}" if self.device else ""
        device += f"\n    startup {{ {self.startup} }}" if self.startup else ""
        self.config(node).write_text(f"""\
resource r0 {{{device}
    net {{ {self.net} {self.node_net.get(node, '')} }}{disk}{handlers}{hosts}
}}
""")

    def close(self) -> None:
        try:
            self.lab.close()
            if self.device:     # what a killed replicad left: its loop device, FUSE mount, links
                for node in NODES:
                    self.release_device(node)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def release_device(self, node: str) -> list[str]:
        """`replicactl down --force` after the node's replicad died (blockdev's crash record)."""
        from replica.blockdev import cleanup_after_crash
        return cleanup_after_crash(str(self.run_dir(node)), "r0")

    # --- per node ------------------------------------------------------------------------

    def config(self, node: str) -> Path:
        return self.dir / node / "replica.conf"

    def disk_path(self, node: str) -> Path:
        if node in self.disk_dirs:
            return self.disk_dirs[node] / f"{self.prefix}-{node}.img"
        return self.dir / f"{node}.img"

    def run_dir(self, node: str) -> Path:
        return self.dir / node / "run"

    def uri(self, node: str) -> str:
        return f"nbd+unix:///r0?socket={self.dir / node / 'r0.sock'}"

    def ctl(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["ip", "netns", "exec", self.ns[node], str(BIN / "replicactl"), "--config",
               str(self.config(node)), "--node", node, "--run-dir", str(self.run_dir(node)), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        if check and res.returncode != 0:
            raise AssertionError(f"{node}: replicactl {' '.join(args)}: exit {res.returncode}: "
                                 f"{res.stderr.strip()}\n--- log ---\n{self.log(node)[-3000:]}")
        return res

    def status(self, node: str) -> dict:
        out = json.loads(self.ctl(node, "status", "--json").stdout)
        return out[0] if out else {}

    def log(self, node: str) -> str:
        try:
            return (self.run_dir(node) / "replicad.log").read_text()
        except FileNotFoundError:
            return ""

    def daemon_pid(self, node: str) -> int | None:
        try:
            return int((self.run_dir(node) / "replicad.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def kill_daemon(self, node: str) -> None:
        """kill -9 every process of the node's namespace (its replicad, our handlers)."""
        kill_namespace_processes(self.ns[node], timeout_s=10)

    def link(self, up: bool) -> None:
        self.lab.set_link(self.ns["alpha"], self.veth["alpha"], up)

    def wait(self, node: str, pred, what: str, timeout: float = 30.0) -> dict:
        """The node's status once pred(status) holds; on timeout the last status and log tail."""
        last: dict = {}

        def check() -> dict | None:
            nonlocal last
            last = self.status(node)
            return last if last and pred(last) else None

        def details() -> str:
            keys = ("role", "peer_role", "connection", "replication", "disk_state",
                    "peer_disk_state", "link_error")
            return (f"{node}: last status: {json.dumps({k: last.get(k) for k in keys})}"
                    f"\n--- log ---\n{self.log(node)[-3000:]}")
        return wait_for(check, f"{node}: {what}", timeout, interval_s=0.1, details=details)

    def wait_synced(self, timeout: float = 60.0) -> None:
        for node in NODES:
            self.wait(node, lambda s: s["cstate"] == "Connected" and s["disk_state"] == "UpToDate"
                      and s["peer_disk_state"] == "UpToDate", "Connected UpToDate/UpToDate",
                      timeout)

    def wait_connected(self, timeout: float = 30.0) -> None:
        for node in NODES:
            self.wait(node, lambda s: s["connection"] == "Connected", "Connected", timeout)

    def read_disk(self, node: str, offset: int, length: int) -> bytes:
        with open(self.disk_path(node), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def data_size(self) -> int:
        return self.status("alpha")["size"]

    def disks_equal(self, length: int | None = None, chunk: int = 4 * MiB) -> bool:
        length = length or self.data_size()
        with open(self.disk_path("alpha"), "rb") as a, open(self.disk_path("beta"), "rb") as b:
            done = 0
            while done < length:
                n = min(chunk, length - done)
                if a.read(n) != b.read(n):
                    return False
                done += n
        return True

    def first_difference(self, length: int) -> int | None:
        with open(self.disk_path("alpha"), "rb") as a, open(self.disk_path("beta"), "rb") as b:
            for off in range(0, length, 4096):
                if a.read(4096) != b.read(4096):
                    return off
        return None

    # --- common sequences ----------------------------------------------------------------

    def create_and_up(self, connected: bool = True) -> None:
        """create-md and up on both nodes; then wait until they are Connected, unless the test
        expects them not to connect."""
        for node in NODES:
            self.ctl(node, "create-md", "r0")
        for node in NODES:
            self.ctl(node, "up", "r0")
        if connected:
            self.wait_connected()

    def initial_sync(self, node: str = "alpha", timeout: float = 60.0) -> None:
        self.ctl(node, "primary", "--force", "r0")
        self.wait_synced(timeout)
