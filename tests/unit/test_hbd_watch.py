# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd's `watch` stream (each journal record as it is written, until the client leaves) and
the `hbctl status --watch` view, without a daemon."""
import io
import json
import socket
import threading

from rich.console import Console

from hacommon.control import Mailbox, MailboxStream
from hbd.control import ControlCommands
from hbd.journal import Journal
from hbd.status_view import render, runs_on


def test_watch_streams_journal_records_until_the_client_leaves(tmp_path):
    journal = Journal(str(tmp_path / "journal.jsonl"), "ha1")
    commands = ControlCommands(node="ha1", membership=None, groups=None, journal=journal,  # type: ignore[arg-type]
                               kick=lambda: None)
    stream = commands.handle_request({"cmd": "watch"})
    assert isinstance(stream, MailboxStream) and len(journal.listeners) == 1
    server, client = socket.socketpair()
    t = threading.Thread(target=stream.serve, args=(server,))
    t.start()
    f = client.makefile("rb")
    try:
        assert json.loads(f.readline()) == {"ok": True}
        journal.record("node", peer="ha2", state="dead")
        journal.record("group", group="g1", old="stopped", new="started", reason="takeover")
        got = [json.loads(f.readline())["record"] for _ in range(2)]
        assert [(r["event"], r.get("peer") or r.get("group")) for r in got] == [("node", "ha2"),
                                                                                 ("group", "g1")]
    finally:
        f.close()           # the file holds the socket open until it closes too
        client.close()
        t.join(5)
        server.close()
        journal.close()
    assert not t.is_alive() and journal.listeners == []


def test_a_mailbox_reader_that_falls_behind_is_cut_off():
    box = Mailbox(limit=3)
    try:
        for i in range(3):
            box.put(i)
        assert box.take() == [0, 1, 2] and box.take() == []
        for i in range(4):
            box.put(i)
        assert box.overflowed and box.take() == []
    finally:
        box.close()


STATUS = {
    "pid": 42,
    "membership": {"node": "ha1", "status": "active", "generation": 7, "counters": {
        "received": 10, "accepted": 9, "sent": 11, "dropped_auth": 1},
        "peers": {"ha2": {"status": "up", "generation": 3, "silent_s": 0.4}}},
    "groups": {"rscstatus": "local", "auto_failback": "on", "peer": "ha2", "peer_hold": ["g2"],
               "groups": [{"key": "g1", "node": "ha1", "state": "started"},
                          {"key": "g2", "node": "ha2", "state": "stopped"},
                          {"key": "g3", "node": "ha2", "state": "stopped"}]},
    "journal": [{"ts": "2026-12-07T14:00:00.000", "node": "ha1", "event": "node", "peer": "ha2",
                 "state": "up"}],
}


def test_view_shows_nodes_links_groups_and_where_they_run():
    out = io.StringIO()
    Console(file=out, width=120, color_system=None).print(render(STATUS))
    text = out.getvalue()
    assert "heartbeat on ha1 (pid 42)" in text and "0.4 s ago" in text
    assert "packets: received 10 accepted 9 sent 11 dropped auth=1" in text
    assert "node ha2: up" in text
    g = STATUS["groups"]
    assert [runs_on(x, g, "ha1") for x in g["groups"]] == ["ha1", "ha2", "-"]
