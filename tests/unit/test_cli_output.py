# SPDX-License-Identifier: GPL-2.0-or-later
"""replicactl without a cluster: drbdadm-style output formats, the command table and options,
refusal sentences and exit codes (against a stand-in daemon on a unix socket), and offline
create-md / dump-md on a temporary disk."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import cli
from replica.control import ControlServer
from replica.states import Refusal

BASE = {"name": "r0", "up": True, "standalone": False, "peer": "beta", "role": "Primary",
        "peer_role": "Secondary", "disk_state": "UpToDate", "peer_disk_state": "UpToDate",
        "connection": "Connected", "replication": "Established", "cstate": "Connected",
        "out_of_sync_bytes": 0, "stats": {}}


def status(**kw):
    return {**BASE, **kw}


def test_status_connected_established():
    assert cli.format_status(status()) == (
        "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    peer-disk:UpToDate")


def test_status_during_resync_shows_replication_and_done():
    st_ = status(role="Secondary", peer_role="Primary", disk_state="Inconsistent",
                 replication="SyncTarget", cstate="SyncTarget",
                 resync={"percent": 19.4, "done_bytes": 1, "total_bytes": 2, "rate_bps": 1 << 20,
                         "avg_rate_bps": 1, "eta_s": 12.0})
    assert cli.format_status(st_) == ("r0 role:Secondary\n  disk:Inconsistent\n"
                                      "  beta role:Primary\n"
                                      "    replication:SyncTarget peer-disk:UpToDate done:19.40")
    verbose = cli.format_status(st_, verbose=True).splitlines()[-1]
    assert verbose.endswith("dbdt1:1.00 eta:12")
    assert " out-of-sync:0 pending:0 " in verbose


def test_status_not_connected_prints_connection_state_only():
    for conn in ("Connecting", "StandAlone"):
        assert cli.format_status(status(connection=conn, cstate=conn, peer_role="Unknown")) == (
            f"r0 role:Primary\n  disk:UpToDate\n  beta connection:{conn}")


def test_status_standalone_resource_has_no_peer_lines():
    assert cli.format_status(status(standalone=True, peer=None)) == \
        "r0 role:Primary\n  disk:UpToDate"


def test_role_cstate_dstate_84_format():
    assert cli.render_role(status()) == "Primary/Secondary"
    assert cli.render_dstate(status(peer_disk_state="DUnknown")) == "UpToDate/DUnknown"
    assert cli.render_cstate(status(cstate="SyncSource")) == "SyncSource"


def test_command_table_has_drbdadm_verbs_and_options():
    names = {c.name for c in cli.COMMANDS}
    assert {"create-md", "dump-md", "up", "down", "attach", "detach", "connect", "disconnect",
            "primary", "secondary", "status", "role", "cstate", "dstate", "invalidate",
            "invalidate-remote", "new-current-uuid"} <= names
    p = cli.build_parser()
    assert p.parse_args(["primary", "--force", "r0"]).force is True
    assert p.parse_args(["connect", "--discard-my-data", "r0"]).discard_my_data is True
    assert p.parse_args(["new-current-uuid", "--clear-bitmap", "r0"]).clear_bitmap is True
    assert p.parse_args(["create-md", "--force", "r0"]).force is True
    assert p.parse_args(["dump-md", "--json", "r0"]).json is True
    assert p.parse_args(["status"]).resource is None
    with pytest.raises(SystemExit):
        p.parse_args(["primary", "--discard-my-data", "r0"])


CONF = """resource r0 {{
    on alpha {{ disk {disk}; meta-disk internal; address 10.1.1.1:7789; }}
    on beta {{ disk {disk}; meta-disk internal; address 10.1.1.2:7789; }}
}}
"""


@pytest.fixture
def env(tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    conf = tmp_path / "replica.conf"
    conf.write_text(CONF.format(disk=disk))
    run = tmp_path / "run"
    run.mkdir()
    return {"conf": conf, "run": run, "disk": disk}


def run_cli(env, *args):
    return cli.main(["--config", str(env["conf"]), "--node", "alpha", "--run-dir",
                     str(env["run"]), *args])


class FakeDaemon:
    """Answers like replicad would: records requests, replies with a canned answer."""

    def __init__(self, env, reply):
        self.requests = []
        self.reply = reply
        self.server = ControlServer(str(env["run"] / "replicad.sock"), self.handle, name="replicad")

    def handle(self, req):
        self.requests.append(req)
        if req["cmd"] == "ping":
            return {"ok": True}
        return self.reply(req)

    def close(self):
        self.server.close()


@pytest.mark.parametrize("args,refusal", [
    (("primary", "r0"), Refusal.NO_UP_TO_DATE_DISK),
    (("secondary", "r0"), Refusal.DEVICE_IN_USE),
    (("connect", "r0"), Refusal.NET_CONFIGURED),
    (("primary", "--force", "r0"), Refusal.TWO_PRIMARIES),
])
def test_refusal_is_one_sentence_and_exit_17(env, capsys, args, refusal):
    d = FakeDaemon(env, lambda req: {"ok": False, "error": f"r0: {refusal.sentence}",
                                      "refusal": refusal.name, "context": "r0"})
    try:
        assert run_cli(env, *args) == cli.EXIT_REFUSED
    finally:
        d.close()
    assert capsys.readouterr().err == f"r0: State change failed: {refusal.sentence}\n"
    assert d.requests[-1]["cmd"] == args[0]
    assert d.requests[-1].get("force", False) == ("--force" in args)


def test_a_sentence_without_a_refusal_name_is_an_error_not_a_refusal(env, capsys):
    # the exit code comes from the reply's "refusal" name, never from matching the sentence
    sentence = Refusal.NO_UP_TO_DATE_DISK.sentence
    d = FakeDaemon(env, lambda req: {"ok": False, "error": f"r0: {sentence}"})
    try:
        assert run_cli(env, "primary", "r0") == cli.EXIT_ERROR
    finally:
        d.close()
    assert capsys.readouterr().err == f"replicactl: primary: r0: {sentence}\n"


def test_options_reach_the_daemon(env):
    d = FakeDaemon(env, lambda req: {"ok": True, "status": {}})
    try:
        assert run_cli(env, "connect", "--discard-my-data", "r0") == 0
        assert run_cli(env, "new-current-uuid", "--clear-bitmap", "r0") == 0
        assert run_cli(env, "invalidate-remote", "r0") == 0
    finally:
        d.close()
    sent = [r for r in d.requests if r["cmd"] != "ping"]
    # each command names the config and node it was given: the daemon acts on those (drbdadm)
    given = {"config": str(env["conf"]), "node": "alpha"}
    assert sent[0] == {"cmd": "connect", "resource": "r0", "discard_my_data": True, **given}
    assert sent[1] == {"cmd": "new-current-uuid", "resource": "r0", "clear_bitmap": True, **given}
    assert sent[2] == {"cmd": "invalidate-remote", "resource": "r0", **given}


def test_other_errors_exit_1_with_context(env, capsys):
    d = FakeDaemon(env, lambda req: {"ok": False, "error": "r0: attach: open-md: x: no valid "
                                     "metadata found"})
    try:
        assert run_cli(env, "detach", "r0") == 1
    finally:
        d.close()
    assert capsys.readouterr().err.startswith("replicactl: detach: r0: attach: open-md")


def test_verbs_without_daemon_say_no_such_resource(env, capsys):
    assert run_cli(env, "primary", "r0") == cli.EXIT_NO_RESOURCE
    assert "r0: No such resource" in capsys.readouterr().err
    assert run_cli(env, "role", "r0") == cli.EXIT_NO_RESOURCE
    assert run_cli(env, "down", "r0") == 0          # nothing is up: down is already true


def test_status_json_and_text_from_daemon(env, capsys):
    reply = {"ok": True, "resources": [status(resync=None)]}
    d = FakeDaemon(env, lambda req: reply)
    try:
        assert run_cli(env, "status", "r0") == 0
        text = capsys.readouterr().out
        assert run_cli(env, "status", "--json") == 0
        data = json.loads(capsys.readouterr().out)
        assert run_cli(env, "dstate", "r0") == 0
        dstate = capsys.readouterr().out
    finally:
        d.close()
    assert text == "r0 role:Primary\n  disk:UpToDate\n  beta role:Secondary\n    peer-disk:UpToDate\n\n"
    assert data[0]["name"] == "r0" and data[0]["peer_disk_state"] == "UpToDate"
    assert dstate == "UpToDate/UpToDate\n"


def test_create_md_then_dump_md_offline(env, capsys):
    assert run_cli(env, "dump-md", "r0") == 1
    assert "no valid metadata found" in capsys.readouterr().err
    assert run_cli(env, "create-md", "r0") == 0
    assert "successfully created" in capsys.readouterr().out
    assert run_cli(env, "create-md", "r0") == 1
    assert "--force" in capsys.readouterr().err
    assert run_cli(env, "create-md", "--force", "r0") == 0
    capsys.readouterr()
    assert run_cli(env, "dump-md", "r0") == 0
    text = capsys.readouterr().out
    assert text.startswith('version "v08";') and "0x0000000000000004;" in text
    assert run_cli(env, "dump-md", "--json", "r0") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["uuid"]["current"] == "0x0000000000000004" and data["bits_set"] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["up", "down", "primary", "secondary", "--force", "--json",
                                 "--clear-bitmap", "--discard-my-data", "r0", "r9", "all",
                                 "status", "dump-md", "role", "-x", "", "\x00", "connect"]),
                max_size=5))
def test_fuzz_argv_never_crashes(tmp_path_factory, argv):
    """Any argv: an exit code or argparse's usage error, never a traceback or a daemon start."""
    tmp = tmp_path_factory.mktemp("fuzz")
    conf = tmp / "replica.conf"
    conf.write_text(CONF.format(disk=tmp / "none.img"))
    if argv and argv[0] in ("up", "attach"):
        argv = ["status", *argv[1:]]            # never start a real daemon here
    try:
        rc = cli.main(["--config", str(conf), "--node", "alpha", "--run-dir", str(tmp / "run"),
                       *argv])
    except SystemExit as exc:
        assert exc.code == 2
        return
    assert rc in (0, 1, cli.EXIT_NO_RESOURCE, cli.EXIT_REFUSED)
