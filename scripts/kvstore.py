#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A tiny key-value "database" on a replicated disk, for the failover demo.

    kvstore.py --bind IP --port 80 --nbd-uri URI

Records live on the NBD export itself (libnbd), one 4 KiB block each after a header block, and
every PUT is written with FUA, so an acknowledged record is on stable storage (and, under
protocol C, on the peer's disk) before the client hears "stored". Whichever node runs it after a
failover reads the same records back: that is the point of the demo.

    PUT /KEY  (body = value)  -> 201 "stored KEY on NODE"
    GET /KEY                  -> 200 value
    GET /                     -> 200 "N records, served by NODE"
"""
import argparse
import json
import os
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nbd

BLOCK = 4096
HEADER = struct.Struct(">8sQ")   # magic, record count
MAGIC = b"KVSTORE1"


class Store:
    def __init__(self, uri: str):
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.lock = threading.Lock()
        magic, count = HEADER.unpack(self.h.pread(HEADER.size, 0))
        self.count = count if magic == MAGIC else 0
        self.index = {}
        for i in range(self.count):
            key, value = self._read(i)
            self.index[key] = i

    def _read(self, i: int) -> tuple[str, str]:
        raw = self.h.pread(BLOCK, BLOCK * (i + 1))
        length = struct.unpack(">I", raw[:4])[0]
        record = json.loads(raw[4:4 + length])
        return record["k"], record["v"]

    def get(self, key: str) -> str | None:
        with self.lock:
            i = self.index.get(key)
            return None if i is None else self._read(i)[1]

    def put(self, key: str, value: str) -> None:
        data = json.dumps({"k": key, "v": value}).encode()
        if len(data) > BLOCK - 4:
            raise ValueError("record too large")
        with self.lock:
            i = self.index.get(key, self.count)
            self.h.pwrite((struct.pack(">I", len(data)) + data).ljust(BLOCK, b"\0"), BLOCK * (i + 1),
                          nbd.CMD_FLAG_FUA)
            if i == self.count:
                self.count += 1
                self.h.pwrite(HEADER.pack(MAGIC, self.count).ljust(BLOCK, b"\0"), 0, nbd.CMD_FLAG_FUA)
            self.index[key] = i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--nbd-uri", required=True)
    parser.add_argument("--node", default=os.uname().nodename, help="name shown in answers")
    args = parser.parse_args()
    store = Store(args.nbd_uri)
    node = args.node

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/":
                return self.reply(200, f"{store.count} records, served by {node}")
            value = store.get(self.path.lstrip("/"))
            self.reply(200, value) if value is not None else self.reply(404, "no such key")

        def do_PUT(self):
            value = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            store.put(self.path.lstrip("/"), value)
            self.reply(201, f"stored {self.path.lstrip('/')} on {node}")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((args.bind, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
