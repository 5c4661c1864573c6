# SPDX-License-Identifier: GPL-2.0-or-later
"""Online resize below the network: the metadata's move to the new end (crash-safe at every
write, torn writes included), the bitmap over the same words, the engine's new size, the pure
size agreement and the SIZES control message (fuzzed)."""
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica import metadata as md_mod
from replica.bitmap import Bitmap, growable_buffer
from replica.errors import RemoteProtocolError
from replica.mirror import Engine
from replica.protocol.repl_codec import Frame, encode_frame
from replica.protocol.repl_control import Sizes, decode_control, encode_control
from replica.protocol.repl_wire import ReplPacket, SizesFlag
from replica.resize import IMPLICIT_SHRINK, TOO_SMALL, agree_size

MiB = 1 << 20


def make_disk(path, size=8 * MiB, external=None):
    with open(path, "wb") as f:
        f.truncate(size)
    with md_mod.create_md(str(path), external or "internal") as md:
        md.bitmap.set_range(0, 8192)                  # two dirty blocks at the start
        md.bitmap.set_range(md.sb.data_size - 4096, 4096)   # and the last one
        md.store_bitmap()
        return md.sb.data_size


def grow(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def resize_to(path, new_size, meta="internal", mark_new=True):
    with md_mod.open_md(str(path), meta, growable=True) as md:
        md.al_make_hot(1, can_evict=lambda e: False)    # an extent hot in the AL (a writer)
        old = md.sb.data_size
        bm = md.bitmap.resized(new_size)
        if mark_new and new_size > old:
            bm.set_range(old, new_size - old)
        md.resize(bm)
        return old


def test_grow_internal_moves_the_metadata_and_keeps_bits_and_al(tmp_path):
    img = tmp_path / "d.img"
    old = make_disk(img)
    grow(img, 16 * MiB)
    with pytest.raises(md_mod.MetadataError, match="after growing an internal-metadata device"):
        md_mod.open_md(str(img))
    # the daemon keeps its metadata open while the device grows: resize moves it
    with open(img, "r+b") as f:
        f.truncate(8 * MiB)
    with md_mod.open_md(str(img), growable=True) as md:
        md.al_make_hot(1, can_evict=lambda e: False)    # an extent hot in the AL (a writer)
        grow(img, 16 * MiB)
        new = md.max_data_size(16 * MiB)
        bm = md.bitmap.resized(new)
        bm.set_range(old, new - old)
        md.resize(bm)
        assert md.sb.data_size == new and md.bitmap is bm
    with md_mod.open_md(str(img), apply_al=False) as md:
        assert md.sb.data_size == new > old
        assert md.bitmap.test_range(0, 8192) and md.bitmap.test(old - 4096)
        assert md.bitmap.test_range(old, new - old) and md.bitmap.count() == 3 + (new - old) // 4096
        assert md.al_replay_extents() == {1}
    with open(img, "rb") as f:                       # the old area is zeros (data now)
        f.seek(old)
        assert f.read(16 * MiB - md.sb.md_size - old).count(0) == 16 * MiB - md.sb.md_size - old


def test_grow_external_and_shrink_in_place(tmp_path):
    img, meta = tmp_path / "d.img", str(tmp_path / "d.md")
    old = make_disk(img, external=meta)
    grow(img, 64 * MiB)
    resize_to(img, 64 * MiB, meta)
    with md_mod.open_md(str(img), meta, apply_al=False) as md:
        assert md.sb.data_size == 64 * MiB and md.bitmap.test(64 * MiB - 1)
        assert md.bitmap.test(old - 1) and md.al_replay_extents() == {1}
    resize_to(img, 4 * MiB, meta)                    # an explicit shrink keeps the layout
    with md_mod.open_md(str(img), meta, apply_al=False) as md:
        assert md.sb.data_size == 4 * MiB and md.bitmap.count() == 2
    resize_to(img, 64 * MiB, meta, mark_new=False)   # and grows back with clean bits
    with md_mod.open_md(str(img), meta, apply_al=False) as md:
        assert md.sb.data_size == 64 * MiB and md.bitmap.count() == 2


def test_a_too_small_grow_is_refused_and_changes_nothing(tmp_path):
    img = tmp_path / "d.img"
    make_disk(img)
    before = img.read_bytes()
    with md_mod.open_md(str(img), growable=True, apply_al=False) as md:
        grow(img, 8 * MiB + 8192)
        new = md.sb.data_size + 4096
        with pytest.raises(md_mod.MetadataError, match="grew by 8192 bytes; moving the internal "
                           "metadata needs at least"):
            md.resize(md.bitmap.resized(new))
    assert img.read_bytes()[:8 * MiB] == before


class Crash(Exception):
    pass


@pytest.mark.parametrize("torn", [False, True])
def test_a_crash_at_any_write_of_the_move_leaves_readable_metadata(tmp_path, monkeypatch, torn):
    """Kill the move after each of its writes (`torn`: the last write lands half): what open_md
    then finds is the old size or the new, with the old dirty bits and the AL; or, before the
    first superblock at the new end, the untouched old metadata at the old end (the state of a
    device grown while down)."""
    base = tmp_path / "base.img"
    old = make_disk(base)
    real_pwrite = os.pwrite
    calls = 0

    def run(limit, img):
        nonlocal calls
        calls = 0

        def crashing(fd, data, offset):
            nonlocal calls
            calls += 1
            if calls > limit:
                if torn:
                    real_pwrite(fd, bytes(data)[:len(data) // 2], offset)
                raise Crash()
            return real_pwrite(fd, data, offset)
        with md_mod.open_md(str(img), growable=True) as md:
            md.al_make_hot(1, can_evict=lambda e: False)
            grow(img, 24 * MiB)
            monkeypatch.setattr(md_mod.os, "pwrite", crashing)
            try:
                new = md.max_data_size(24 * MiB)
                bm = md.bitmap.resized(new)
                bm.set_range(old, new - old)
                md.resize(bm)
            except Crash:
                pass
            finally:
                monkeypatch.setattr(md_mod.os, "pwrite", real_pwrite)
        return new

    img = tmp_path / "count.img"
    shutil.copy(base, img)
    run(10**9, img)
    total = calls
    outcomes = set()
    for limit in range(total + 1):
        img = tmp_path / f"crash{limit}.img"
        shutil.copy(base, img)
        new = run(limit, img)
        try:
            md = md_mod.open_md(str(img), apply_al=False)
        except md_mod.MetadataError:
            with open(img, "rb") as f:       # the old metadata, untouched, at the old end
                sb = md_mod._read_sb_slots(f.fileno(), 8 * MiB - 2 * md_mod.PAGE)
            assert sb is not None and sb.data_size == old, limit
            outcomes.add("old-place")
            continue
        with md:
            assert md.sb.data_size in (old, new), limit
            assert md.bitmap.test_range(0, 8192) and md.bitmap.test(old - 4096), limit
            assert 1 in md.al_replay_extents(), limit
            if md.sb.data_size == new:
                assert md.bitmap.test_range(old, new - old), limit
            outcomes.add(md.sb.data_size)
        os.unlink(img)
    assert outcomes == {"old-place", old, new}


def test_bitmap_resized_shares_the_words_and_clears_a_shrunk_tail():
    bm = Bitmap(64 * MiB, growable_buffer(1 << 40))
    bm.set_range(60 * MiB, 4 * MiB)
    small = bm.resized(32 * MiB)
    assert small.count() == 0 and small.nbits == 32 * MiB // 4096
    big = small.resized(64 * MiB)
    assert big.count() == 0                     # the shrunk tail came back clean
    big.set_range(0, 4096)
    assert memoryview(bm.buffer)[0] == 1        # the same words
    with pytest.raises(ValueError, match="cannot grow to"):
        Bitmap(MiB).resized(2 * MiB)


def test_engine_grows_online(tmp_path):
    path = tmp_path / "e.img"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
    fd = os.open(path, os.O_RDWR)
    try:
        eng = Engine(fd, 8 * MiB)
        bm = Bitmap(8 * MiB, growable_buffer(1 << 40))
        eng.set_bitmap(bm)
        eng.enable_al()
        with pytest.raises(OSError):
            eng.pread(4096, 12 * MiB)
        with pytest.raises(OSError, match="resize"):
            eng.resize(12 * MiB)                 # the bitmap does not cover it yet
        eng.resize(12 * MiB, bm.resized(12 * MiB))
        assert eng.pread(4096, 12 * MiB - 4096) == bytes(4096)
        with pytest.raises(OSError):
            eng.resize(1 << 50, Bitmap(1 << 20))
        eng.close()
    finally:
        os.close(fd)


def test_agree_size():
    G = 1 << 30
    assert agree_size(G, 3 * G, 2 * G, None) == 2 * G
    assert agree_size(G, 3 * G, 2 * G + 5, None) == 2 * G
    assert agree_size(2 * G, 3 * G, G, None).startswith(IMPLICIT_SHRINK)
    assert agree_size(2 * G, 3 * G, 3 * G, G) == G            # explicit shrink
    assert agree_size(G, 3 * G, 2 * G, 3 * G).startswith(TOO_SMALL)


def test_sizes_message_round_trip_and_errors():
    for msg in (Sizes(0, 1 << 30), Sizes(1 << 30, 2 << 30, SizesFlag.REPLY | SizesFlag.ASSUME_CLEAN),
                Sizes(0, 4096, SizesFlag.REPLY, "Implicit shrink not allowed.")):
        assert decode_control(encode_control(msg)) == msg
    with pytest.raises(RemoteProtocolError, match="SIZES: invalid"):
        decode_control(encode_frame(Frame(ReplPacket.SIZES, offset=100, payload=bytes(8))))
    with pytest.raises(RemoteProtocolError, match="SIZES: invalid"):
        decode_control(encode_frame(Frame(ReplPacket.SIZES, aux=8, payload=bytes(8))))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40))
def test_sizes_decode_fuzz(offset, aux, payload):
    raw = encode_frame(Frame(ReplPacket.SIZES, offset=offset, aux=aux, payload=payload)) \
        if len(payload) >= 8 else None
    if raw is None:
        return
    try:
        msg = decode_control(raw)
    except RemoteProtocolError:
        return
    assert isinstance(msg, Sizes) and msg.size % 4096 == 0 and msg.max_size % 4096 == 0
