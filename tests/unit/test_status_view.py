# SPDX-License-Identifier: GPL-2.0-or-later
"""status --statistics (drbdadm status --statistics layout) and the --watch view's rendering,
on status dicts as replicad sends them."""
import argparse
import io

from rich.console import Console

from hacommon.live_view import watch
from replica.cli import render_status
from replica.mirror import ACK_LATENCY_BUCKETS
from replica.status_view import render

MiB = 1 << 20


def status(**over):
    buckets = [0] * ACK_LATENCY_BUCKETS
    buckets[8] = 99          # [128, 256) us
    buckets[12] = 1          # [2048, 4096) us
    st = {"name": "r0", "role": "Primary", "disk_state": "UpToDate", "standalone": False,
          "peer": "beta", "connection": "Connected", "cstate": "Connected",
          "peer_role": "Secondary", "replication": "Established", "peer_disk_state": "UpToDate",
          "size": 64 * MiB, "out_of_sync_bytes": 8192, "al_writes": 7, "bm_writes": 3,
          "stats": {"bytes_read": 2 * MiB, "bytes_written": 5 * MiB, "upper_pending": 2,
                    "lower_pending": 1, "peer_bytes_received": 4096, "peer_bytes_sent": 6 * MiB,
                    "peer_pending": 2, "peer_unacked": 0, "peer_ack_us_log2": buckets}}
    st.update(over)
    return st


ARGS = argparse.Namespace(verbose=False, statistics=True)


def test_statistics_layout_is_drbdadms():
    assert render_status(status(), ARGS) == "\n".join([
        "r0 role:Primary",
        "  disk:UpToDate",
        "      size:65536 read:2048 written:5120 al-writes:7 bm-writes:3 upper-pending:2 "
        "lower-pending:1",
        "  beta role:Secondary",
        "    peer-disk:UpToDate",
        "        received:4 sent:6144 out-of-sync:8 pending:2 unacked:0 ack-p50:193us "
        "ack-p99:256us",
    ])


def test_statistics_without_a_connection_have_no_peer_counters():
    text = render_status(status(connection="Connecting", cstate="Connecting"), ARGS)
    assert text.splitlines()[-1] == "  beta connection:Connecting"
    assert "size:65536" in text and "received:" not in text


def test_without_statistics_the_layout_is_unchanged():
    plain = render_status(status(), argparse.Namespace(verbose=False, statistics=False))
    assert "size:" not in plain and "received:" not in plain


def _text(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=140, color_system=None).print(renderable)
    return out.getvalue()


def test_live_view_shows_states_and_a_progress_bar_with_rate_and_eta():
    st = status(replication="SyncSource", peer_disk_state="Inconsistent",
                resync={"percent": 42.5, "rate_bps": 3 * MiB, "eta_s": 125.0})
    text = _text(render([st], "replica-ha on alpha"))
    assert "replica-ha on alpha" in text
    assert all(w in text for w in ("r0", "Primary", "SyncSource", "Inconsistent", "beta"))
    assert "r0 resync" in text and "42.5% 3.0 MiB/s ETA 0:02:05" in text
    assert "resync" not in _text(render([status()], "t"))


class NotATerminal(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_watch_without_a_terminal_prints_a_snapshot_per_change():
    snapshots = iter([[status(role="Secondary")], [status()]])
    out = NotATerminal()
    plain_args = argparse.Namespace(verbose=False, statistics=False)
    rc = watch(iter(["exists -", "change resource name:r0 role:Primary"]), lambda: "unused",
               lambda: render_status(next(snapshots)[0], plain_args), out=out)
    assert rc == 0
    blocks = out.getvalue().strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["r0 role:Secondary", "r0 role:Primary"]


def test_watch_leaves_cleanly_on_ctrl_c():
    def changes():
        yield "exists -"
        raise KeyboardInterrupt
    assert watch(changes(), lambda: "unused", lambda: "x", out=NotATerminal()) == 0
