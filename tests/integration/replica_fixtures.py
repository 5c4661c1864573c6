# SPDX-License-Identifier: GPL-2.0-or-later
"""A standalone resource served by a real replicad, started and stopped through replicactl."""
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts.waiting import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Served:
    dir: Path
    config: Path
    run_dir: Path
    disk: Path
    size: int
    uri: str

    def ctl(self, *args, check=True):
        cmd = [str(BIN / "replicactl"), "--config", str(self.config), "--node", "alpha",
               "--run-dir", str(self.run_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=60)

    def daemon_pid(self) -> int | None:
        try:
            return int((self.run_dir / "replicad.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None


def write_config(path: Path, disk: Path, export: str, name="r0") -> None:
    path.write_text(f"""\
resource {name} {{
    on alpha {{
        disk {disk};
        meta-disk internal;
        export {export};
    }}
}}
""")


def serve_resource(tmp: Path, size: int = 64 << 20, export: str | None = None):
    """Generator for a fixture: yields Served, then takes the resource down and reaps the daemon."""
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(size)
    config = tmp / "replica.conf"
    write_config(config, disk, export or f"unix:{tmp}/r0.sock")
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
                wait_for(lambda: not os.path.exists(f"/proc/{pid}"), f"replicad {pid} to exit after down", 10)
            except WaitTimeout:
                os.kill(pid, signal.SIGKILL)
