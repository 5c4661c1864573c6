# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.blockdev without root: the device's names, its links, holders, the crash record."""
import json
import os

import pytest

from replica import blockdev
from replica.blockdev import cleanup_after_crash, device_names, make_link, record_path, remove_link
from replica.cli import format_status
from replica.config import parse_config
from replica.errors import ReplicaError


def _host(device_line: str, kind: str = ""):
    text = ("resource r0 {\n    on a {\n        " + device_line + "\n        disk /tmp/a;\n"
            + (f"        device-kind {kind};\n" if kind else "") + "    }\n}\n")
    return parse_config(text, "/etc/replica.conf").resource("r0").host("a")


def test_names_are_replica_res_then_the_device_line():
    assert device_names("r0", _host("device /dev/drbd0;")) == ["/dev/replica/r0", "/dev/drbd0"]
    assert device_names("r0", _host("device minor 3;")) == ["/dev/replica/r0", "/dev/drbd3"]
    assert device_names("r0", _host("device drbd7 minor 7;")) == ["/dev/replica/r0", "/dev/drbd7"]
    assert device_names("r0", _host("")) == ["/dev/replica/r0"]


def test_device_kind_is_parsed_and_checked():
    assert _host("device /dev/drbd0;").device_kind == "auto"
    assert _host("device /dev/drbd0;", "fuse").device_kind == "fuse"
    with pytest.raises(Exception, match=r"replica.conf:5: .*device-kind: expected one of auto, "
                                        r"nbd, fuse, got 'ublk'"):
        _host("device /dev/drbd0;", "ublk")


def test_links_replace_a_stale_link_but_never_a_real_file(tmp_path):
    name = str(tmp_path / "dev" / "drbd0")
    make_link(name, "/dev/loop7")
    assert os.readlink(name) == "/dev/loop7"
    make_link(name, "/dev/loop9")                    # a dead daemon's link is replaced
    assert os.readlink(name) == "/dev/loop9"
    assert not remove_link(name, "/dev/loop7")       # not ours any more: left alone
    assert remove_link(name, "/dev/loop9")
    assert not os.path.lexists(name)
    real = tmp_path / "real"
    real.write_text("x")
    with pytest.raises(ReplicaError, match="exists and is not a link made by replicad"):
        make_link(str(real), "/dev/loop7")
    assert real.read_text() == "x"


def test_a_dead_daemons_cleanup_spares_the_survivors_link_to_a_reused_loop(tmp_path, monkeypatch):
    # two nodes on one machine share /dev: ha1 dies, its loop device frees itself, ha2 gets
    # the same /dev/loopN and makes its own /dev/drbd0; ha1's down --force must leave it
    name = str(tmp_path / "dev" / "drbd0")
    mine = make_link(name, "/dev/loop0")
    rec = {"resource": "r0", "kind": "fuse", "names": [name], "kernel": "/dev/loop0",
           "pid": 4242, "backend": {}, "link_inodes": {name: mine}}
    with open(record_path(str(tmp_path), "r0"), "w") as f:
        json.dump(rec, f)
    survivors = make_link(name, "/dev/loop0")
    assert survivors != mine
    monkeypatch.setattr(blockdev, "_alive", lambda pid: False)
    assert not [line for line in cleanup_after_crash(str(tmp_path), "r0") if name in line]
    assert os.readlink(name) == "/dev/loop0" and os.lstat(name).st_ino == survivors
    assert not remove_link(name, "/dev/loop0", mine)
    assert remove_link(name, "/dev/loop0", survivors)


def test_holders_of_what_is_not_a_block_device_is_nobody(tmp_path):
    assert blockdev.holders(str(tmp_path / "missing")) == []
    assert blockdev.holders("/dev/null") == []


def test_cleanup_without_a_record_does_nothing(tmp_path):
    assert cleanup_after_crash(str(tmp_path), "r0") == []


def test_cleanup_refuses_while_the_recording_daemon_still_runs(tmp_path, monkeypatch):
    rec = {"resource": "r0", "kind": "fuse", "names": [], "kernel": "/dev/loop3",
           "pid": 4242, "backend": {}}
    with open(record_path(str(tmp_path), "r0"), "w") as f:
        json.dump(rec, f)
    monkeypatch.setattr(blockdev, "_alive", lambda pid: pid == 4242)
    with pytest.raises(ReplicaError, match="still served by replicad pid 4242"):
        cleanup_after_crash(str(tmp_path), "r0")


def test_unreadable_record_is_a_clear_error(tmp_path):
    with open(record_path(str(tmp_path), "r0"), "w") as f:
        f.write("{not json")
    with pytest.raises(ReplicaError, match=r"r0: unreadable device record .*r0.device.json"):
        cleanup_after_crash(str(tmp_path), "r0")


def test_status_shows_the_device_and_its_holders():
    st = {"name": "r0", "role": "Primary", "disk_state": "UpToDate", "standalone": True,
          "device": {"path": "/dev/drbd0", "kernel": "/dev/loop3", "kind": "fuse",
                     "holders": ["mounted on /data", "open by pid 7 (dd)"]}}
    assert format_status(st) == ("r0 role:Primary\n  disk:UpToDate\n  device:/dev/drbd0 "
                                 "kernel:/dev/loop3 (fuse) mounted on /data; open by pid 7 (dd)")
