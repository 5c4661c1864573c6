# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd.media_link on real loopback UDP sockets: receive into the callback, send, swap, close."""
import asyncio
import socket

from hbd.config import parse_ha_config
from hbd.media import Media
from hbd.media_link import RECV_BURST, MediaLink


def loopback_media() -> tuple[Media, socket.socket]:
    """A Media serving one loopback socket, as Media.open would leave it; and a peer socket."""
    mine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    mine.bind(("127.0.0.1", 0))
    mine.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    m = Media(parse_ha_config("node ha1 ha2\nbcast lo\n"))   # not opened: the sockets are set here
    m.socks = [mine]
    m.targets = [(mine, peer.getsockname())]
    return m, peer


async def until(pred, timeout_s=5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_receive_send_swap_and_close():
    got, kicks = [], []
    old, old_peer = loopback_media()
    new, new_peer = loopback_media()

    async def scenario():
        link = MediaLink(old, receive=lambda data, addr, now: got.append((data, addr[0])),
                         received=lambda: kicks.append(len(got)))
        link.attach(asyncio.get_running_loop())
        for i in range(RECV_BURST + 3):         # more than one burst: nothing is left behind
            old_peer.sendto(b"d%d" % i, old.socks[0].getsockname())
        await until(lambda: len(got) == RECV_BURST + 3)
        assert got[0] == (b"d0", "127.0.0.1") and kicks and kicks[-1] == len(got)
        link.send(b"out")
        assert old_peer.recv(100) == b"out"

        old_sock = old.socks[0]
        link.swap(new)
        assert link.media is new and old_sock.fileno() == -1     # the old socket is closed
        new_peer.sendto(b"after swap", new.socks[0].getsockname())
        await until(lambda: got[-1][0] == b"after swap")
        link.send(b"out2")
        assert new_peer.recv(100) == b"out2"
        link.close()
        assert new.socks[0].fileno() == -1

    try:
        asyncio.run(scenario())
    finally:
        for s in (*old.socks, *new.socks, old_peer, new_peer):
            s.close()
