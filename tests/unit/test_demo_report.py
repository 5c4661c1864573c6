# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/lib/demo_report.py: the parsers of the daemons' logs and the client's accounting that
`make demo` prints its timeline, verification and summary from."""
import datetime

from hypothesis import given
from hypothesis import strategies as st

from scripts.lib.demo_report import (
    MARKER,
    Outage,
    availability,
    client_outages,
    first_ack_after_failure,
    parse_jsonl,
    parse_kernel,
    parse_mariadb_err,
    parse_replicad,
    parse_rows_tsv,
    parse_sha256sums,
    verify,
)


def local(stamp):
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp()


def test_replicad_lines_keep_milliseconds_and_drop_the_resource_prefix_for_later():
    lines = ["2026-12-07 14:13:12,910 replicad[22471]: r0: cluster manager: peer ha1 is dead\n",
             "Traceback (most recent call last):\n",
             "2026-12-07 14:13:1"]                        # a line half written
    assert parse_replicad(lines) == [(local("2026-12-07 14:13:12") + 0.91, "r0: cluster manager: peer ha1 is dead")]


def test_mariadb_lines_have_one_second_resolution():
    lines = ["2026-12-07 14:18:57 0 [Note] InnoDB: Starting crash recovery from checkpoint LSN=47016\n",
             "Version: '10.11.19-MariaDB-0+deb12u1'  socket: '/run/x.sock'  port: 3306  Debian 12\n"]
    assert parse_mariadb_err(lines) == [(local("2026-12-07 14:18:57"),
                                         "InnoDB: Starting crash recovery from checkpoint LSN=47016")]


def test_kernel_times_count_from_the_last_marker():
    lines = ["[ 100.000000] EXT4-fs (loop0): recovery complete\n",        # an earlier run
             f"[ 200.500000] {MARKER} ha1\n",
             "[ 203.000000] EXT4-fs (loop0): recovery complete\n",
             f"[ 300.000000] {MARKER} ha1\n",
             "[ 302.250000] EXT4-fs (loop1): recovery complete\n"]
    assert parse_kernel(lines) == [(0.0, f"{MARKER} ha1"), (2.25, "EXT4-fs (loop1): recovery complete")]
    assert parse_kernel(lines[:1]) == []                                  # no marker: no timeline


def test_rows_and_files_as_the_demo_queries_them():
    host, rows = parse_rows_tsv(["ha2\n", "1\tAB12\tha1\n", "2\tcd34\tha2\n", "x\ty\tz\n"])
    assert host == "ha2" and rows == {1: ("ab12", "ha1"), 2: ("cd34", "ha2")}
    sha = "a" * 64
    assert parse_sha256sums([f"{sha}  ./f000001.bin\n", f"{sha} *f000002.bin\n", "garbage\n"]) == {
        "f000001.bin": sha, "f000002.bin": sha}
    assert parse_jsonl(['{"t": 1, "ok": true}\n', '{"t": 2, "ok"', "[1]\n"]) == [{"t": 1, "ok": True}]


def attempt(t, ok, **kw):
    return {"t0": t - 0.01, "t": t, "ok": ok, **kw}


def test_outages_run_from_the_last_ack_before_a_failure_to_the_first_after():
    log = [attempt(1, True), attempt(2, True), attempt(3, False), attempt(4, False), attempt(5, True),
           attempt(6, True), attempt(7, False)]
    start, end, outs = client_outages(log)
    assert (start, end) == (0.99, 7) and outs == [Outage(2, 5), Outage(6, 7)]
    assert availability(start, end, outs) == 1 - 4 / 6.01
    assert first_ack_after_failure(log, 2.5) == 5 and first_ack_after_failure(log, 6.5) is None


def test_verify_asks_only_for_acknowledgements_up_to_the_cut():
    log = [attempt(1, True, id=1, sha="a"), attempt(2, True, id=2, sha="b"), attempt(3, False, id=3, sha="c"),
           attempt(4, False, id=4, sha="d"), attempt(9, True, id=5, sha="e")]
    v = verify(log, {1: "a", 2: "X", 3: "c"}, "id", until=5)
    assert (v.acked, v.present, v.mismatched, v.lost, v.in_doubt, v.in_doubt_present) == (2, 1, 1, 1, 2, 1)
    assert verify(log, {1: "a", 2: "b"}, "id", until=5).lost == 0


text_lines = st.lists(st.text(max_size=120), max_size=20)


@given(text_lines)
def test_parsers_never_raise_on_any_text(lines):
    parse_replicad(lines)
    parse_mariadb_err(lines)
    parse_kernel(lines)
    parse_rows_tsv(lines)
    parse_sha256sums(lines)
    parse_jsonl(lines)


@given(st.lists(st.tuples(st.floats(0, 1e4, allow_nan=False), st.booleans()), max_size=40))
def test_outages_are_ordered_disjoint_and_inside_the_run(points):
    log = [attempt(t, ok) for t, ok in points]
    start, end, outs = client_outages(log)
    for a, b in zip(outs, outs[1:], strict=False):
        assert a.end <= b.start
    assert all(start <= o.start <= o.end <= end for o in outs)
    a = availability(start, end, outs)
    assert a is None or 0 <= a <= 1
