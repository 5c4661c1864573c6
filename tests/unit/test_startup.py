# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.startup: the startup{} timeouts and wait-connect's verdicts, as DRBD 8.4 decides."""
from hypothesis import given
from hypothesis import strategies as st

from replica.roles import AttachInfo
from replica.startup import becomes_primary, wait_verdict, wfc_option, wfc_timeout_s


def test_which_timeout_follows_the_flags_of_the_last_shutdown():
    assert wfc_option(AttachInfo(True, True, was_connected=True)) == "wfc-timeout"
    assert wfc_option(AttachInfo(True, True, peer_outdated=True, was_connected=False)) == \
        "outdated-wfc-timeout"
    assert wfc_option(AttachInfo(True, True, was_connected=False)) == "degr-wfc-timeout"


def test_timeouts_default_as_in_drbd_and_read_the_config():
    assert wfc_timeout_s({}, "wfc-timeout") == 0            # forever
    assert wfc_timeout_s({}, "degr-wfc-timeout") == 60
    assert wfc_timeout_s({}, "outdated-wfc-timeout") == 0
    assert wfc_timeout_s({"degr-wfc-timeout": "5"}, "degr-wfc-timeout") == 5


def test_verdicts():
    up = {"up": True, "standalone": False}
    assert wait_verdict({**up, "connection": "Connected"}, False).ok
    assert not wait_verdict({**up, "connection": "Connecting"}, False).done
    sb = {**up, "connection": "StandAlone",
          "link_error": "peer 10.0.0.2:7789: Split-Brain detected but unresolved, dropping connection!"}
    v = wait_verdict(sb, False)
    assert v.done and not v.ok and "wait-after-sb" in v.why
    assert not wait_verdict(sb, True).done
    v = wait_verdict({**up, "connection": "StandAlone", "link_error": "authentication of peer failed"}, True)
    assert v.done and not v.ok and "will not connect by itself" in v.why
    assert not wait_verdict({"up": False}, False).ok
    assert wait_verdict({"up": True, "standalone": True}, False).ok


def test_become_primary_on():
    assert becomes_primary({"become-primary-on": "alpha"}, "alpha")
    assert becomes_primary({"become-primary-on": "both"}, "beta")
    assert not becomes_primary({"become-primary-on": "alpha"}, "beta")
    assert not becomes_primary({}, "alpha")


@given(st.dictionaries(st.sampled_from(["up", "standalone", "connection", "link_error"]),
                       st.one_of(st.booleans(), st.text(max_size=30), st.none())), st.booleans())
def test_any_status_gets_a_verdict(status, wait_after_sb):
    v = wait_verdict(status, wait_after_sb)
    assert v.done or not v.ok
