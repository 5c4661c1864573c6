# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.events: the drbdsetup events2 line grammar (golden lines, round trip through the
parser, malformed input), the bus (filters, overflow) and the stream over a socket pair."""
import json
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import locations
from replica.daemon import Daemon
from replica.events import (
    ACTIONS,
    MAX_QUEUED,
    OBJECTS,
    Event,
    EventBus,
    EventStream,
    EventSyntaxError,
    Identity,
    change_events,
    destroy_events,
    escape_value,
    exists_events,
    format_event,
    helper_events,
    parse_event,
    progress_event,
    unescape_value,
)

IDENT = Identity("r0", "beta", peer_node_id=1, volume=0, minor=0)

STATUS = {
    "role": "Secondary", "io_suspended": False, "connection": "Connected",
    "peer_role": "Primary", "disk_state": "UpToDate", "replication": "Established",
    "peer_disk_state": "UpToDate", "size": 1 << 30, "out_of_sync_bytes": 8192,
    "al_writes": 3, "bm_writes": 2,
    "stats": {"bytes_read": 4096, "bytes_written": 1 << 20, "peer_bytes_sent": 2048,
              "peer_bytes_received": 1 << 21, "peer_pending": 4},
}


def test_exists_lines_are_drbdsetups():
    lines = [format_event(e) for e in exists_events(IDENT, STATUS)]
    assert lines == [
        "exists resource name:r0 role:Secondary suspended:no",
        "exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Primary",
        "exists device name:r0 volume:0 minor:0 disk:UpToDate client:no",
        "exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 "
        "replication:Established peer-disk:UpToDate resync-suspended:no",
    ]


def test_fencing_suspended_io_shows_on_the_resource_line():
    new = {**STATUS, "io_suspended": True}
    assert [format_event(e) for e in change_events(IDENT, STATUS, new)] == [
        "change resource name:r0 suspended:fencing"]
    assert format_event(exists_events(IDENT, new)[0]) == (
        "exists resource name:r0 role:Secondary suspended:fencing")


def test_statistics_add_drbdsetups_counters_in_kib():
    dev, peer = [format_event(e, statistics=True) for e in exists_events(IDENT, STATUS)][2:]
    assert dev.endswith("disk:UpToDate client:no size:1048576 read:4 written:1024 al-writes:3 "
                        "bm-writes:2 upper-pending:0 lower-pending:0")
    assert peer.endswith("resync-suspended:no received:2048 sent:2 out-of-sync:8 pending:4 "
                         "unacked:0")
    progress = format_event(progress_event(IDENT, {**STATUS, "resync": {"percent": 12.345}}),
                            statistics=True)
    assert progress.startswith("change peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 "
                               "received:")
    assert progress.endswith(" done:12.35")


def test_change_lines_name_the_object_and_only_what_changed():
    new = {**STATUS, "role": "Primary", "replication": "SyncSource",
           "peer_disk_state": "Inconsistent"}
    assert [format_event(e) for e in change_events(IDENT, STATUS, new)] == [
        "change resource name:r0 role:Primary",
        "change peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 "
        "replication:SyncSource peer-disk:Inconsistent",
    ]
    assert change_events(IDENT, STATUS, dict(STATUS)) == []


def test_standalone_resources_have_no_connection_lines_and_destroy_goes_inside_out():
    solo = Identity("r1", None)
    assert [e.obj for e in exists_events(solo, STATUS, "create")] == ["resource", "device"]
    assert [format_event(e) for e in destroy_events(IDENT)] == [
        "destroy peer-device name:r0 peer-node-id:1 conn-name:beta volume:0",
        "destroy device name:r0 volume:0 minor:0",
        "destroy connection name:r0 peer-node-id:1 conn-name:beta",
        "destroy resource name:r0",
    ]


def test_helper_lines():
    assert format_event(helper_events(IDENT, "before-resync-target")) == (
        "call helper name:r0 peer-node-id:1 conn-name:beta volume:0 helper:before-resync-target")
    assert format_event(helper_events(IDENT, "fence-peer", 7)) == (
        "response helper name:r0 peer-node-id:1 conn-name:beta volume:0 helper:fence-peer status:7")


def test_values_with_spaces_are_escaped_and_come_back():
    ev = Event("change", "connection", (("name", "r 0"), ("conn-name", "a\\b\nc")))
    line = format_event(ev)
    assert line == "change connection name:r\\x200 conn-name:a\\x5cb\\x0ac"
    assert parse_event(line) == ev


def test_timestamps_prefix_iso_time_and_parse_back():
    ev = Event("change", "resource", (("name", "r0"), ("role", "Primary")), time=1700000000.25)
    line = format_event(ev, timestamps=True)
    stamp, rest = line.split(" ", 1)
    assert rest == "change resource name:r0 role:Primary"
    assert "T" in stamp and "." in stamp and ("+" in stamp or "-" in stamp[19:])
    assert parse_event(line).time == pytest.approx(1700000000.25)


@pytest.mark.parametrize("line, message", [
    ("", "expected ACTION OBJECT"),
    ("change", "expected ACTION OBJECT"),
    ("modify resource name:r0", "unknown action 'modify'"),
    ("change volume name:r0", "unknown object 'volume'"),
    ("change resource name", "expected KEY:VALUE, got 'name'"),
    ("change resource :r0", "bad key ''"),
    ("change resource name:r\\q0", "bad escape"),
    ("change -", "only as 'exists -'"),
    ("exists - name:r0", "only as 'exists -'"),
    ("2024-13-45T00:00 change resource name:r0", "bad timestamp"),
])
def test_malformed_lines_are_refused_with_the_line(line, message):
    with pytest.raises(EventSyntaxError, match=message):
        parse_event(line)


KEY = st.text(st.characters(codec="utf-8", exclude_characters=": \\",
                            exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
              min_size=1, max_size=12)
PAIRS = st.lists(st.tuples(KEY, st.text(max_size=20)), max_size=6).map(tuple)


@given(action=st.sampled_from(ACTIONS), obj=st.sampled_from(OBJECTS), keys=PAIRS, stats=PAIRS)
@settings(max_examples=300, deadline=None)
def test_round_trip_through_the_parser(action, obj, keys, stats):
    ev = Event(action, obj, keys, stats)
    assert parse_event(format_event(ev)) == Event(action, obj, keys)
    assert parse_event(format_event(ev, statistics=True)) == Event(action, obj, keys + stats)
    assert " " not in "".join(escape_value(v) for _, v in keys + stats)


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None)
def test_any_text_parses_or_is_refused_clearly(text):
    try:
        ev = parse_event(text)
    except EventSyntaxError as exc:
        assert str(exc).startswith("events: ")
    else:
        assert ev.action in ACTIONS
        assert parse_event(format_event(ev)).keys == ev.keys


@given(st.text(max_size=40))
def test_unescape_inverts_escape(text):
    assert unescape_value(escape_value(text)) == text


# --- the bus ----------------------------------------------------------------------------------

def test_bus_filters_by_resource_and_statistics():
    bus = EventBus(clock=lambda: 42.0)
    every, r1, stats = bus.subscribe(), bus.subscribe("r1"), bus.subscribe(statistics=True)
    try:
        bus.publish(change_events(IDENT, STATUS, {**STATUS, "role": "Primary"}))
        bus.publish([progress_event(IDENT, STATUS)])
        got = every.take()
        assert [e.obj for e in got] == ["resource"] and got[0].time == 42.0
        assert r1.take() == []
        assert [e.periodic for e in stats.take()] == [False, True]
        assert every.take() == []
    finally:
        for sub in (every, r1, stats):
            sub.close()
    assert not bus.has_subscribers


def test_a_reader_that_falls_behind_is_cut_off():
    bus = EventBus()
    sub = bus.subscribe()
    try:
        ev = Event("change", "resource", (("name", "r0"),))
        bus.publish([ev] * MAX_QUEUED)
        assert not sub.overflowed
        bus.publish([ev])
        assert sub.overflowed and sub.take() == []
    finally:
        sub.close()


def _read_lines(sock: socket.socket, n: int) -> list[dict]:
    f = sock.makefile("rb")
    return [json.loads(f.readline()) for _ in range(n)]


def test_stream_sends_initial_state_then_changes_until_the_client_leaves():
    bus = EventBus(clock=lambda: 0.0)
    sub = bus.subscribe("r0")
    initial = [*exists_events(IDENT, STATUS), Event("exists", "-")]
    server, client = socket.socketpair()
    stream = EventStream(sub, initial)
    t = threading.Thread(target=stream.serve, args=(server,))
    t.start()
    try:
        got = _read_lines(client, 6)
        assert got[0] == {"ok": True}
        assert got[-1] == {"event": "exists -"}
        bus.publish(change_events(IDENT, STATUS, {**STATUS, "disk_state": "Outdated"}))
        assert _read_lines(client, 1) == [
            {"event": "change device name:r0 volume:0 minor:0 disk:Outdated"}]
    finally:
        client.close()
        t.join(5)
        server.close()
    assert not t.is_alive() and not bus.has_subscribers


def test_events_now_with_nothing_up_is_just_the_end_marker(tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text(f"resource r0 {{\n on alpha {{ disk {tmp_path}/a.img; address 10.1.1.1:7789; }}\n"
                    f" on beta {{ disk {tmp_path}/b.img; address 10.1.1.2:7789; }}\n}}\n")
    d = Daemon(locations.resolve(str(conf), "alpha", str(tmp_path / "run")))
    stream = d.handle({"cmd": "events", "now": True, "config": str(conf)})
    assert isinstance(stream, EventStream)
    server, client = socket.socketpair()
    with client:
        stream.serve(server)
        server.close()
        assert client.makefile().read().splitlines() == ['{"ok": true}', '{"event": "exists -"}']
    reply = d.handle({"cmd": "events", "resource": "r9", "config": str(conf)})
    assert not reply["ok"] and "r9" in reply["error"]
    assert not d.events.has_subscribers


def test_daemon_exit_sends_the_last_lines_then_ends_every_stream():
    bus = EventBus(clock=lambda: 0.0)
    server, client = socket.socketpair()
    stream = EventStream(bus.subscribe(), [Event("exists", "-")])
    t = threading.Thread(target=stream.serve, args=(server,))
    t.start()
    f = client.makefile("rb")
    try:
        assert [json.loads(f.readline()) for _ in range(2)] == [{"ok": True}, {"event": "exists -"}]
        bus.publish(destroy_events(IDENT))
        assert bus.end_all(timeout_s=5)
        lines = [json.loads(f.readline())["event"] for _ in range(4)]
        assert lines[-1] == "destroy resource name:r0"
        t.join(5)
        assert not t.is_alive()         # the stream ended: ControlServer closes the connection
    finally:
        f.close()
        client.close()
        t.join(5)
        server.close()
    assert not t.is_alive() and not bus.has_subscribers


def test_a_standalone_resource_publishes_create_and_destroy(tmp_path):
    from replica.config import parse_config
    from replica.resource import ResourceRuntime
    (tmp_path / "d.img").write_bytes(b"\0" * (1 << 20))
    conf = (f"resource s0 {{\n on alpha {{ disk {tmp_path}/d.img; "
            f"export unix:{tmp_path}/s0.sock; }}\n}}\n")
    bus = EventBus()
    rt = ResourceRuntime(parse_config(conf, str(tmp_path / "r.conf")).resource("s0"), "alpha",
                         str(tmp_path / "s0.sock"), events=bus)
    sub = bus.subscribe(statistics=True)
    try:
        rt.up()
        with rt.lock:
            assert [format_event(e) for e in rt.events.snapshot()] == [
                "exists resource name:s0 role:Primary suspended:no",
                "exists device name:s0 volume:0 minor:0 disk:UpToDate client:no"]
        rt.down()
        assert [format_event(e) for e in sub.take()] == [
            "create resource name:s0 role:Primary suspended:no",
            "create device name:s0 volume:0 minor:0 disk:UpToDate client:no",
            "destroy device name:s0 volume:0 minor:0",
            "destroy resource name:s0"]
        assert rt.events.snapshot() == []
    finally:
        sub.close()
        rt.down(force=True)
