# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.group_table: the group manager's bookkeeping of states and operations in flight, alone."""
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from hbd.group_actions import GroupChanged, GroupState, StartGroup, StopGroup
from hbd.group_table import GroupTable


@dataclass(frozen=True)
class Group:
    node: str
    name: str


GROUPS = (Group("ha1", "a"), Group("ha2", "b"), Group("ha1", "c"))


def make():
    out, failed = [], []
    return GroupTable(GROUPS, out.append, failed.append), out, failed


def test_start_then_success_reports_each_transition_and_runs_waiters_once_idle():
    t, out, failed = make()
    ran = []
    assert t.start_keys(["a", "c"], "why") is True
    t.after(lambda: ran.append(t.busy()))
    assert out == [GroupChanged("a", GroupState.STOPPED, GroupState.STARTING, "why"), StartGroup("a", "why"),
                   GroupChanged("c", GroupState.STOPPED, GroupState.STARTING, "why"), StartGroup("c", "why")]
    assert t.held_keys() == ("a", "c") and t.busy()
    t.complete("a", True, GroupState.STARTED)
    assert ran == []                                  # c still queued
    t.complete("c", True, GroupState.STARTED)
    assert ran == [False] and failed == []
    assert t.state == {"a": GroupState.STARTED, "b": GroupState.STOPPED, "c": GroupState.STARTED}


def test_a_failed_start_calls_back_before_the_waiters_and_a_failed_stop_does_not():
    t, out, failed = make()
    order = []
    t.start_keys(["b"], "x")
    t.after(lambda: order.append(("after", list(failed))))
    t.complete("b", False, GroupState.STARTED)
    assert order == [("after", ["b"])] and t.state["b"] is GroupState.FAILED
    assert out[-1] == GroupChanged("b", GroupState.STARTING, GroupState.FAILED, "start failed")
    t.stop_keys(["b"], "y")
    t.complete("b", False, GroupState.STOPPED)
    assert failed == ["b"]                            # only a start hands the group off
    assert out[-2:] == [StopGroup("b", "y"), GroupChanged("b", GroupState.STOPPING, GroupState.FAILED, "stop failed")]


def test_a_report_with_nothing_queued_changes_nothing():
    t, out, failed = make()
    t.complete("a", True, GroupState.STARTED)
    assert out == [] and t.state["a"] is GroupState.STOPPED


def test_keys_for_hold_is_relative_to_the_node_named():
    t, _, _ = make()
    assert t.keys_for_hold("local", "ha1") == ["a", "c"]
    assert t.keys_for_hold("foreign", "ha1") == ["b"]
    assert t.keys_for_hold("all", "ha2") == ["a", "b", "c"]
    assert t.keys_for_hold("none", "ha1") == []


def test_replace_keeps_kept_keys_and_their_queue():
    t, out, _ = make()
    t.start_keys(["a", "b"], "x")
    t.complete("b", True, GroupState.STARTED)
    t.replace((Group("ha1", "a"), Group("ha2", "b"), Group("ha2", "d")))
    assert t.state == {"a": GroupState.STARTING, "b": GroupState.STARTED, "d": GroupState.STOPPED}
    assert t.busy()                                   # a's start is still queued
    t.complete("a", True, GroupState.STARTED)
    assert not t.busy() and t.held_keys() == ("a", "b")


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.booleans()), max_size=30))
def test_every_queued_operation_is_counted_once(ops):
    """Waiters run exactly when the last queued operation is reported, whatever the order."""
    t, _, _ = make()
    ran = []
    queued = []
    for key, start, ok in ops:
        (t.start_keys if start else t.stop_keys)([key], "r")
        queued.append((key, ok, GroupState.STARTED if start else GroupState.STOPPED))
    t.after(lambda: ran.append(True))
    assert ran == ([] if queued else [True])
    for i, (key, ok, target) in enumerate(queued):
        t.complete(key, ok, target)
        assert t.busy() == (i < len(queued) - 1)
    assert ran == [True]
