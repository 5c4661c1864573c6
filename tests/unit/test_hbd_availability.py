# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.availability on synthetic journals with known answers, mission windows, properties, fuzz;
and `hbctl availability` on a journal file."""
import datetime
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hbd import ctl
from hbd.availability import (
    AvailabilityError,
    Mission,
    availability_class,
    compute,
    parse_journal,
    parse_time,
    transitions,
)
from hbd.journal import Journal, read_journal

UTC = datetime.UTC
H = 3600.0
MON = 4 * 86400.0          # 1970-01-05 00:00 UTC was a Monday


def grp(t, state, node="ha1", planned=False, group="g", **kw):
    event = "holding" if "holder" in kw else "group"       # what a node learns of its peer's groups
    return {"time": t, "event": event, "group": group, "node": node, "state": state, "planned": planned, **kw}


def svc(t, state, name="http", node="ha1", planned=False, **kw):
    return {"time": t, "event": "service", "service": name, "node": node, "state": state, "planned": planned, **kw}


def one(report, kind="group", name="g"):
    [s] = [s for s in report.subjects if (s.kind, s.name) == (kind, name)]
    return s


# --- known answers ----------------------------------------------------------------------

def test_one_failure_mttf_mttr_and_a():
    r = compute([grp(0, "up"), grp(100, "down"), grp(110, "up")], until=200)
    s = one(r)
    assert (s.observed_s, s.uptime_s, s.downtime_s, s.failures) == (200, 190, 10, 1)
    assert (s.mttf_s, s.mttr_s) == (190, 10)
    assert s.availability == pytest.approx(190 / 200)
    assert s.downtime_per_year_s == pytest.approx(0.05 * 365.25 * 86400)
    assert s.klass == "below basic"


def test_two_failures_mean_times():
    recs = [grp(0, "up"), grp(1000, "down"), grp(1004, "up"), grp(5000, "down"), grp(5006, "up")]
    s = one(compute(recs, until=10000))
    assert s.failures == 2
    assert s.mttf_s == pytest.approx((10000 - 10) / 2)
    assert s.mttr_s == pytest.approx(5)
    assert s.availability == pytest.approx(0.999)
    assert s.klass == "basic"


def test_no_failure_is_one_and_continuous_with_undefined_means():
    s = one(compute([grp(0, "up")], until=50))
    assert (s.failures, s.availability, s.mttf_s, s.mttr_s, s.klass) == (0, 1.0, None, None, "continuous")


def test_down_before_first_up_is_not_observed():
    s = one(compute([grp(0, "down"), grp(40, "up"), grp(90, "down")], until=100))
    assert (s.observed_s, s.uptime_s, s.downtime_s, s.failures) == (60, 50, 10, 1)


def test_failover_between_holders_counts_from_the_node_death():
    """ha1 holds g and is killed; ha2 journals ha1 dead (since = detection - deadtime) and starts g."""
    recs = [{"time": 0, "event": "daemon", "node": "ha2", "state": "start"},
            {"time": 5, "event": "node", "node": "ha2", "peer": "ha1", "state": "up"},
            grp(10, "up", node="ha2", holder="ha1", why="peer reports it holds it"),
            {"time": 101, "event": "node", "node": "ha2", "peer": "ha1", "state": "dead", "graceful": False,
             "planned": False, "since": 100},
            grp(101, "down", node="ha2", holder="ha1"),
            grp(103, "up", node="ha2")]
    r = compute(recs, until=200)
    g = one(r)
    assert (g.failures, g.downtime_s, g.uptime_s) == (1, 3, 187)
    ha1 = one(r, "node", "ha1")
    assert (ha1.failures, ha1.downtime_s, ha1.uptime_s) == (1, 100, 95)
    ha2 = one(r, "node", "ha2")
    assert ha2.failures == 0


def test_node_death_takes_its_holdings_down_even_without_a_group_record():
    recs = [grp(0, "up", node="ha1"),
            {"time": 50, "event": "node", "node": "ha2", "peer": "ha1", "state": "up"},
            {"time": 60, "event": "node", "node": "ha2", "peer": "ha1", "state": "dead", "since": 59},
            grp(62, "up", node="ha2")]
    g = one(compute(recs, until=100))
    assert (g.failures, g.downtime_s) == (1, 3)
    n = one(compute(recs, until=100), "node", "ha1")
    assert (n.failures, n.downtime_s, n.uptime_s) == (1, 41, 9)


def test_merged_journals_first_hand_records_win_over_the_peers_view():
    ha1 = [grp(0, "up", node="ha1"), grp(50, "down", node="ha1", planned=True, why="standby"),
           grp(51, "up", node="ha1", holder="ha2", why="peer reports it holds it")]   # ahead of ha2's start
    ha2 = [grp(5, "up", node="ha2", holder="ha1"), grp(50.5, "down", node="ha2", holder="ha1"),
           grp(50.6, "down", node="ha2", why="standby"), grp(52, "up", node="ha2")]
    g = one(compute(ha1 + ha2, until=100))
    assert (g.failures, g.planned_failures, g.downtime_s, g.planned_downtime_s) == (1, 1, 2, 2)
    assert g.availability == pytest.approx(98 / 100)
    assert g.availability_unplanned == 1.0
    g = one(compute(ha1, until=100))          # ha1's journal alone: ha2's report is the end of the stop
    assert (g.failures, g.planned_failures, g.downtime_s) == (1, 1, 1)


def test_crash_inferred_from_a_restart_without_a_stop():
    recs = [{"time": 0, "event": "daemon", "node": "ha1", "state": "start"}, grp(1, "up"),
            {"time": 20, "event": "resource", "node": "ha1", "group": "g"},     # the last sign of life
            {"time": 80, "event": "daemon", "node": "ha1", "state": "start"}, grp(85, "up")]
    r = compute(recs, until=100)
    assert [(t.kind, t.up) for t in transitions(recs) if t.time == 20] == [("node", False)]
    g = one(r)
    assert (g.failures, g.downtime_s) == (1, 65)
    n = one(r, "node", "ha1")
    assert (n.failures, n.downtime_s) == (1, 60)


def test_crash_dated_by_the_peer_when_journals_are_merged():
    """An idle hbd writes nothing: ha1's last record (t=1) is long before its power failure; ha2
    saw it stop answering at 59 (found by `make demo`: merged journals counted the group down
    from t=1)."""
    ha1 = [{"time": 0, "event": "daemon", "node": "ha1", "state": "start"}, grp(1, "up"),
           {"time": 80, "event": "daemon", "node": "ha1", "state": "start"}, grp(85, "up")]
    ha2 = [{"time": 0.5, "event": "daemon", "node": "ha2", "state": "start"},
           {"time": 61, "event": "node", "node": "ha2", "peer": "ha1", "state": "dead", "since": 59}]
    r = compute(ha1 + ha2, until=100)
    assert [t.time for t in transitions(ha1 + ha2) if (t.kind, t.name, t.up) == ("node", "ha1", False)] == [59, 59]
    g = one(r)
    assert (g.failures, g.downtime_s) == (1, 26)
    n = one(r, "node", "ha1")
    assert (n.failures, n.downtime_s) == (1, 21)
    # a peer's view older than the node's own last record does not move the crash back
    ha2[1].update(since=0.8)
    assert [t.time for t in transitions(ha1 + ha2) if (t.kind, t.name, t.up) == ("node", "ha1", False)] == [0.8, 1]


def test_clean_daemon_stop_is_a_planned_node_stop():
    recs = [{"time": 0, "event": "daemon", "node": "ha1", "state": "start"},
            {"time": 30, "event": "daemon", "node": "ha1", "state": "stop"},
            {"time": 31, "event": "daemon", "node": "ha1", "state": "stopped"},
            {"time": 40, "event": "daemon", "node": "ha1", "state": "start"}]
    n = one(compute(recs, until=50), "node", "ha1")
    assert (n.failures, n.planned_failures, n.downtime_s) == (1, 1, 10)


def test_older_records_with_ts_and_new_only():
    """Records written before this change: ISO "ts", no "time", group new=STATE reason=TEXT."""
    def ts(s):
        return datetime.datetime.fromtimestamp(s, UTC).isoformat()
    recs = [{"ts": ts(1000), "mono": 1.0, "node": "ha1", "event": "group", "group": "g", "old": "starting",
             "new": "started", "reason": "start succeeded"},
            {"ts": ts(2000), "mono": 2.0, "node": "ha1", "event": "group", "group": "g", "old": "started",
             "new": "stopping", "reason": "standby"},
            {"ts": ts(2010), "mono": 3.0, "node": "ha2", "event": "group", "group": "g", "old": "starting",
             "new": "started", "reason": "start succeeded"}]
    g = one(compute(recs, until=3000))
    assert (g.failures, g.planned_failures, g.downtime_s) == (1, 1, 10)


def test_since_and_until_clip_and_keep_the_state_at_since():
    recs = [grp(0, "up"), grp(100, "down"), grp(200, "up")]
    s = one(compute(recs, since=150, until=300))
    assert (s.observed_s, s.downtime_s, s.uptime_s, s.failures) == (150, 50, 100, 1)
    s = one(compute(recs, since=0, until=50))
    assert (s.observed_s, s.failures) == (50, 0)


def test_service_filter_and_group_filter():
    recs = [grp(0, "up"), svc(0, "up", group="g"), svc(0, "up", name="smtp"), svc(10, "down"), svc(12, "up")]
    r = compute(recs, until=20, kinds=("service",), names=["http"])
    assert [(s.kind, s.name) for s in r.subjects] == [("service", "http")]
    assert r.subjects[0].failures == 1
    r = compute(recs, until=20, group="g")
    assert [(s.kind, s.name) for s in r.subjects] == [("group", "g"), ("service", "http")]


@pytest.mark.parametrize("a, cls", [(0.98, "below basic"), (0.99, "basic"), (0.999, "basic"), (0.9995, "basic"),
                                    (0.9999, "high"), (0.99999, "high"), (0.999995, "continuous"),
                                    (1.0, "continuous"), (None, "unknown")])
def test_seed_classes(a, cls):
    assert availability_class(a) == cls


# --- mission windows --------------------------------------------------------------------

PHARMACY = Mission.parse("08:00-20:00")


def test_planned_stop_inside_the_mission_counts():
    recs = [grp(MON, "up"), grp(MON + 10 * H, "down", planned=True, why="standby"), grp(MON + 11 * H, "up")]
    s = one(compute(recs, since=MON, until=MON + 86400, mission=PHARMACY, tz=UTC))
    assert (s.observed_s, s.downtime_s, s.failures, s.planned_failures) == (12 * H, H, 1, 1)
    assert s.availability == pytest.approx(11 / 12)
    assert s.mttf_s == 11 * H and s.mttr_s == H


def test_planned_stop_outside_the_mission_does_not_count_but_does_without_one():
    recs = [grp(MON, "up"), grp(MON + 21 * H, "down", planned=True, why="standby"), grp(MON + 22 * H, "up")]
    s = one(compute(recs, since=MON, until=MON + 86400, mission=PHARMACY, tz=UTC))
    assert (s.observed_s, s.downtime_s, s.failures, s.availability) == (12 * H, 0, 0, 1.0)
    s = one(compute(recs, since=MON, until=MON + 86400, tz=UTC))          # continuous mission
    assert (s.failures, s.planned_failures, s.downtime_s) == (1, 1, H)
    assert s.availability == pytest.approx(23 / 24) and s.availability_unplanned == 1.0


def test_unplanned_failure_half_inside_counts_only_its_inside_part():
    recs = [grp(MON, "up"), grp(MON + 7 * H, "down"), grp(MON + 9 * H, "up")]
    s = one(compute(recs, since=MON, until=MON + 86400, mission=PHARMACY, tz=UTC))
    assert (s.failures, s.downtime_s, s.uptime_s) == (1, H, 11 * H)


def test_window_spanning_midnight():
    night = Mission.parse("22:00-06:00")
    w = night.windows(MON, MON + 86400, UTC)
    assert w == [(MON, MON + 6 * H), (MON + 22 * H, MON + 86400)]
    recs = [grp(MON, "up"), grp(MON + 23 * H, "down", planned=True), grp(MON + 25 * H, "up"),     # 23:00-01:00
            grp(MON + 36 * H, "down", planned=True), grp(MON + 37 * H, "up")]                     # Tue noon
    s = one(compute(recs, since=MON, until=MON + 2 * 86400, mission=night, tz=UTC))
    assert (s.failures, s.downtime_s) == (1, 2 * H)
    assert s.observed_s == 16 * H


def test_one_outage_across_two_windows_is_one_failure():
    recs = [grp(MON, "up"), grp(MON + 19 * H, "down"), grp(MON + 33 * H, "up")]   # Mon 19:00 .. Tue 09:00
    s = one(compute(recs, since=MON, until=MON + 2 * 86400, mission=PHARMACY, tz=UTC))
    assert (s.failures, s.downtime_s, s.observed_s) == (1, 2 * H, 24 * H)


def test_days_mon_fri():
    weekdays = Mission.parse("08:00-20:00,mon-fri")
    assert weekdays.days == frozenset(range(5))
    week = [grp(MON, "up"),
            grp(MON + 5 * 86400 + 10 * H, "down", planned=True), grp(MON + 5 * 86400 + 12 * H, "up"),   # Sat
            grp(MON + 4 * 86400 + 10 * H, "down", planned=True), grp(MON + 4 * 86400 + 11 * H, "up")]   # Fri
    s = one(compute(week, since=MON, until=MON + 7 * 86400, mission=weekdays, tz=UTC))
    assert (s.observed_s, s.failures, s.downtime_s) == (60 * H, 1, H)


def test_days_lists_and_wrapping_ranges():
    assert Mission.parse("09:00-17:00,mon,wed,fri").days == frozenset({0, 2, 4})
    assert Mission.parse("09:00-17:00,fri-mon").days == frozenset({4, 5, 6, 0})
    assert Mission.parse("00:00-24:00").windows(MON, MON + 86400, UTC) == [(MON, MON + 86400)]


@pytest.mark.parametrize("text, words", [("8-20", "expected HH:MM-HH:MM"), ("25:00-01:00", "not a time of day"),
                                         ("08:00-20:00,funday", "unknown day 'funday'"),
                                         ("08:00-20:60", "not a time of day"),
                                         ("08:00-20:00,mon-xyz", "unknown day")])
def test_bad_missions(text, words):
    with pytest.raises(AvailabilityError, match=words):
        Mission.parse(text)


def test_parse_time():
    now = 1_000_000.0
    assert parse_time("-7d", now) == now - 7 * 86400
    assert parse_time("-90s", now) == now - 90
    assert parse_time("-1.5h", now) == now - 5400
    assert parse_time("now", now) == now
    assert parse_time("1970-01-02T00:00:00+00:00", now) == 86400
    assert parse_time("1970-01-02", now, UTC) == 86400
    with pytest.raises(AvailabilityError, match="expected ISO 8601"):
        parse_time("yesterday", now)


# --- properties ---------------------------------------------------------------------------

events = st.lists(st.tuples(st.floats(0, 7 * 86400), st.sampled_from(["ha1", "ha2"]),
                            st.sampled_from(["group", "service", "node-dead", "node-up"]),
                            st.booleans(), st.booleans()), max_size=40)
missions = st.one_of(st.none(), st.builds(
    lambda a, b, days: f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" + ("," + days if days else ""),
    st.integers(0, 1439), st.integers(0, 1439), st.sampled_from(["", "mon-fri", "sat,sun", "fri-tue", "wed"])))


def to_records(evs):
    out = []
    for t, node, kind, up, planned in evs:
        t = MON + t
        if kind == "group":
            out.append(grp(t, "up" if up else "down", node=node, planned=planned))
        elif kind == "service":
            out.append(svc(t, "up" if up else "down", node=node, planned=planned))
        else:
            other = "ha2" if node == "ha1" else "ha1"
            out.append({"time": t, "event": "node", "node": other, "peer": node,
                        "state": "up" if kind == "node-up" else "dead", "planned": planned})
    return out


@settings(max_examples=150, deadline=None)
@given(evs=events, mission=missions, since=st.floats(0, 86400), length=st.floats(1, 8 * 86400))
def test_properties_a_in_range_and_time_adds_up(evs, mission, since, length):
    m = Mission.parse(mission) if mission else None
    r = compute(to_records(evs), since=MON + since, until=MON + since + length, mission=m, tz=UTC)
    for s in r.subjects:
        assert s.observed_s <= length + 1e-6
        assert math.isclose(s.uptime_s + s.downtime_s, s.observed_s, rel_tol=1e-9, abs_tol=1e-6)
        assert 0 <= s.planned_downtime_s <= s.downtime_s + 1e-9
        assert 0 <= s.planned_failures <= s.failures
        for a in (s.availability, s.availability_unplanned):
            assert a is None or 0.0 <= a <= 1.0
        if s.failures:
            assert s.availability == pytest.approx(s.uptime_s / s.observed_s)
            assert s.mttf_s * s.failures == pytest.approx(s.uptime_s)
        else:
            assert s.downtime_s == 0
        assert s.klass in ("below basic", "basic", "high", "continuous", "unknown")


# --- the parser, fuzzed -------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)
keys = st.sampled_from(["time", "ts", "event", "node", "peer", "group", "service", "state", "planned", "since",
                        "holder", "new", "reason", "why", "graceful"])
field_values = st.one_of(json_values, st.sampled_from(["up", "down", "dead", "started", "group", "service", "node",
                                                       "daemon", "start", "stop", "ha1", "ha2", "g", "standby"]),
                         st.floats(0, 1e6))
records = st.dictionaries(keys, field_values, max_size=9)
lines = st.lists(st.one_of(records.map(lambda r: json.dumps(r).encode()), st.binary(max_size=40),
                           json_values.map(lambda v: json.dumps(v).encode())), max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=lines)
def test_journal_parser_fuzz_never_crashes_and_counts_what_it_skips(lines):
    recs, bad = parse_journal(lines, source="j")
    nonblank = [i for i, raw in enumerate(lines, 1) if raw.decode("utf-8", "replace").strip()]
    assert len(recs) + len(bad) == len(nonblank)
    assert all(b.lineno in nonblank and str(b).startswith(f"j:{b.lineno}: ") for b in bad)
    r = compute(recs, until=2e6, bad_lines=bad)        # and whatever got through accounts cleanly
    for s in r.subjects:
        assert s.availability is None or 0.0 <= s.availability <= 1.0
    json.dumps(r.to_json())


def test_parser_names_the_line():
    recs, bad = parse_journal([b'{"time": 1, "event": "daemon"}', b"", b"{torn", b"[1]", b'{"time": 1}',
                               b'{"event": "x", "ts": "garbage"}'], source="journal.jsonl")
    assert len(recs) == 1
    assert [str(b).split(": ")[0:2] for b in bad] == [["journal.jsonl:3", "not JSON"],
                                                       ["journal.jsonl:4", "not a JSON object"],
                                                       ["journal.jsonl:5", 'no "event" field'],
                                                       ["journal.jsonl:6", 'no usable "time" or "ts" field']]


# --- the journal writer, and hbctl availability ----------------------------------------------

def test_journal_records_carry_epoch_time_and_are_fsynced(tmp_path, monkeypatch):
    import hbd.journal as journal
    synced = []
    real = journal.os.fdatasync
    monkeypatch.setattr(journal.os, "fdatasync", lambda fd: (synced.append(fd), real(fd)))
    j = Journal(str(tmp_path / "journal.jsonl"), "ha1")
    rec = j.record("group", group="g", state="up", planned=False, why="start succeeded")
    assert len(synced) == 1
    on_disk = read_journal(j.path)[0]
    assert on_disk == json.loads(json.dumps(rec))
    assert abs(datetime.datetime.fromisoformat(on_disk["ts"]).timestamp() - on_disk["time"]) < 1e-5
    j.close()


def write(path, recs, extra=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in recs) + extra)
    return str(path)


def test_hbctl_availability_json_text_and_svg(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HBMON_RUN_DIR", str(tmp_path / "no-hbmon"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write(run_dir / "journal.jsonl", [grp(MON, "up"), grp(MON + 10 * H, "down", planned=True, why="standby")],
          extra=b"{torn line\n")
    peer = write(tmp_path / "peer.jsonl", [grp(MON + 10 * H + 30, "up", node="ha2")])
    base = ["--run-dir", str(run_dir), "availability", "--journal", peer, "--since", "1970-01-05T00:00:00+00:00",
            "--until", "1970-01-06T00:00:00+00:00"]
    assert ctl.main(base + ["--json"]) == 0
    out = capsys.readouterr()
    rep = json.loads(out.out)
    [g] = rep["subjects"]
    assert (g["name"], g["failures"], g["planned_failures"], g["downtime_s"]) == ("g", 1, 1, 30)
    assert g["availability"] == pytest.approx(1 - 30 / 86400)
    assert g["class"] == "basic" and rep["skipped_lines"] == 1
    assert "skipped 1 malformed journal line(s); first: " in out.err and "journal.jsonl:3: not JSON" in out.err

    svg = tmp_path / "a.svg"
    assert ctl.main(base + ["--plot", str(svg)]) == 0
    text = capsys.readouterr().out
    [row] = [line for line in text.splitlines() if "group g" in line]
    assert [c.strip() for c in row.split("│")[1:-1]] == ["group g", "1d00h00m", "23h59m", "1", "1", "23h59m", "30.0s",
                                                          "99.965 %", "3h02m", "basic", "100 %"]
    body = svg.read_text()
    assert body.startswith("<svg") and body.count('fill="#f0a030"') == 2   # the planned stop + legend


def test_hbctl_availability_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HBMON_RUN_DIR", str(tmp_path / "no-hbmon"))
    j = write(tmp_path / "j.jsonl", [grp(0, "up")])
    assert ctl.main(["--run-dir", str(tmp_path), "availability", "--journal", j, "--mission", "8-20"]) == 2
    assert "bad mission '8-20'" in capsys.readouterr().err
    assert ctl.main(["--run-dir", str(tmp_path), "availability", "--journal", str(tmp_path / "none")]) == 1
    assert "No such file or directory" in capsys.readouterr().err
    assert ctl.main(["--run-dir", str(tmp_path / "empty"), "availability"]) == 1
    assert "no journal" in capsys.readouterr().err


def hbmon(t, event, **kw):
    """A record as hbmon writes it (hbmon/daemon.py: Journal.record)."""
    return {"ts": datetime.datetime.fromtimestamp(t, UTC).isoformat(), "time": t, "mono": t, "node": "ha1",
            "event": event, **kw}


HBMON_RUN = [hbmon(0, "daemon", state="start", program="hbmon"),
             hbmon(1, "service", service="http", watch="web", group="10.0.17.26", state="up", planned=False, why="ok", rc=0),
             hbmon(50, "service", service="http", watch="web", group="10.0.17.26", state="down", planned=False,
                   why="10.0.17.26", rc=1),
             hbmon(50, "alert", service="http", watch="web", kind="failure", prog="mail.alert", rc=0),
             hbmon(54, "recovery", service="http", watch="web", group="10.0.17.26", action="restart", result="ok"),
             hbmon(56, "service", service="http", watch="web", group="10.0.17.26", state="up", planned=False, why="ok", rc=0),
             hbmon(60, "daemon", state="stopped", program="hbmon"),
             hbmon(61, "daemon", state="start", program="hbmon")]


def test_hbmon_service_records_merge_with_hbds_journal():
    hbd_recs = [{"time": 0.5, "event": "daemon", "node": "ha1", "state": "start"}, grp(1, "up", group="10.0.17.26"),
                {"time": 70, "event": "daemon", "node": "ha1", "state": "start"}]      # hbd crashed after t=1
    r = compute(hbd_recs + HBMON_RUN, until=100)
    web = one(r, "service", "web/http")
    assert (web.failures, web.downtime_s, web.mttr_s, web.uptime_s) == (1, 6, 6, 93)
    # hbmon's own start/stop records are not hbd's: hbd's crash is dated by hbd's last record (t=1)
    ha1 = one(r, "node", "ha1")
    assert (ha1.failures, ha1.downtime_s) == (1, 69)
    assert [s.name for s in compute(hbd_recs + HBMON_RUN, until=100, kinds=("service",), names=["http"]).subjects] == ["web/http"]
    assert [s.name for s in compute(hbd_recs + HBMON_RUN, until=100, group="10.0.17.26").subjects] == ["10.0.17.26", "web/http"]


def test_hbctl_availability_reads_hbmons_journal(tmp_path, capsys, monkeypatch):
    (tmp_path / "hbd").mkdir()
    (tmp_path / "hbmon").mkdir()
    write(tmp_path / "hbd" / "journal.jsonl", [grp(0, "up", group="10.0.17.26")])
    write(tmp_path / "hbmon" / "hbmon.jsonl", HBMON_RUN)
    monkeypatch.setenv("HBMON_RUN_DIR", str(tmp_path / "hbmon"))
    assert ctl.main(["--run-dir", str(tmp_path / "hbd"), "availability", "--service", "http", "--until",
                     "1970-01-01T00:01:40+00:00", "--json"]) == 0
    [s] = json.loads(capsys.readouterr().out)["subjects"]
    assert (s["name"], s["failures"], s["downtime_s"]) == ("web/http", 1, 6)


def test_a_service_watched_from_a_dead_node_is_unknown_not_up():
    recs = [svc(0, "up", node="ha1", watch="web"),
            {"time": 40, "event": "node", "node": "ha2", "peer": "ha1", "state": "up"},
            {"time": 50, "event": "node", "node": "ha2", "peer": "ha1", "state": "dead", "since": 49},
            svc(70, "up", node="ha2", watch="web"), svc(90, "down", node="ha2", watch="web")]
    s = one(compute(recs, until=100), "service", "web/http")
    assert (s.observed_s, s.uptime_s, s.downtime_s, s.failures) == (79, 69, 10, 1)
    assert [st for _, _, st in s.timeline] == ["up", "up", "down"]


def test_hbctl_knows_where_hbmon_journals():
    from hbmon import daemon
    assert (ctl.DEFAULT_HBMON_RUN_DIR, ctl.HBMON_JOURNAL) == (daemon.DEFAULT_RUN_DIR, daemon.JOURNAL_NAME)
