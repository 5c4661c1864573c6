# SPDX-License-Identifier: GPL-2.0-or-later
"""hbctl: talk to a running hbd through RUN_DIR/hbd.sock (one JSON line each way).

    hbctl [--run-dir DIR] status                like `cl_status hbstatus`, plus nodes, groups, journal
    hbctl nodestatus NODE                       init | up | active | dead  (like `cl_status nodestatus`)
    hbctl rscstatus                             none | local | foreign | all | transition
    hbctl standby [all|foreign|local]           like `hb_standby`: give those groups to the peer
    hbctl takeover [all|foreign|local]          like `hb_takeover`: ask the peer for them

standby/takeover wait (up to --timeout seconds, default 120) until the move is
over and print what this node then holds; --no-wait returns once the request is
sent.  If nothing moved after 15 s (the peer was in transition and ignored the
request, as heartbeat does) the command fails.
Exit codes: 0 ok; 1 refused/failed/timed out; 3 hbd is not running (status
prints "Heartbeat is stopped on this machine."); 2 usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from hacommon.control import BadReply, ControlError, NotListening, exchange
from hbd.control import SOCKET_NAME
from hbd.journal import format_record

DEFAULT_RUN_DIR = "/run/hbd"
NO_CHANGE_GIVE_UP_S = 15.0   # the peer ignores a standby request while it is in flux


class NotRunning(Exception):
    """hbd does not answer on its control socket (exit code 3)."""


def request(run_dir: str, req: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    """One request to the hbd of `run_dir` (hacommon.control); NotRunning if it cannot answer."""
    path = os.path.join(run_dir, SOCKET_NAME)
    try:
        return exchange(path, req, timeout_s)
    except NotListening as e:
        raise NotRunning(f"hbctl: hbd is not running: {path}: {e.strerror}") from None
    except BadReply as e:
        raise NotRunning(f"hbctl: bad answer from hbd at {path}: {e.data[:80]!r}") from None


def print_status(st: dict) -> None:
    print("Heartbeat is running on this machine.")
    mem, grp = st["membership"], st["groups"]
    print(f"node {mem['node']}: {mem['status']} (this node, generation {mem['generation']}, pid {st['pid']})")
    for name, p in sorted(mem["peers"].items()):
        print(f"node {name}: {p['status']}")
    print(f"resources: {grp['rscstatus']} (auto_failback {grp['auto_failback']})")
    for g in grp["groups"]:
        print(f"  group {g['key']} (preferred {g['node']}): {g['state']}")
    if grp.get("standby"):
        print(f"  standby in progress: {grp['standby']}")
    if grp.get("fencing"):
        print(f"  fencing in progress: {grp['fencing']}")
    c = mem["counters"]
    dropped = {k: v for k, v in c.items() if k.startswith("dropped_") and v}
    print(f"packets: received {c.get('received', 0)} accepted {c.get('accepted', 0)} sent {c.get('sent', 0)}"
          + (" dropped " + " ".join(f"{k[8:]}={v}" for k, v in dropped.items()) if dropped else ""))
    if st.get("journal"):
        print("recent events:")
        for rec in st["journal"]:
            print("  " + format_record(rec))


def print_hbmon_status(hbd_run_dir: str) -> None:
    """hbmon's services under `hbctl status`: asked on hbmon.sock, else read from its hbmon.json.

    hbmon's run dir: $HBMON_RUN_DIR, else hbd's run dir if hbmon shares it, else /run/hbmon."""
    from hbmon.daemon import DEFAULT_RUN_DIR as HBMON_RUN_DIR
    from hbmon.daemon import SOCKET_NAME as HBMON_SOCKET
    from hbmon.daemon import STATE_NAME as HBMON_STATE
    cands = [d for d in (os.environ.get("HBMON_RUN_DIR"), hbd_run_dir, HBMON_RUN_DIR) if d]
    for d in cands:
        sock, state = os.path.join(d, HBMON_SOCKET), os.path.join(d, HBMON_STATE)
        if not os.path.exists(sock) and not os.path.exists(state):
            continue
        try:
            st = exchange(sock, {"cmd": "status"}, timeout_s=5.0)
            head = f"hbmon: running (pid {st.get('pid')})"
        except (ControlError, OSError):
            try:
                with open(state) as f:
                    st = json.load(f)
            except (OSError, ValueError):
                continue
            head = f"hbmon: not running; last state from {state}"
        print(head)
        for s in st.get("services", []):
            extra = ""
            if s.get("restarts"):
                extra += f", {s['restarts']} restart(s)"
            if s.get("failed_over"):
                extra += ", failed over (standby requested)"
            if not s.get("depend_ok", True):
                extra += ", dependency failing"
            summary = f": {s['summary']}" if s.get("status") == "fail" and s.get("summary") else ""
            print(f"  service {s['watch']}/{s['service']} (group {s.get('group')}): {s['status']}{summary}{extra}")
        return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hbctl", description="query and steer a running hbd")
    p.add_argument("--run-dir", default=os.environ.get("HBD_RUN_DIR", DEFAULT_RUN_DIR))
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status")
    ns = sub.add_parser("nodestatus")
    ns.add_argument("node")
    sub.add_parser("rscstatus")
    for name in ("standby", "takeover"):
        sp = sub.add_parser(name)
        sp.add_argument("which", nargs="?", default="all", choices=("all", "foreign", "local"))
        sp.add_argument("--no-wait", action="store_true")
        sp.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "status":
            st = request(args.run_dir, {"cmd": "status"})
            print_status(st)
            print_hbmon_status(args.run_dir)
            return 0
        if args.cmd == "nodestatus":
            r = request(args.run_dir, {"cmd": "nodestatus", "node": args.node})
            if not r["ok"]:
                print(f"hbctl: {r['error']}", file=sys.stderr)
                return 1
            print(r["status"])
            return 0
        if args.cmd == "rscstatus":
            print(request(args.run_dir, {"cmd": "rscstatus"})["rscstatus"])
            return 0
        before = request(args.run_dir, {"cmd": "rscstatus"})["rscstatus"]
        r = request(args.run_dir, {"cmd": args.cmd, "which": args.which})
        if not r["ok"]:
            print(f"hbctl: {r['error']}", file=sys.stderr)
            return 1
        print(("Going standby" if args.cmd == "standby" else "Taking over") + f" [{args.which}].")
        if args.no_wait:
            return 0
        start = time.monotonic()
        while time.monotonic() - start < args.timeout:
            time.sleep(0.1)
            now = request(args.run_dir, {"cmd": "rscstatus"})["rscstatus"]
            if now == "transition":
                continue
            if now != before:
                print(f"resources here: {now}")
                return 0
            if time.monotonic() - start > NO_CHANGE_GIVE_UP_S:
                print(f"hbctl: {args.cmd} {args.which}: nothing moved in {NO_CHANGE_GIVE_UP_S:g} s "
                      f"(resources here: {now}); see `hbctl status`", file=sys.stderr)
                return 1
        print(f"hbctl: {args.cmd} {args.which}: not finished after {args.timeout:g} s", file=sys.stderr)
        return 1
    except NotRunning as e:
        if args.cmd == "status":
            print("Heartbeat is stopped on this machine.")
        else:
            print(str(e), file=sys.stderr)
        return 3
    except BrokenPipeError:
        # The reader went away (`hbctl status | head`): stop quietly, as ls or cat do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ControlError, OSError) as e:
        print(f"hbctl: {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
