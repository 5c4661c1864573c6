# SPDX-License-Identifier: GPL-2.0-or-later
"""`hbctl status --watch` against a real hbd in a namespace: without a terminal it prints a
status snapshot at once and another on each journal record hbd streams (the groups starting
after initdead), and ends when hbd goes away (exit 3, as `hbctl status` without hbd)."""
import os
import queue
import subprocess
import threading

import pytest

from scripts.waiting import wait_for
from tests.conftest import requires_commands, requires_root
from tests.hbd_netns import PYTHON, REPO, Lab

pytestmark = pytest.mark.root


@pytest.fixture
def lab(tmp_path):
    requires_root()
    requires_commands("ip")
    lab = Lab(str(tmp_path), prefix=f"evh{os.getpid() % 100000}")
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def test_watch_prints_a_snapshot_per_change_and_ends_with_hbd(lab):
    lab.write_config("ha1", timing={"keepalive": "200ms", "deadtime": "1", "initdead": "2"})
    lab.start_hbd("ha1")
    sock = os.path.join(lab.run_dir("ha1"), "hbd.sock")
    wait_for(lambda: os.path.exists(sock), "hbd.sock", 15, details=lab.logs_text)
    watcher = subprocess.Popen([PYTHON, "-m", "hbd.ctl", "--run-dir", lab.run_dir("ha1"), "status",
                                "--watch"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, PYTHONPATH=REPO))
    blocks: queue.Queue[str] = queue.Queue()

    def read() -> None:
        block: list[str] = []
        assert watcher.stdout is not None
        for line in watcher.stdout:
            if line.strip():
                block.append(line.rstrip("\n"))
            elif block:
                blocks.put("\n".join(block))
                block = []
        if block:
            blocks.put("\n".join(block))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        first = blocks.get(timeout=15)
        assert first.startswith("Heartbeat is running on this machine.\nnode ha1: ")
        # the peer never comes: after initdead ha1 declares it dead and takes every group; each
        # record redraws, so some later snapshot shows the groups started here
        seen = [first]
        while not any("group" in b and ": started" in b for b in seen):
            seen.append(blocks.get(timeout=30))
        assert any("node ha2: dead" in b for b in seen), seen
        lab.kill("ha1", sig=15)
        # hbd closed the stream: the view ends as `hbctl status` does without hbd
        assert watcher.wait(timeout=30) == 3
        reader.join(5)
        assert watcher.stdout is not None
        rest = []
        while not blocks.empty():
            rest.append(blocks.get())
        assert rest and rest[-1] == "Heartbeat is stopped on this machine.", rest
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        reader.join(5)
