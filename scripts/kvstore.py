#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""A tiny key-value "database" on the replicated filesystem, for the failover demo.

    kvstore.py --bind IP [--port 80] --data-dir /data/records [--node NAME]

Each record is one file in DATA_DIR (on ext4 on the replicated device, mounted by heartbeat's
Filesystem resource). A PUT is durable before it is acknowledged, the way a database commits:

    write DATA_DIR/.tmp-NAME, fsync it, rename it to DATA_DIR/NAME, fsync DATA_DIR

and only then answers "stored". fsync on the device is a flush that, under protocol C, reaches
the peer's disk before it returns; so every record a client heard "stored" for survives the
node's death, and after the failover the survivor's mount replays the ext4 journal and finds it.
Leftover .tmp-* files (a PUT cut short by the crash, never acknowledged) are removed at start.

    PUT /KEY  (body = value)  -> 201 "stored KEY on NODE"
    GET /KEY                  -> 200 value, or 404 "no such key"
    GET /                     -> 200 "N records, served by NODE"
"""
import argparse
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

PREFIX = "k-"          # record files are PREFIX + quote(key): never ".", "..", or a temp name
TMP_PREFIX = ".tmp-"
MAX_VALUE = 1 << 20


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Records as files in one directory; `put` returns once the record is on stable storage."""

    def __init__(self, data_dir: str):
        self.dir = data_dir
        if not os.path.isdir(data_dir):
            os.makedirs(data_dir)
            fsync_dir(os.path.dirname(os.path.abspath(data_dir)))
        self.lock = threading.Lock()
        self.keys: set[str] = set()
        for name in os.listdir(data_dir):
            if name.startswith(TMP_PREFIX):
                os.unlink(os.path.join(data_dir, name))
            elif name.startswith(PREFIX):
                self.keys.add(unquote(name[len(PREFIX):]))

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, PREFIX + quote(key, safe=""))

    def count(self) -> int:
        with self.lock:
            return len(self.keys)

    def get(self, key: str) -> str | None:
        try:
            with open(self._path(key), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def put(self, key: str, value: str) -> None:
        final = self._path(key)
        tmp = os.path.join(self.dir, f"{TMP_PREFIX}{threading.get_ident()}-{os.path.basename(final)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, value.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with self.lock:                      # rename + directory fsync: the commit point
            os.rename(tmp, final)
            fsync_dir(self.dir)
            self.keys.add(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--data-dir", required=True, help="directory on the mounted filesystem")
    parser.add_argument("--node", default=os.uname().nodename, help="name shown in answers")
    args = parser.parse_args()
    store = Store(args.data_dir)
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
                return self.reply(200, f"{store.count()} records, served by {node}")
            value = store.get(unquote(self.path.lstrip("/")))
            self.reply(200, value) if value is not None else self.reply(404, "no such key")

        def do_PUT(self):
            length = int(self.headers.get("Content-Length", 0))
            if length > MAX_VALUE:
                return self.reply(413, f"value too large: {length} bytes, at most {MAX_VALUE}")
            key = unquote(self.path.lstrip("/"))
            if not key:
                return self.reply(400, "no key")
            try:
                store.put(key, self.rfile.read(length).decode())
            except OSError as e:             # EIO from a dead device: never say "stored"
                return self.reply(503, f"not stored: {key}: {e.strerror}")
            self.reply(201, f"stored {key} on {node}")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((args.bind, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
