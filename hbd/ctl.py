# SPDX-License-Identifier: GPL-2.0-or-later
"""hbctl: talk to a running hbd through RUN_DIR/hbd.sock (one JSON line each way).

    hbctl [--run-dir DIR] status [--watch]      like `cl_status hbstatus`, plus nodes, groups, journal;
                                                --watch: a live view redrawn on each journal record
    hbctl nodestatus NODE                       init | up | active | dead  (like `cl_status nodestatus`)
    hbctl rscstatus                             none | local | foreign | all | transition
    hbctl standby [all|foreign|local] [--failure WHY]
                                                like `hb_standby`: give those groups to the peer
                                                (--failure: a recovery, journaled as unplanned)
    hbctl takeover [all|foreign|local]          like `hb_takeover`: ask the peer for them
    hbctl reload                                like `/etc/init.d/heartbeat reload` (SIGHUP): re-read
                                                ha.cf, haresources, authkeys and apply what changed
                                                (hbd.reload); prints the changes, or the error
    hbctl availability [--since T] [--until T] [--service NAME] [--group G]
          [--mission HH:MM-HH:MM[,days]] [--journal FILE]... [--json] [--plot FILE.svg|png]
                                                uptime, failures, MTTF, MTTR, A = MTTF/(MTTF+MTTR)
                                                from the journal(s) (hbd.availability); needs no hbd

standby/takeover wait (up to --timeout seconds, default 120) until the move is
over and print what this node then holds; --no-wait returns once the request is
sent.  If nothing moved after 15 s (the peer was in transition and ignored the
request, as heartbeat does) the command fails.
availability reads RUN_DIR/journal.jsonl, hbmon's hbmon.jsonl (in RUN_DIR or in
--hbmon-run-dir, default $HBMON_RUN_DIR or /run/hbmon) when present, and every
--journal FILE (the peer's too: journals are merged by wall-clock time);
malformed lines are skipped and counted.
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


# hbmon.daemon's DEFAULT_RUN_DIR and JOURNAL_NAME (not imported: hbctl starts without asyncio;
# tests/unit/test_hbd_availability.py checks they agree)
DEFAULT_HBMON_RUN_DIR = "/run/hbmon"
HBMON_JOURNAL = "hbmon.jsonl"


def add_availability_parser(sub: Any) -> None:
    ap = sub.add_parser("availability", help="availability report from the journal(s)")
    ap.add_argument("--since", help="ISO 8601 or relative (-7d, -12h); default: the first record")
    ap.add_argument("--until", help="ISO 8601 or relative; default: now")
    ap.add_argument("--service", action="append", help="only this service (repeatable)")
    ap.add_argument("--group", help="only this resource group and the services that name it")
    ap.add_argument("--mission", help="HH:MM-HH:MM[,days], local time (e.g. 08:00-20:00,mon-fri)")
    ap.add_argument("--journal", action="append", default=[], help="another journal file (repeatable)")
    ap.add_argument("--hbmon-run-dir", default=os.environ.get("HBMON_RUN_DIR", DEFAULT_HBMON_RUN_DIR),
                    help=f"hbmon's run dir, for its {HBMON_JOURNAL} (default $HBMON_RUN_DIR or /run/hbmon)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--plot", help="write the availability timeline to FILE.svg (or .png with matplotlib)")


def availability_main(args: argparse.Namespace) -> int:
    """`hbctl availability`: read the journals, account, print (and plot); 0 ok, 1 bad input."""
    from hbd.availability import AvailabilityError, BadLine, Mission, compute, parse_journal, parse_time
    from hbd.availability_report import render_svg, render_text, write_png

    now = time.time()
    paths = [os.path.join(args.run_dir, "journal.jsonl"), os.path.join(args.run_dir, HBMON_JOURNAL),
             os.path.join(args.hbmon_run_dir, HBMON_JOURNAL)]
    paths = [p for p in paths if os.path.exists(p)] + list(args.journal)
    records: list[dict] = []
    bad: list[BadLine] = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with open(path, "rb") as f:
                recs, skipped = parse_journal(f, source=path)
        except OSError as e:
            print(f"hbctl: availability: {path}: {e.strerror}", file=sys.stderr)
            return 1
        records += recs
        bad += skipped
    if not paths:
        print(f"hbctl: availability: no journal: {os.path.join(args.run_dir, 'journal.jsonl')} "
              f"does not exist (give --run-dir or --journal FILE)", file=sys.stderr)
        return 1
    try:
        since = parse_time(args.since, now) if args.since else None
        until = parse_time(args.until, now) if args.until else now
        mission = Mission.parse(args.mission) if args.mission else None
    except AvailabilityError as e:
        print(f"hbctl: availability: {e}", file=sys.stderr)
        return 2
    if since is not None and since >= until:
        print("hbctl: availability: --since must be before --until", file=sys.stderr)
        return 2
    kinds = ("service",) if args.service else ("node", "group", "service")
    report = compute(records, since=since, until=until, mission=mission, kinds=kinds, names=args.service,
                     group=args.group, bad_lines=bad)
    if bad:
        print(f"hbctl: availability: skipped {len(bad)} malformed journal line(s); first: {bad[0]}",
              file=sys.stderr)
    if args.plot:
        try:
            if args.plot.lower().endswith(".png"):
                write_png(report, args.plot)
            else:
                with open(args.plot, "w", encoding="utf-8") as f:
                    f.write(render_svg(report, mission))
        except ImportError:
            print("hbctl: availability: a PNG needs matplotlib, which is not installed; use --plot FILE.svg",
                  file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        sys.stdout.write(render_text(report))
        if args.plot:
            print(f"timeline: {args.plot}")
    return 0


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


def _stops_answering(run_dir: str, within_s: float = 5.0) -> bool:
    """After the watch broke: True once hbd no longer answers `status` (it is stopping), within
    `within_s`; False if it still answers then (the error was something else)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            request(run_dir, {"cmd": "status"}, timeout_s=1.0)
        except (NotRunning, ControlError, OSError):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def watch_status(run_dir: str) -> int:
    """status --watch: hbd streams its journal records (`watch`); each redraws the view from a
    fresh `status` (hbd.status_view, hacommon.live_view). hbd stopping ends the view as
    `status` would end: "Heartbeat is stopped on this machine.", exit 3."""
    import io
    from contextlib import redirect_stdout

    from hacommon.control import open_stream
    from hacommon.live_view import watch
    from hbd.status_view import render
    path = os.path.join(run_dir, SOCKET_NAME)

    ended = []

    def changes():
        try:
            for msg in open_stream(path, {"cmd": "watch"}, timeout_s=10.0):
                if not msg.get("ok", True):
                    raise ControlError(str(msg.get("error")))
                yield msg
        except NotListening as e:
            raise NotRunning(f"hbctl: hbd is not running: {path}: {e.strerror}") from None
        ended.append(True)

    def plain() -> str:
        buf = io.StringIO()
        with redirect_stdout(buf):
            print_status(request(run_dir, {"cmd": "status"}))
        return buf.getvalue().rstrip("\n")
    try:
        rc = watch(changes(), lambda: render(request(run_dir, {"cmd": "status"})), plain)
    except (ControlError, OSError):
        # hbd stopping: its stream or a last status request broke midway (seen in CI: exit 1)
        if not _stops_answering(run_dir):
            raise
        raise NotRunning("hbctl: hbd stopped") from None
    if ended:
        raise NotRunning("hbctl: hbd closed its control socket")
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hbctl", description="query and steer a running hbd")
    p.add_argument("--run-dir", default=os.environ.get("HBD_RUN_DIR", DEFAULT_RUN_DIR))
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("status")
    sp.add_argument("--watch", action="store_true",
                    help="a live view (rich), redrawn on every node, group or request event")
    ns = sub.add_parser("nodestatus")
    ns.add_argument("node")
    sub.add_parser("rscstatus")
    sub.add_parser("reload")
    for name in ("standby", "takeover"):
        sp = sub.add_parser(name)
        sp.add_argument("which", nargs="?", default="all", choices=("all", "foreign", "local"))
        sp.add_argument("--no-wait", action="store_true")
        sp.add_argument("--timeout", type=float, default=120.0)
        if name == "standby":
            sp.add_argument("--failure", metavar="WHY",
                            help="a recovery from a failure, not maintenance: journal the stops as unplanned")
    add_availability_parser(sub)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.cmd == "availability":
            return availability_main(args)
        if args.cmd == "status" and args.watch:
            return watch_status(args.run_dir)
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
        if args.cmd == "reload":
            r = request(args.run_dir, {"cmd": "reload"}, timeout_s=30.0)
            if not r["ok"]:
                print(f"hbctl: reload: {r['error']}", file=sys.stderr)
                return 1
            for line in r["changes"]:
                print(line)
            if r.get("groups_waiting"):
                print("haresources changes wait until the groups are stable (see `hbctl status`)")
            print("configuration reloaded" if r["changes"] else "nothing changed")
            return 0
        before = request(args.run_dir, {"cmd": "rscstatus"})["rscstatus"]
        req = {"cmd": args.cmd, "which": args.which}
        if getattr(args, "failure", None):
            req.update(planned=False, why=args.failure)
        r = request(args.run_dir, req)
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
