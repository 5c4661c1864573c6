# SPDX-License-Identifier: GPL-2.0-or-later
"""A TCP proxy for the peer link that damages one DATA frame on request: what data-integrity-alg
exists to catch (a NIC, a driver or memory flipping bits after TCP's checksum was computed).

    python -m tests.integration.corrupting_proxy LISTEN_HOST:PORT UPSTREAM_HOST:PORT TRIGGER

Run inside the initiator's network namespace: it connects to the peer from the node's own
address, so the peer accepts it. It forwards both directions and parses the initiator's frames
(replica.protocol.repl_wire's 32-byte header); while the file TRIGGER exists, the next DATA frame
(after the handshake) gets one payload byte flipped, and TRIGGER is replaced by TRIGGER.done
holding that frame's offset and length. A test helper only: nothing in replicad can do this.
"""
import os
import socket
import struct
import sys
import threading

HEADER = struct.Struct(">IHHQQII")
DATA = 0x01


def pump_raw(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(1 << 16):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def pump_frames(src: socket.socket, dst: socket.socket, trigger: str) -> None:
    buf = bytearray()
    try:
        while data := src.recv(1 << 20):
            buf += data
            out = bytearray()
            while len(buf) >= HEADER.size:
                _magic, ptype, _flags, _id, offset, length, _aux = HEADER.unpack_from(buf)
                if len(buf) < HEADER.size + length:
                    break
                frame = buf[:HEADER.size + length]
                del buf[:HEADER.size + length]
                if ptype == DATA and length and os.path.exists(trigger):
                    frame[HEADER.size + length // 2] ^= 0x01
                    with open(trigger + ".done", "w") as f:
                        f.write(f"{offset} {length}\n")
                    os.unlink(trigger)
                out += frame
            if out:
                dst.sendall(out)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def main() -> None:
    listen, upstream, trigger = sys.argv[1:4]
    lhost, lport = listen.rsplit(":", 1)
    uhost, uport = upstream.rsplit(":", 1)
    srv = socket.create_server((lhost, int(lport)))
    print("ready", flush=True)
    while True:
        client, _ = srv.accept()
        try:
            peer = socket.create_connection((uhost, int(uport)), timeout=5)
        except OSError:
            client.close()
            continue
        peer.settimeout(None)
        for s in (client, peer):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump_frames, args=(client, peer, trigger), daemon=True).start()
        threading.Thread(target=pump_raw, args=(peer, client), daemon=True).start()


if __name__ == "__main__":
    main()
