# SPDX-License-Identifier: GPL-2.0-or-later
"""Two-node hbd lab in network namespaces, for integration/e2e tests and scripts/failover_timing.py.

Topology (scripts/lab.py's switched_lan; every name carries a unique prefix; close() kills every
process started here and deletes every namespace, even after a failed setup)::

    PFX-ha1 [eth0 10.0.17.1/24] --veth--+
    PFX-ha2 [eth0 10.0.17.2/24] --veth--+-- br0 in PFX-sw (a switch)
    PFX-cli [eth0 10.0.17.100/24] -veth-+

Each node gets DIR/NODE/ha.d (examples/seed's ha.cf, haresources, authkeys, with only
the timing lines replaced when asked) and DIR/NODE/run.  The seed's haresources
(`ha1 10.0.17.26 datadisk httpd mysql`) needs `httpd` and `mysql`: test LSB
services are written to ha.d/resource.d; each keeps a state file in its node's
run dir and fails its start when ha.d/fail-NAME exists.  `datadisk` is our real
script; it calls $REPLICACTL, here a small stand-in that records the role in
the run dir (until replicactl exists), so promotion/demotion is observable.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import IO

from scripts.lab import NetLab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = os.path.join(REPO, "examples", "seed")
PYTHON = sys.executable
VIP = "10.0.17.26"
ADDRS = {"ha1": "10.0.17.1", "ha2": "10.0.17.2", "cli": "10.0.17.100"}

SERVICE = """#!/bin/sh
# test LSB service: state file in the node's run dir; fails to start if $HBD_CONFIG_DIR/fail-NAME exists
NAME=$(basename "$0")
STATE="$HBD_RUN_DIR/svc-$NAME"
case "$1" in
  start) [ -e "$HBD_CONFIG_DIR/fail-$NAME" ] && { echo "$NAME: told to fail" >&2; exit 1; }
         echo "$(date +%s.%N)" > "$STATE"; echo "$NAME start" >> "$HBD_RUN_DIR/svc-log"; exit 0 ;;
  stop)  rm -f "$STATE"; echo "$NAME stop" >> "$HBD_RUN_DIR/svc-log"; exit 0 ;;
  status) if [ -e "$STATE" ]; then echo "$NAME is running"; exit 0; fi; echo "$NAME is stopped"; exit 3 ;;
  *) exit 2 ;;
esac
"""

REPLICACTL = """#!/bin/sh
# stand-in for replicactl (role only): records Primary/Secondary in $HBD_RUN_DIR/replica-role
F="$HBD_RUN_DIR/replica-role"
case "$1" in
  primary) echo Primary > "$F"; echo "primary $2" >> "$HBD_RUN_DIR/svc-log" ;;
  secondary) echo Secondary > "$F"; echo "secondary $2" >> "$HBD_RUN_DIR/svc-log" ;;
  role) r=$(cat "$F" 2>/dev/null || echo Secondary); echo "$r/Unknown" ;;
  *) echo "replicactl stand-in: unsupported $1" >&2; exit 1 ;;
esac
"""

STONITH_EXTERNAL = """#!/bin/sh
# external STONITH test plugin: hosts from $hostlist; reset fails while $STONITH_FAIL_FLAG exists
case "$1" in
  getconfignames) echo hostlist; echo flagdir ;;
  gethosts) for h in $hostlist; do echo $h; done ;;
  reset) echo "reset $2" >> "$flagdir/stonith-calls"; [ -e "$flagdir/stonith-fail" ] && exit 1; exit 0 ;;
  status) exit 0 ;;
  on|off) exit 0 ;;
  *) exit 1 ;;
esac
"""


class Lab:
    def __init__(self, workdir: str, prefix: str | None = None):
        self.dir = workdir
        self.prefix = prefix or f"hbt{os.getpid() % 100000}"
        self.net = NetLab(self.prefix)
        self.ns = {n: self.net.ns(n) for n in ("ha1", "ha2", "cli", "sw")}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list[IO[str]] = []

    # --- topology --------------------------------------------------------------------------
    def setup(self) -> Lab:
        try:
            self.net.switched_lan({n: f"{ADDRS[n]}/24" for n in ("ha1", "ha2", "cli")})
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """hbd gets SIGKILL by PID, then the lab removes what is left in the namespaces (the
        ARP senders IPaddr started) and the namespaces."""
        try:
            for name in list(self.procs):
                self.kill(name, signal.SIGKILL)
        finally:
            self.net.close()
            for f in self.logs:
                f.close()
            self.logs = []

    def exec(self, n: str, *argv: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.net.run(self.ns[n], *argv, check=check, timeout=timeout)

    def link(self, n: str, up: bool) -> None:
        self.net.set_link(self.ns[n], "eth0", up)

    # --- node files -----------------------------------------------------------------------
    def node_dir(self, n: str) -> str:
        return os.path.join(self.dir, n)

    def config_dir(self, n: str) -> str:
        return os.path.join(self.dir, n, "ha.d")

    def run_dir(self, n: str) -> str:
        return os.path.join(self.dir, n, "run")

    def write_config(self, n: str, *, timing: dict | None = None, extra_hacf: str = "",
                     authkeys: str | None = None, haresources: str | None = None) -> None:
        cfg = self.config_dir(n)
        os.makedirs(os.path.join(cfg, "resource.d"), exist_ok=True)
        os.makedirs(self.run_dir(n), exist_ok=True)
        with open(os.path.join(SEED, "ha.cf")) as f:
            lines = f.read().splitlines()
        timing = timing or {}
        out = []
        for line in lines:
            key = line.split()[0] if line.split() else ""
            if key in timing:
                out.append(f"{key} {timing.pop(key)}")
            else:
                out.append(line)
        out += [f"{k} {v}" for k, v in timing.items()]
        if extra_hacf:
            out.append(extra_hacf)
        with open(os.path.join(cfg, "ha.cf"), "w") as f:
            f.write("\n".join(out) + "\n")
        if haresources is None:
            shutil.copy(os.path.join(SEED, "haresources"), os.path.join(cfg, "haresources"))
        else:
            with open(os.path.join(cfg, "haresources"), "w") as f:
                f.write(haresources)
        keys = os.path.join(cfg, "authkeys")
        if authkeys is None:
            shutil.copy(os.path.join(SEED, "authkeys"), keys)
        else:
            with open(keys, "w") as f:
                f.write(authkeys)
        os.chmod(keys, 0o600)
        for svc in ("httpd", "mysql"):
            path = os.path.join(cfg, "resource.d", svc)
            with open(path, "w") as f:
                f.write(SERVICE)
            os.chmod(path, 0o755)
        path = os.path.join(self.node_dir(n), "replicactl")
        with open(path, "w") as f:
            f.write(REPLICACTL)
        os.chmod(path, 0o755)

    def write_stonith_plugin(self, n: str) -> str:
        d = os.path.join(self.config_dir(n), "stonith.d", "external")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "testfence")
        with open(path, "w") as f:
            f.write(STONITH_EXTERNAL)
        os.chmod(path, 0o755)
        return path

    # --- processes ----------------------------------------------------------------------------
    def start_hbd(self, n: str, *extra: str) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["REPLICACTL"] = os.path.join(self.node_dir(n), "replicactl")
        log = open(os.path.join(self.node_dir(n), "hbd.log"), "a")
        self.logs.append(log)
        p = self.net.popen(self.ns[n], [PYTHON, "-m", "hbd", "-f", "--config-dir", self.config_dir(n),
                                        "--node", n, "--run-dir", self.run_dir(n), *extra],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.procs[n] = p
        return p

    def kill(self, n: str, sig=signal.SIGKILL, wait: bool = True) -> None:
        p = self.procs.get(n)
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(sig)   # `ip netns exec` execs, so this is hbd itself
        if wait:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.poll() is not None:
            del self.procs[n]

    def hbctl(self, n: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO
        return subprocess.run([PYTHON, "-m", "hbd.ctl", "--run-dir", self.run_dir(n), *argv],
                              capture_output=True, text=True, env=env, timeout=timeout)

    def log_text(self, n: str) -> str:
        try:
            with open(os.path.join(self.node_dir(n), "hbd.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # --- observations ---------------------------------------------------------------------------
    def has_vip(self, n: str, vip: str = VIP) -> bool:
        out = self.exec(n, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return f" {vip}/" in out

    def service_running(self, n: str, svc: str) -> bool:
        return os.path.exists(os.path.join(self.run_dir(n), f"svc-{svc}"))

    def replica_role(self, n: str) -> str:
        try:
            with open(os.path.join(self.run_dir(n), "replica-role")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return "Secondary"

    def holds_all(self, n: str) -> bool:
        return (self.has_vip(n) and self.service_running(n, "httpd") and self.service_running(n, "mysql")
                and self.replica_role(n) == "Primary")

    def holds_none(self, n: str) -> bool:
        return (not self.has_vip(n) and not self.service_running(n, "httpd")
                and not self.service_running(n, "mysql") and self.replica_role(n) != "Primary")

    def ping_vip(self, vip: str = VIP, timeout_s: float = 1.0) -> bool:
        return self.exec("cli", "ping", "-c", "1", "-W", str(max(1, int(timeout_s))), vip).returncode == 0

    def cli_neighbor_mac(self, ip: str = VIP) -> str | None:
        out = self.exec("cli", "ip", "neigh", "show", ip).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None

    def mac(self, n: str) -> str:
        out = self.exec(n, "cat", "/sys/class/net/eth0/address").stdout.strip()
        return out

    def logs_text(self, *nodes: str) -> str:
        """The hbd logs of `nodes` (default both), for timeout messages."""
        return "\n".join(f"--- {n} hbd.log ---\n{self.log_text(n)[-3000:]}" for n in nodes or ("ha1", "ha2"))
