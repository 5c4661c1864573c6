# SPDX-License-Identifier: GPL-2.0-or-later
"""What `make demo` (scripts/demo_cluster.sh) prints from its logs: the failover timeline, the
verification of every acknowledged row and file, and the closing summary.

    demo_report.py timeline --work DIR --dead ha1 --survivor ha2 --t0 EPOCH --kernel-dev loop0
    demo_report.py verify --work DIR --node ha2 --until EPOCH
    demo_report.py summary --work DIR --total-s SECONDS [--line TEXT]...

Inputs, all under the demo's work directory DIR:

    client/rows.jsonl, client/files.jsonl   the client's attempts (scripts/lib/demo_client.py)
    NODE/run/journal.jsonl                  hbd's journal: node dead ("since": last heartbeat),
                                            resource starts (nginx, mariadb, Filesystem)
    NODE/replica/replicad.log               "2026-12-07 14:13:12,910 replicad[N]: r0: ..." (local time)
    NODE/run/mysqld/mariadb.err             "2026-12-07 14:13:13 0 [Note] InnoDB: ..." (local time, 1 s)
    dmesg.txt                               `dmesg` after the failover; the demo wrote a marker line
                                            into /dev/kmsg at the power failure (MARKER): kernel times
                                            count from it, whatever clock printk uses
    NODE-rows.tsv                           `SELECT @@report_host; SELECT id, SHA2(payload, 256), node`
    NODE-files.txt                          sha256sum output over /data/www/uploads on NODE
    resync.json, availability.json          `replicactl status --json` of the resync source,
                                            `hbctl availability --json` over the client's run

Each step saves what the summary needs as DIR/report-*.json. Unparsable lines are skipped: a log
is read while it is written (its last line may be half there).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MARKER = "replica-ha demo: power failure of"
REPLICAD_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) replicad\[\d+\]: (.*)$")
MARIADB_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \d+ \[\w+\] (.*)$")
KERNEL_LINE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")


# --- parsing (pure: lines in, values out) ---------------------------------------------------

def local_epoch(stamp: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> float:
    """A local-time stamp (as the daemons write them) as epoch seconds; ValueError if malformed."""
    return datetime.datetime.strptime(stamp, fmt).timestamp()


def parse_replicad(lines: Iterable[str]) -> list[tuple[float, str]]:
    out = []
    for line in lines:
        m = REPLICAD_LINE.match(line.rstrip("\n"))
        if m:
            try:
                out.append((local_epoch(m.group(1)) + int(m.group(2)) / 1000, m.group(3)))
            except ValueError:
                continue
    return out


def parse_mariadb_err(lines: Iterable[str]) -> list[tuple[float, str]]:
    out = []
    for line in lines:
        m = MARIADB_LINE.match(line.rstrip("\n"))
        if m:
            try:
                out.append((local_epoch(m.group(1)), m.group(2)))
            except ValueError:
                continue
    return out


def parse_kernel(lines: Iterable[str]) -> list[tuple[float, str]]:
    """dmesg lines as (seconds since the MARKER line, text); [] without a marker."""
    recs: list[tuple[float, str]] = []
    for line in lines:
        m = KERNEL_LINE.match(line.rstrip("\n"))
        if m:
            recs.append((float(m.group(1)), m.group(2)))
    marks = [t for t, text in recs if MARKER in text]
    if not marks:
        return []
    return [(t - marks[-1], text) for t, text in recs if t >= marks[-1]]


def parse_jsonl(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def parse_rows_tsv(lines: Iterable[str]) -> tuple[str, dict[int, tuple[str, str]]]:
    """(@@report_host, {id: (sha256 of the payload, node)}) from the verification query."""
    host, rows = "", {}
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 1 and not host and parts[0]:
            host = parts[0]
        elif len(parts) == 3 and parts[0].isdigit():
            rows[int(parts[0])] = (parts[1].lower(), parts[2])
    return host, rows


def parse_sha256sums(lines: Iterable[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^([0-9a-f]{64}) [ *](.+)$", line.rstrip("\n"))
        if m:
            out[os.path.basename(m.group(2))] = m.group(1)
    return out


# --- accounting -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Outage:
    start: float          # the last acknowledged operation before it (or the run's start)
    end: float            # the first acknowledged operation after it

    @property
    def length_s(self) -> float:
        return self.end - self.start


def client_outages(attempts: Sequence[dict[str, Any]]) -> tuple[float, float, list[Outage]]:
    """(run start, run end, outages) as the client saw them: an outage runs from the last
    acknowledgement before a failed attempt to the first acknowledgement after it (an outage
    still open at the end runs to the last attempt)."""
    recs = sorted((r for r in attempts if isinstance(r.get("t"), (int, float))), key=lambda r: r["t"])
    if not recs:
        return 0.0, 0.0, []
    start = min(float(r.get("t0", r["t"])) for r in recs)
    end = float(recs[-1]["t"])
    outages: list[Outage] = []
    last_ok, down_since = start, None
    for r in recs:
        if r.get("ok"):
            if down_since is not None:
                outages.append(Outage(down_since, float(r["t"])))
                down_since = None
            last_ok = float(r["t"])
        elif down_since is None:
            down_since = last_ok
    if down_since is not None:
        outages.append(Outage(down_since, end))
    return start, end, outages


def availability(start: float, end: float, outages: Sequence[Outage]) -> float | None:
    if end <= start:
        return None
    return max(0.0, 1.0 - sum(o.length_s for o in outages) / (end - start))


def first_ack_after_failure(attempts: Sequence[dict[str, Any]], t0: float) -> float | None:
    """When the service answered again after the failure at t0: the first acknowledgement
    after the first attempt that failed after t0 (None if it never failed or never came back)."""
    recs = sorted((r for r in attempts if isinstance(r.get("t"), (int, float))), key=lambda r: r["t"])
    failed = next((r["t"] for r in recs if r["t"] >= t0 and not r.get("ok")), None)
    if failed is None:
        return None
    return next((float(r["t"]) for r in recs if r["t"] > failed and r.get("ok")), None)


@dataclass
class Verdict:
    acked: int = 0
    present: int = 0            # acknowledged and there with the same checksum
    mismatched: int = 0         # acknowledged, there, but another checksum
    in_doubt: int = 0           # failed at the client
    in_doubt_present: int = 0   # ... and applied anyway

    @property
    def lost(self) -> int:
        return self.acked - self.present


def verify(attempts: Sequence[dict[str, Any]], found: dict[Any, str], key: str, until: float) -> Verdict:
    """Every attempt acknowledged by `until` must be in `found` ({id or name: sha256})."""
    v = Verdict()
    for r in attempts:
        if not isinstance(r.get("t"), (int, float)) or r["t"] > until or key not in r:
            continue
        there = found.get(r[key])
        if r.get("ok"):
            v.acked += 1
            if there == r.get("sha"):
                v.present += 1
            elif there is not None:
                v.mismatched += 1
        else:
            v.in_doubt += 1
            v.in_doubt_present += there == r.get("sha")
    return v


# --- commands -------------------------------------------------------------------------------

def read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readlines()
    except FileNotFoundError:
        return []


def client_logs(work: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (parse_jsonl(read_lines(os.path.join(work, "client", "rows.jsonl"))),
            parse_jsonl(read_lines(os.path.join(work, "client", "files.jsonl"))))


def save(work: str, name: str, data: dict[str, Any]) -> None:
    with open(os.path.join(work, f"report-{name}.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def load(work: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(work, f"report-{name}.json"), encoding="utf-8") as f:
            data = json.load(f)
            return data if isinstance(data, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def cmd_timeline(a: argparse.Namespace) -> int:
    t0, dead, surv = a.t0, a.dead, a.survivor
    events: list[tuple[float, str]] = []
    journal = parse_jsonl(read_lines(os.path.join(a.work, surv, "run", "journal.jsonl")))
    death = next((r for r in journal if r.get("event") == "node" and r.get("peer") == dead
                  and r.get("state") == "dead" and r.get("time", 0) >= t0), None)
    if death is not None:
        if isinstance(death.get("since"), (int, float)):
            events.append((death["since"], f"last heartbeat from {dead} ({surv}'s hbd journal)"))
        events.append((death["time"], f"{surv}'s hbd declares {dead} dead: {death.get('why', '')}"))
    replicad = [(t, text) for t, text in parse_replicad(read_lines(os.path.join(a.work, surv, "replica",
                                                                                 "replicad.log"))) if t >= t0]
    for pattern, what in ((r"connection to \S+ \(\S+\) lost", "{surv}'s replicad: {text}"),
                          (r"fence-peer helper returned|peer disk \S+ -> Outdated",
                           "fence: {surv}'s replicad marks {dead}'s disk Outdated ({text})"),
                          (r"role Secondary -> Primary", "promote: {surv}'s replicad: {text}")):
        hit = next(((t, text) for t, text in replicad if re.search(pattern, text)), None)
        if hit:
            text = re.sub(r"^\w+: ", "", hit[1])
            events.append((hit[0], what.format(surv=surv, dead=dead, text=text)))
    for r in journal:
        if r.get("event") == "resource" and r.get("action") == "start" and r.get("time", 0) >= t0:
            res = str(r.get("resource", ""))
            name = res.split("::")[0]
            label = {"Filesystem": f"{res.split('::')[2] if res.count('::') >= 2 else ''} mounted",
                     "datadisk": "disk promoted", "nginx": "nginx up", "mariadb": "mariadb up"}.get(name, "")
            if not label and re.match(r"^\d+\.\d+\.\d+\.\d+", res):
                label = "virtual IP added (gratuitous ARP)"
            if label:
                events.append((r["time"], f"{label}: hbd started {res} in {r.get('duration_s', 0):.2f} s"
                                          f" ({r.get('result')})"))
    kernel = parse_kernel(read_lines(os.path.join(a.work, "dmesg.txt")))
    for t, text in kernel:
        if a.kernel_dev and re.search(rf"EXT4-fs \({re.escape(a.kernel_dev)}\): (recovery complete|mounted)", text):
            events.append((t0 + t, f"kernel: {text}"))
    # mariadbd stamps its log to the second: its recovery lines go under "mariadb up", unsorted
    mariadb = [text for t, text in parse_mariadb_err(read_lines(os.path.join(a.work, surv, "run", "mysqld",
                                                                            "mariadb.err"))) if t >= int(t0)]
    recovery = [text for text in mariadb
                if re.search(r"InnoDB: (Starting crash recovery|End of log|To recover:|.*recovered trx|Rolled back)",
                             text)]
    rows, files = client_logs(a.work)
    back = {}
    for name, attempts in (("sql", rows), ("http", files)):
        t = first_ack_after_failure(attempts, t0)
        if t is not None:
            back[name] = t - t0
            what = "a row committed" if name == "sql" else "a file uploaded"
            events.append((t, f"VIP answering: the client has {what} again ({name.upper()})"))
    events.append((t0, f"{dead} power-failed: link cut, every process in its namespace SIGKILLed"))
    events.sort(key=lambda e: e[0])
    for t, text in events:
        print(f"  {t - t0:+8.3f} s  {text}")
        if text.startswith("mariadb up"):
            for line in recovery or ["(no InnoDB crash recovery in mariadbd's log)"]:
                print(f"  {'':10}    mariadbd: {line}")
    save(a.work, "timeline", {"t0": t0, "back_s": back, "dead_declared_s": None if death is None
                              else death["time"] - t0})
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    rows, files = client_logs(a.work)
    host, db = parse_rows_tsv(read_lines(os.path.join(a.work, f"{a.node}-rows.tsv")))
    fs = parse_sha256sums(read_lines(os.path.join(a.work, f"{a.node}-files.txt")))
    rv = verify(rows, {i: sha for i, (sha, _) in db.items()}, "id", a.until)
    fv = verify(files, fs, "name", a.until)
    by_node: dict[str, int] = {}
    for _, node in db.values():
        by_node[node] = by_node.get(node, 0) + 1
    nodes = ", ".join(f"{n} {c}" for n, c in sorted(by_node.items()))
    print(f"rows in the database served by {host or '(no answer)'}: {len(db)} (committed by: {nodes or 'none'})")
    print(f"  acknowledged rows lost: {rv.lost} of {rv.acked}"
          + (f" ({rv.mismatched} with another payload)" if rv.mismatched else "")
          + f"; in doubt (failed at the client): {rv.in_doubt}, {rv.in_doubt_present} of them committed anyway")
    print(f"files in {a.node}'s /data/www/uploads: {len(fs)}")
    print(f"  acknowledged files lost: {fv.lost} of {fv.acked}"
          + (f" ({fv.mismatched} with another sha256)" if fv.mismatched else "")
          + f"; in doubt: {fv.in_doubt}, {fv.in_doubt_present} of them stored anyway")
    save(a.work, f"verify-{a.node}", {"node": a.node, "served_by": host, "rows": vars(rv) | {"lost": rv.lost},
                                      "files": vars(fv) | {"lost": fv.lost}})
    return 1 if rv.lost or fv.lost or host != a.node else 0


def pct(a: float | None) -> str:
    return "n/a" if a is None else f"{a * 100:.2f} %"


def cmd_summary(a: argparse.Namespace) -> int:
    tl = load(a.work, "timeline")
    rows, files = client_logs(a.work)
    table: list[tuple[str, str]] = []
    back = tl.get("back_s", {})
    table.append(("failover time", f"power failure -> VIP answering: SQL {back.get('sql', float('nan')):.1f} s, "
                                   f"HTTP {back.get('http', float('nan')):.1f} s"
                                   + (f" (dead declared after {tl['dead_declared_s']:.1f} s)"
                                      if tl.get("dead_declared_s") is not None else "")))
    for node, when in ((a.survivor, "after the failover"), (a.home, "after the failback")):
        v = load(a.work, f"verify-{node}")
        if v:
            r, f = v["rows"], v["files"]
            table.append(("rows verified", f"{r['present']} of {r['acked']} acknowledged on {node} {when}; "
                                           f"lost {r['lost']}"))
            table.append(("files verified", f"{f['present']} of {f['acked']} acknowledged on {node} {when}; "
                                            f"lost {f['lost']}"))
    try:
        with open(os.path.join(a.work, "resync.json"), encoding="utf-8") as fh:
            st = json.load(fh)
        last = (st[0] if isinstance(st, list) and st else {}).get("last_resync") or {}
        table.append(("resync", f"{last.get('bytes', 0)} bytes ({last.get('bytes', 0) / 2**20:.1f} MiB) "
                                f"in {last.get('seconds', 0):.2f} s, {a.survivor} -> {a.home}"))
    except (OSError, ValueError, AttributeError):
        table.append(("resync", "no status"))
    for name, attempts in (("SQL", rows), ("HTTP", files)):
        start, end, outs = client_outages(attempts)
        acked = sum(1 for r in attempts if r.get("ok"))
        table.append((f"availability ({name})",
                      f"client: {pct(availability(start, end, outs))} over {end - start:.1f} s, "
                      f"{acked} of {len(attempts)} operations acknowledged, outages "
                      + (", ".join(f"{o.length_s:.1f} s" for o in outs) or "none")))
    try:
        with open(os.path.join(a.work, "availability.json"), encoding="utf-8") as fh:
            rep = json.load(fh)
        for s in rep.get("subjects", []):
            if s.get("kind") in ("group", "service"):
                mttr = s.get("mttr_s")
                table.append(("hbctl availability",
                              f"{s['kind']} {s['name']}: {pct(s.get('availability'))}, {s.get('failures', 0)} "
                              f"failure(s)" + (f", MTTR {mttr:.1f} s" if isinstance(mttr, (int, float)) else "")))
    except (OSError, ValueError):
        table.append(("hbctl availability", "no report"))
    for line in a.line or []:
        key, _, val = line.partition("=")
        table.append((key, val))
    table.append(("total time", f"{a.total_s:.1f} s"))
    width = max(len(k) for k, _ in table)
    for k, v in table:
        print(f"  {k:<{width}}  {v}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timeline")
    t.add_argument("--work", required=True)
    t.add_argument("--dead", required=True)
    t.add_argument("--survivor", required=True)
    t.add_argument("--t0", type=float, required=True, help="the power failure (epoch s)")
    t.add_argument("--kernel-dev", default="", help="the survivor's kernel device under /dev/drbd0 (loop0)")
    v = sub.add_parser("verify")
    v.add_argument("--work", required=True)
    v.add_argument("--node", required=True)
    v.add_argument("--until", type=float, required=True, help="acknowledgements up to then must be there")
    s = sub.add_parser("summary")
    s.add_argument("--work", required=True)
    s.add_argument("--home", default="ha1")
    s.add_argument("--survivor", default="ha2")
    s.add_argument("--total-s", type=float, required=True)
    s.add_argument("--line", action="append", help="KEY=TEXT: one more line of the table")
    a = p.parse_args(argv)
    return {"timeline": cmd_timeline, "verify": cmd_verify, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
