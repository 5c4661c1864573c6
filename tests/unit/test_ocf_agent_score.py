# SPDX-License-Identifier: GPL-2.0-or-later
"""The OCF agent's policy (scripts/ocf/replica): promotion scores, monitor codes, dump parsing.

The agent is a stdlib-only script without a .py suffix (it is installed as
/usr/lib/ocf/resource.d/replica-ha/replica); it is loaded here as a module.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

AGENT = Path(__file__).resolve().parents[2] / "scripts" / "ocf" / "replica"


def _load():
    loader = importlib.machinery.SourceFileLoader("replica_ocf_agent", str(AGENT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


ocf = _load()

DISKS = ["Diskless", "Attaching", "Failed", "Negotiating", "Inconsistent", "Outdated",
         "Consistent", "UpToDate"]
PEER_DISKS = DISKS + ["DUnknown"]


def status(role="Secondary", disk="UpToDate", peer_disk="DUnknown", connection="Connecting",
           up=True) -> dict:
    return {"name": "r0", "up": up, "standalone": False, "role": role, "disk_state": disk,
            "peer_disk_state": peer_disk, "connection": connection}


# --- promotion_score -------------------------------------------------------------------------

def test_score_primary_uptodate_is_highest():
    assert ocf.promotion_score(status("Primary", "UpToDate", "UpToDate", "Connected")) == 10000
    assert ocf.promotion_score(status("Primary", "UpToDate")) == 10000


def test_score_secondary_uptodate_peer_known_below_primary():
    assert ocf.promotion_score(status("Secondary", "UpToDate", "UpToDate", "Connected")) == 5000


def test_score_secondary_uptodate_peer_unknown():
    assert ocf.promotion_score(status("Secondary", "UpToDate", "DUnknown", "Connecting")) == 1000


def test_score_consistent_is_low():
    assert ocf.promotion_score(status(disk="Consistent")) == 5


def test_score_only_remote_uptodate():
    # a SyncTarget (or a Primary that lost its disk) still reaches UpToDate data through the peer
    assert ocf.promotion_score(status("Secondary", "Inconsistent", "UpToDate", "Connected")) == 10
    assert ocf.promotion_score(status("Primary", "Diskless", "UpToDate", "Connected")) == 10


def test_score_none_without_good_data():
    for disk in ("Outdated", "Inconsistent", "Diskless", "Failed"):
        assert ocf.promotion_score(status(disk=disk)) is None, disk
    # peer UpToDate but not connected: no access to it
    assert ocf.promotion_score(status(disk="Inconsistent", peer_disk="UpToDate",
                                      connection="Connecting")) is None


def test_score_transitional_keeps_attribute():
    assert ocf.promotion_score(status(disk="Attaching")) == ocf.KEEP
    assert ocf.promotion_score(status(disk="Negotiating")) == ocf.KEEP


def test_score_not_up_deletes():
    assert ocf.promotion_score(None) is None
    assert ocf.promotion_score({}) is None
    assert ocf.promotion_score(status(up=False)) is None


@given(role=st.sampled_from(["Primary", "Secondary"]), disk=st.sampled_from(DISKS),
       peer_disk=st.sampled_from(PEER_DISKS),
       connection=st.sampled_from(["StandAlone", "Connecting", "Connected", "Unconnected"]))
def test_score_ladder_properties(role, disk, peer_disk, connection):
    st_ = status(role, disk, peer_disk, connection)
    score = ocf.promotion_score(st_)
    assert score is None or score == ocf.KEEP or isinstance(score, int) and score > 0
    primary_uptodate = ocf.promotion_score(status("Primary", "UpToDate", peer_disk, connection))
    if isinstance(score, int) and not (role == "Primary" and disk == "UpToDate"):
        assert score < primary_uptodate       # a healthy Primary always outranks
    if disk != "UpToDate" and isinstance(score, int):
        assert score <= ocf.ONLY_REMOTE       # only UpToDate data earns a real score
    if disk in ("Outdated", "Failed") and not (connection == "Connected" and peer_disk == "UpToDate"):
        assert score is None


JUNK = st.one_of(st.sampled_from(DISKS + ["Primary", "Secondary", "Connected", "DUnknown"]),
                 st.text(max_size=8), st.booleans(), st.none(), st.integers())


# the machine is shared: generation time is not what this test is about
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["up", "role", "disk_state", "peer_disk_state", "connection"]),
                       JUNK))
def test_score_and_monitor_total_on_junk(d):
    """Any status object (a newer replicactl, a half-written reply) gives an answer, not a crash."""
    assert ocf.promotion_score(d) in (None, ocf.KEEP, 10000, 5000, 1000, 10, 5)
    assert ocf.monitor_code(d) in (0, 7, 8, 9)


# --- monitor_code ----------------------------------------------------------------------------

def test_monitor_codes():
    assert ocf.monitor_code(None) == ocf.OCF_NOT_RUNNING == 7
    assert ocf.monitor_code(status(up=False)) == 7
    assert ocf.monitor_code(status("Secondary", "Inconsistent")) == ocf.OCF_SUCCESS == 0
    assert ocf.monitor_code(status("Primary", "UpToDate")) == ocf.OCF_RUNNING_PROMOTED == 8
    assert ocf.monitor_code(status("Primary", "Inconsistent", "UpToDate", "Connected")) == 8
    assert ocf.monitor_code(status("Primary", "Diskless")) == ocf.OCF_FAILED_PROMOTED == 9
    assert ocf.monitor_code(status("Primary", "Failed", "UpToDate", "Connecting")) == 9


# --- count_on_sections (parser of `replicactl dump`) --------------------------------------------

DUMP = """\
# /etc/replica/replica.conf: normalised by replica (common values folded into each resource)
resource r0 {
    net {
        protocol C;
    }
    on alpha {
        disk /dev/vg0/r0;
    }
    on beta {
        disk /dev/vg0/r0;
    }
}
resource r1 {
    on alpha {
        disk /dev/vg0/r1;
    }
}
"""


def test_count_on_sections():
    assert ocf.count_on_sections(DUMP, "r0") == 2
    assert ocf.count_on_sections(DUMP, "r1") == 1
    assert ocf.count_on_sections(DUMP, "r2") is None
    assert ocf.count_on_sections("", "r0") is None


@given(st.text(alphabet="resouncab{} \n;r0", max_size=200))
def test_count_on_sections_fuzz(text):
    n = ocf.count_on_sections(text, "r0")
    assert n is None or 0 <= n <= text.count("on")
    if "resource r0 {" not in text:
        assert n is None
