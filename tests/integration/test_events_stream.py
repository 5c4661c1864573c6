# SPDX-License-Identifier: GPL-2.0-or-later
"""`replicactl events` against a real pair in two namespaces: the stream shows the `change`
lines of connect, promote, resync, disconnect and reconnect in the order they happened, the
handler that ran (call/response helper), and `events --now` ends with `exists -`; status
--statistics shows drbdadm's counters with the ack latency quantiles; `down` ends with the
`destroy` lines, and the stream with replicad."""
import queue
import re
import subprocess
import threading

import pytest

from tests.conftest import requires_commands, requires_root
from tests.integration.netns import BIN, MiB, TwoNodes

pytestmark = pytest.mark.root

HANDLERS = 'before-resync-source "true";'


class Replicactl:
    """A long-running `replicactl ARGS...` on one node (events, status --watch), its output
    lines collected by a thread as they come."""

    def __init__(self, t: TwoNodes, node: str, *args: str):
        cmd = [str(BIN / "replicactl"), "--config", str(t.config(node)), "--node", node,
               "--run-dir", str(t.run_dir(node)), *args]
        self.proc = t.lab.popen(t.ns[node], cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """The first line (already read or still to come) that matches `pattern`."""
        rx = re.compile(pattern)
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if rx.search(line):
                    return line
            seen = len(self.lines)
            try:
                self._new.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got:\n"
                                     + "\n".join(self.lines)) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._thread.join(5)


def assert_in_order(lines: list[str], patterns: list[str]) -> None:
    """Each pattern matches a line after the one the previous pattern matched."""
    at = 0
    for pattern in patterns:
        rx = re.compile(pattern)
        for i in range(at, len(lines)):
            if rx.search(lines[i]):
                at = i + 1
                break
        else:
            raise AssertionError(f"{pattern!r} not found after line {at}:\n" + "\n".join(
                f"{i:3} {line}" for i, line in enumerate(lines)))


def test_events_follow_connect_promote_resync_disconnect_in_order():
    requires_root()
    requires_commands("qemu-io")
    with TwoNodes(size=16 * MiB, handlers=HANDLERS, prefix="evt") as t:
        for node in ("alpha", "beta"):
            t.ctl(node, "create-md", "r0")
        t.ctl("alpha", "up", "r0")
        reader = Replicactl(t, "alpha", "events", "r0", "--timestamps")
        stats_reader = Replicactl(t, "alpha", "events", "all", "--statistics")
        # status --watch without a terminal: a plain status snapshot per change (the first
        # at once)
        watcher = Replicactl(t, "alpha", "status", "--watch", "r0")
        try:
            stats_reader.wait_for(r"^exists -$")
            watcher.wait_for(r"^r0 role:Secondary$")
            reader.wait_for(r" exists -$")
            t.ctl("beta", "up", "r0")
            t.wait_connected()
            t.ctl("alpha", "primary", "--force", "r0")
            t.wait_synced(60)
            t.ctl("alpha", "disconnect", "r0")
            reader.wait_for(r"change connection name:r0 .*connection:StandAlone")
            t.ctl("alpha", "connect", "r0")
            t.wait_connected()
            reader.wait_for(r"change connection name:r0 .*connection:Connected", 10)
            watcher.wait_for(r"^  beta role:Secondary$")
        finally:
            reader.stop()
            stats_reader.stop()
            watcher.stop()
        # the view followed: Secondary, then Primary with the resync's progress, then in sync
        assert_in_order(watcher.lines, [r"^r0 role:Secondary$", r"^r0 role:Primary$",
                                        r"replication:SyncSource peer-disk:Inconsistent done:",
                                        r"^    peer-disk:UpToDate$"])
        lines = reader.lines
        # every line carries drbdsetup's ISO timestamp, then the event
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d ", ln)
                   for ln in lines), lines
        events = [ln.split(" ", 1)[1] for ln in lines]
        peer = "name:r0 peer-node-id:1 conn-name:beta"
        assert_in_order(events, [
            r"^exists resource name:r0 role:Secondary suspended:no$",
            rf"^exists connection {peer} connection:Connecting role:Unknown$",
            r"^exists device name:r0 volume:0 minor:0 disk:Inconsistent client:no$",
            rf"^exists peer-device {peer} volume:0 replication:Off peer-disk:DUnknown",
            r"^exists -$",
            rf"^change connection {peer} connection:Connected role:Secondary$",
            r"^change resource name:r0 role:Primary$",
            r"^change device name:r0 volume:0 minor:0 disk:UpToDate$",
            rf"^call helper {peer} volume:0 helper:before-resync-source$",
            rf"^response helper {peer} volume:0 helper:before-resync-source status:0$",
            rf"^change peer-device {peer} volume:0 replication:SyncSource",
            rf"^change peer-device {peer} volume:0 replication:Established peer-disk:UpToDate",
            rf"^change connection {peer} connection:StandAlone",
            rf"^change connection {peer} connection:Connected",
        ])
        # only `change`/`call`/`response` after the initial state; no --statistics counters
        after = events[events.index("exists -") + 1:]
        assert all(e.split(" ")[0] in ("change", "call", "response") for e in after), after
        assert not any(" sent:" in e for e in events)
        # --statistics: counters on the lines, and resync progress while SyncSource
        progress = [ln for ln in stats_reader.lines if ln.startswith("change peer-device") and " done:" in ln]
        assert progress, stats_reader.lines
        assert all(re.search(r" received:\d+ sent:\d+ out-of-sync:\d+ pending:\d+ unacked:\d+ "
                             r"done:\d+\.\d\d$", ln) for ln in progress), progress
        assert_in_order(stats_reader.lines, [r"replication:SyncSource", r" done:\d",
                                             r"replication:Established peer-disk:UpToDate"])

        now = t.ctl("alpha", "events", "--now", "--statistics").stdout.splitlines()
        assert now[-1] == "exists -"
        assert [ln.split(" ")[1] for ln in now[:-1]] == ["resource", "connection", "device",
                                                         "peer-device"]
        assert re.search(r" size:\d+ read:\d+ written:\d+ al-writes:\d+ bm-writes:\d+ "
                         r"upper-pending:0 lower-pending:0$", now[2]), now[2]
        sent_kib = int(re.search(r" sent:(\d+) ", now[3]).group(1))
        assert sent_kib >= t.data_size() // 1024          # the full sync went out from here
        assert " out-of-sync:0 pending:0 unacked:0" in now[3]

        # status --statistics: drbdadm's counters; the ack quantiles once writes were acked
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M",
                        t.uri("alpha")], check=True, capture_output=True, timeout=60)
        text = t.ctl("alpha", "status", "--statistics", "r0").stdout
        assert re.search(r"\n      size:\d+ read:\d+ written:(\d+) al-writes:\d+", text), text
        assert int(re.search(r" written:(\d+)", text).group(1)) >= 1024
        assert re.search(r"\n        received:\d+ sent:\d+ out-of-sync:0 pending:0 unacked:0 "
                         r"ack-p50:[\d.]+(us|ms|s) ack-p99:[\d.]+(us|ms|s)$", text.rstrip()), text

        # down: the objects go (destroy, innermost first), then replicad, started by replicactl,
        # exits with nothing in use, and the stream ends with it
        last = Replicactl(t, "alpha", "events", "r0")
        last.wait_for(r"^exists -$")
        t.ctl("alpha", "down", "r0")
        assert last.proc.wait(timeout=30) == 0
        last.stop()
        tail = last.lines[last.lines.index("exists -") + 1:]
        assert tail[-4:] == [f"destroy peer-device {peer} volume:0",
                             "destroy device name:r0 volume:0 minor:0",
                             f"destroy connection {peer}", "destroy resource name:r0"], tail


def test_events_now_on_a_node_without_replicad_is_just_the_end_marker(tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text(f"resource r0 {{\n on alpha {{ disk {tmp_path}/a.img; address 10.1.1.1:7789; }}\n"
                    f" on beta {{ disk {tmp_path}/b.img; address 10.1.1.2:7789; }}\n}}\n")
    out = subprocess.run([str(BIN / "replicactl"), "--config", str(conf), "--node", "alpha",
                          "--run-dir", str(tmp_path / "run"), "events", "--now"],
                         capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, "exists -\n")
    out = subprocess.run([str(BIN / "replicactl"), "--config", str(conf), "--node", "alpha",
                          "--run-dir", str(tmp_path / "run"), "events"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "replicad is not running" in out.stderr
