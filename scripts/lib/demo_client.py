# SPDX-License-Identifier: GPL-2.0-or-later
"""The demo's client: commits rows and uploads files through the virtual IP, without a pause.

    demo_client.py --vip IP --out DIR [--pause S] [--user demo --password demo --database demo]

Two loops, one thread each, until SIGTERM or SIGINT (each finishes the operation it is in):

- rows: `mariadb -h IP ... -e "START TRANSACTION; INSERT INTO ledger ...; COMMIT"`, a new
  connection per row (as a web application does per request), row ids 1, 2, 3...; the row
  records the serving node (@@report_host). Acknowledged = the client exited 0 after COMMIT.
- files: `curl -T FILE http://IP/uploads/NAME` (WebDAV PUT), 1..64 KiB of random bytes each.
  Acknowledged = 201 Created.

Every attempt is one JSON line, appended and flushed as it ends, in DIR/rows.jsonl and
DIR/files.jsonl: {"t0": start, "t": end (epoch s), "ok": bool, "id"/"name", "sha": sha256 of
the payload, "err": why not (absent when ok)}. A failed attempt is never retried under the same
id or name: an attempt that timed out after the server received it may or may not have been
applied ("in doubt"); the verification asks only for the acknowledged ones, and reports the
in-doubt ones it finds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import threading
import time
from typing import Any

OP_TIMEOUT_S = 4.0        # an operation not answered by then counts as failed (in doubt)


class Log:
    def __init__(self, path: str):
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        self.f.flush()


def run(argv: list[str], *, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, the last line of stderr); -1 when killed after OP_TIMEOUT_S."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=OP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return -1, "", f"no answer in {OP_TIMEOUT_S:g} s"
    err = p.stderr.strip().splitlines()
    return p.returncode, p.stdout.strip(), err[-1] if err else ""


def rows(a: argparse.Namespace, stop: threading.Event) -> None:
    log = Log(os.path.join(a.out, "rows.jsonl"))
    env = {**os.environ, "MYSQL_PWD": a.password}
    i = 0
    while not stop.is_set():
        i += 1
        payload = f"row {i} {os.urandom(24).hex()}"
        sql = (f"START TRANSACTION; INSERT INTO ledger (id, payload, node) VALUES ({i}, '{payload}', "
               f"@@report_host); COMMIT;")
        t0 = time.time()
        rc, _, err = run(["mariadb", "--no-defaults", "--connect-timeout=1", "-h", a.vip, "-u", a.user, "-N", "-B",
                       "-e", sql, a.database], env=env)
        rec: dict[str, Any] = {"t0": round(t0, 6), "t": round(time.time(), 6), "id": i, "ok": rc == 0,
                               "sha": hashlib.sha256(payload.encode()).hexdigest()}
        if rc != 0:
            rec["err"] = err or f"exit {rc}"
        log.write(rec)
        stop.wait(a.pause if rc == 0 else a.pause * 2)


def files(a: argparse.Namespace, stop: threading.Event) -> None:
    log = Log(os.path.join(a.out, "files.jsonl"))
    body = os.path.join(a.out, "upload.bin")
    rnd = random.Random()
    i = 0
    while not stop.is_set():
        i += 1
        name = f"f{i:06d}.bin"
        data = os.urandom(rnd.randint(1, 64) * 1024)
        with open(body, "wb") as f:
            f.write(data)
        t0 = time.time()
        rc, out, err = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--connect-timeout", "1",
                       "-T", body, f"http://{a.vip}/uploads/{name}"])
        ok = rc == 0 and out == "201"
        rec: dict[str, Any] = {"t0": round(t0, 6), "t": round(time.time(), 6), "name": name, "ok": ok,
                               "size": len(data), "sha": hashlib.sha256(data).hexdigest()}
        if not ok:
            rec["err"] = f"HTTP {out}" if rc == 0 else (err or f"curl exit {rc}")
        log.write(rec)
        stop.wait(a.pause if ok else a.pause * 2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vip", required=True)
    p.add_argument("--out", required=True, help="directory for rows.jsonl and files.jsonl")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between two operations of a loop")
    p.add_argument("--user", default="demo")
    p.add_argument("--password", default="demo")
    p.add_argument("--database", default="demo")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [threading.Thread(target=fn, args=(a, stop), name=fn.__name__) for fn in (rows, files)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
