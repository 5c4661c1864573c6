# SPDX-License-Identifier: GPL-2.0-or-later
"""hbmon: the mon.cf parser (Mon's read_cf rules, file:line errors, fuzz) and the alert decisions."""
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacommon.errors import ConfigError
from hbmon.config import parse_depend, parse_mon_config, parse_period, parse_time
from hbmon.state import ServiceState

EXAMPLE = """\
# the heartbeat-reference example, with a dependency
alertdir = /usr/lib/mon/alert.d
mondir   = /usr/lib/mon/mon.d
maxprocs = 20
randstart = 2s

hostgroup web 10.0.17.26
    10.0.17.27

hostgroup routers gw1

watch routers
    service ping
        interval 30s
        monitor ping.monitor
        period wd {Sun-Sat}
            alert mail.alert root@localhost

watch web
    service http
        description web server
        interval 1.5m
        monitor http.monitor -p 80 \\
            -u /index.html
        depend routers:ping && SELF:tcp
        dep_behavior m
        timeout 5s
        restart httpd
        restart_max 2
        period day: wd {Mon-Fri} hr {7am-10pm}
            alertafter 2
            alert mail.alert root@localhost
            alertevery 15m observe_detail
            upalert mail.alert root@localhost
            numalerts 3
    service tcp
        interval 10s
        monitor tcp.monitor -p 80 ;;
        period
            alert file.alert /tmp/x
"""


def test_example_parses_with_mon_semantics():
    cfg = parse_mon_config(EXAMPLE, "mon.cf")
    assert cfg.hostgroups == {"web": ["10.0.17.26", "10.0.17.27"], "routers": ["gw1"]}
    http = cfg.watches["web"]["http"]
    assert http.interval_s == 90.0 and http.timeout_s == 5.0
    assert http.monitor == ("http.monitor", "-p", "80", "-u", "/index.html") and http.monitor_hosts
    assert http.depend is not None and http.depend.tokens() == [("routers", "ping"), ("web", "tcp")]
    assert http.dep_behavior == "m" and http.restart == ("httpd",) and http.restart_max == 2
    per = http.periods[0]
    assert per.period.label == "day" and per.alertafter_consec == 2 and per.alertevery_s == 900
    assert per.alertevery_mode == "observe_detail" and per.numalerts == 3
    assert [a.prog for a in per.alerts] == ["mail.alert"] and per.upalerts[0].args == ("root@localhost",)
    tcp = cfg.watches["web"]["tcp"]
    assert tcp.monitor == ("tcp.monitor", "-p", "80") and not tcp.monitor_hosts
    assert cfg.maxprocs == 20 and cfg.randstart_s == 2.0 and cfg.mondirs == ("/usr/lib/mon/mon.d",)


def test_debian_mon_cf_parses():
    path = "/etc/mon/mon.cf"
    if not os.path.exists(path):
        pytest.skip("needs Debian's mon package (/etc/mon/mon.cf; make deps installs it)")
    with open(path) as f:
        cfg = parse_mon_config(f.read(), path)
    assert cfg.watches["localhost"]["ping"].monitor == ("fping.monitor",)
    assert any("traptimeout' not supported yet" in w for w in cfg.warnings)


@pytest.mark.parametrize("text,message", [
    ("bogus = 1\n", "mon.cf:1: cf error: unknown variable 'bogus'"),
    ("randstart = soon\n", "mon.cf:1: cf error: bad value 'soon' for randstart option"),
    ("watch w\n    interval 5s\n", "mon.cf:2: cf error: need to specify service in watch record"),
    ("watch w\n service s\n  interval 30\n", "mon.cf:3: invalid time interval '30' (syntax: interval"),
    ("watch w\n service s\n  frobnicate 1\n", "mon.cf:3: cf error: unknown syntax [frobnicate 1]"),
    ("watch w\n service s\n  period wd {Mon-Fri}\n   interval 5s\n", "mon.cf:4: cf error: unknown syntax [interval 5s]"),
    ("watch w\n service s\n  period wd {Funday}\n", "mon.cf:3: cf error: malformed period 'wd {Funday}'"),
    ("watch w\n service s\n  period yr {2020}\n", "not supported yet"),
    ("watch w\n service s\n service s\n", "mon.cf:3: cf error: service s already defined for watch group w"),
    ("watch w\n service s\n  depend a:b &&\n", "mon.cf:3: cf error: bad depend expression"),
    ("watch w\n service s\n  depend x:y\n  monitor m\n  interval 1s\n", "depend names x:y, which is not a service"),
    ("watch w\n service s\n  monitor m\n", "mon.cf:2: service w/s: monitor without interval"),
    ("watch w\n service s\n  period\n   numalerts many\n", "mon.cf:4: cf error: -numeric arg 'many'"),
    ("watch w\n service s\n  interval 10s\n  period\n   alertafter 3 10s\n", "interval & alertafter not sensible"),
    ("watch w\nwatch w\n", "mon.cf:2: cf error: watch 'w' already defined"),
    ("hostgroup g a\n\nwatch w\n\n service s\n", "mon.cf:5: cf error: unknown syntax [service s]"),
])
def test_errors_name_file_line_and_mon_wording(text, message):
    with pytest.raises(ConfigError) as e:
        parse_mon_config(text, "mon.cf")
    assert message in str(e.value)


def test_times_periods_and_depend():
    assert parse_time("1.5m") == 90 and parse_time("2h") == 7200 and parse_time("30") is None
    p = parse_period("wd {Mon-Fri} hr {9am-5pm}, wd {Sat} hr {10-11}")
    assert p.contains((1, 9, 0, 1, 0)) and p.contains((5, 17, 59, 1, 0)) and not p.contains((1, 18, 0, 1, 0))
    assert p.contains((6, 11, 0, 1, 0)) and not p.contains((0, 11, 0, 1, 0))
    assert parse_period("wd {Fri-Mon}").contains((0, 0, 0, 1, 0))      # wraps over the weekend
    assert parse_period("").contains((3, 3, 3, 3, 3))
    d = parse_depend("a:x && (b:y || !c:z)", "w")
    assert d.evaluate(lambda g, s: True)
    assert not d.evaluate(lambda g, s: g != "a")
    assert not d.evaluate(lambda g, s: g != "b")       # b:y false and !c:z false
    assert d.evaluate(lambda g, s: g == "a")           # b:y false but !c:z true


def _svc(period_lines: str, extra: str = ""):
    text = f"watch w\n service s\n  interval 1s\n  monitor m\n{extra}  period\n" + "".join(
        f"   {ln}\n" for ln in period_lines.split(";"))
    return parse_mon_config(text, "mon.cf").watches["w"]["s"]


TM = (1, 12, 0, 1, 0)


def kinds(outcome):
    return [a.kind for a in outcome.alerts]


def test_alert_once_with_alertevery_then_upalert():
    st = ServiceState(_svc("alert a;alertevery 1h;upalert u"))
    assert st.on_result(True, 0, "", "", 0, TM).transition == "up"
    o = st.on_result(False, 1, "h1", "d", 10, TM)
    assert o.transition == "down" and kinds(o) == ["failure"]
    assert kinds(st.on_result(False, 1, "h1", "d2", 20, TM)) == []       # same summary: de-duplicated
    assert kinds(st.on_result(False, 1, "h1 h2", "d", 30, TM)) == ["failure"]   # summary changed
    assert kinds(st.on_result(False, 1, "h1 h2", "d", 3700, TM)) == ["failure"]  # an hour later
    o = st.on_result(True, 0, "", "", 3710, TM)
    assert o.transition == "up" and kinds(o) == ["up"]
    assert kinds(st.on_result(True, 0, "", "", 3720, TM)) == []


def test_alertafter_numalerts_and_no_upalert_without_alert():
    st = ServiceState(_svc("alert a;alertafter 3;numalerts 1;upalert u"))
    assert [kinds(st.on_result(False, 1, f"s{i}", "", i, TM)) for i in range(5)] == [[], [], ["failure"], [], []]
    st2 = ServiceState(_svc("alert a;alertafter 3;upalert u"))
    st2.on_result(False, 1, "x", "", 0, TM)
    assert kinds(st2.on_result(True, 0, "", "", 1, TM)) == []          # no down alert, no upalert


def test_dependency_suppresses_alerts_and_recovery_counts_restarts():
    svc = _svc("alert a", extra="  restart httpd\n  restart_max 2\n")
    st = ServiceState(svc)
    o = st.on_result(False, 1, "x", "", 0, TM, depend_ok=False)
    assert o.suppressed and kinds(o) == [] and o.recovery is None
    assert [st.on_result(False, 1, "x", "", t, TM).recovery for t in (1, 2, 3, 4)] == \
        ["restart", "restart", "failover", None]
    st.on_result(True, 0, "", "", 5, TM)
    assert st.restarts == 0 and not st.failed_over


def test_outside_the_period_no_alert():
    st = ServiceState(parse_mon_config("watch w\n service s\n  interval 1s\n  monitor m\n  period wd {Sat-Sun}\n"
                                       "   alert a\n", "mon.cf").watches["w"]["s"])
    assert kinds(st.on_result(False, 1, "x", "", 0, (1, 12, 0, 1, 0))) == []
    assert kinds(st.on_result(False, 1, "x", "", 1, (0, 12, 0, 1, 0))) == ["failure"]


WORDS = ["hostgroup", "watch", "service", "interval", "monitor", "period", "alert", "upalert", "alertevery",
         "alertafter", "numalerts", "depend", "dep_behavior", "restart", "timeout", "alertdir", "=", "wd",
         "{Mon-Fri}", "hr", "{7am-5pm}", "5s", "2", "g:s", "&&", "(", ")", "!", ";;", "\\", "#", "x"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=6), max_size=15),
       st.lists(st.sampled_from(["", " ", "  ", "\t"]), min_size=15, max_size=15))
def test_fuzz_parser_raises_config_error_or_parses(lines, indents):
    text = "\n".join(ind + " ".join(words) for ind, words in zip(indents, lines, strict=False))
    try:
        cfg = parse_mon_config(text, "fuzz.cf")
    except ConfigError as e:
        assert str(e).startswith("fuzz.cf:")
        return
    for s in cfg.services():
        assert s.key.startswith(s.watch + "/")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_period_and_depend(text):
    for fn in (parse_period, lambda t: parse_depend(t, "w")):
        try:
            fn(text)
        except ValueError:
            pass
