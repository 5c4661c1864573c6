# SPDX-License-Identifier: GPL-2.0-or-later
"""On-disk metadata: layout/sizes, create/open round trips (internal and external), refusal to
overwrite, bitmap and activity-log persistence, and crash safety under torn writes at every byte."""
import json
import os
import tempfile
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replica.metadata as mdmod
from replica.bitmap import BLOCK_SIZE
from replica.metadata import (
    AL_EXTENT_SIZE,
    PAGE,
    MetadataError,
    MetadataExists,
    create_md,
    data_size_for,
    md_size_for,
    open_md,
)
from replica.metadata_dump import dump_md, format_dump_md
from replica.uuids import UUID_JUST_CREATED, GenerationUuids, MdFlag

MiB = 1024 * 1024


def make_file(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


class Crash(Exception):
    pass


class TornWrites:
    """Stand-in for `os` inside replica.metadata: the n-th pwrite from now is torn after `cut`
    bytes and the process "crashes" (raises Crash); everything else is the real os."""

    def __init__(self, nth: int, cut: int):
        self.nth, self.cut, self.count = nth, cut, 0

    def module(self):
        ns = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
        ns.pwrite = self.pwrite
        return ns

    def pwrite(self, fd, data, offset):
        self.count += 1
        if self.count == self.nth:
            os.pwrite(fd, bytes(data[:self.cut]), offset)
            raise Crash(f"torn at {self.cut} of {len(data)}")
        return os.pwrite(fd, data, offset)


def test_sizes_and_internal_placement(tmp_path):
    size = 1 << 30
    d = data_size_for(size)
    assert d % PAGE == 0 and d + md_size_for(d) <= size
    assert d + PAGE + md_size_for(d + PAGE) > size
    assert md_size_for(d) == 8192 + 4 * 8192 + 9 * PAGE      # sb slots + AL ring + bitmap
    with pytest.raises(MetadataError, match="too small"):
        data_size_for(16 * 1024)
    p = make_file(tmp_path / "disk", 64 * MiB)
    with create_md(p, al_extents=7) as md:
        info = dump_md(md)
        assert md.sb.data_size == data_size_for(64 * MiB, 7)
        assert info["bm_offset"] == md.sb.data_size            # metadata right after the data
        assert info["md_offset"] == 64 * MiB - 2 * PAGE        # superblock slots at the end
        assert info["uuid"]["current"] == "0x0000000000000004"


def test_create_open_round_trip_internal(tmp_path):
    p = make_file(tmp_path / "disk", 32 * MiB)
    with create_md(p, al_extents=7, device_uuid=0x1234) as md:
        assert md.uuids == GenerationUuids(UUID_JUST_CREATED)
        assert md.flags == MdFlag.AL_CLEAN
        u = GenerationUuids(0xDEADBEEF00000001, 0xCAFE0000, (0x10, 0x20))
        md.write_superblock(uuids=u, flags=MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE)
        md.bitmap.set_range(5 * BLOCK_SIZE, 3 * BLOCK_SIZE)
        md.store_bitmap()
        gen = md.sb.generation
    # the data area can be overwritten freely without touching the metadata
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"\xa5" * MiB, 0)
        data_size = data_size_for(32 * MiB, 7)
        os.pwrite(fd, b"\x5a" * 4096, data_size - 4096)
    finally:
        os.close(fd)
    with open_md(p) as md:
        assert md.uuids == u and md.sb.generation == gen and md.sb.device_uuid == 0x1234
        assert md.flags == MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE
        assert list(md.bitmap.iter_dirty_runs()) == [(5, 8)]
        assert md.torn_bitmap_pages == []


def test_create_open_round_trip_external(tmp_path):
    p = make_file(tmp_path / "disk", 20 * MiB)
    meta = tmp_path / "disk.md"
    with create_md(p, str(meta), al_extents=100) as md:
        assert md.sb.data_size == 20 * MiB and md.sb.meta_external
        md.write_superblock(flags=MdFlag.CONSISTENT)
    assert os.path.getsize(p) == 20 * MiB
    with open_md(p, str(meta)) as md:
        assert md.flags == MdFlag.CONSISTENT and md.sb.al_extents == 100
    with pytest.raises(MetadataError, match="no valid metadata found"):
        open_md(p)                                  # it is not internal


def test_create_refuses_existing_metadata_unless_forced(tmp_path):
    p = make_file(tmp_path / "disk", 16 * MiB)
    create_md(p, al_extents=7).close()
    with pytest.raises(MetadataExists, match=r"^create-md: .*disk: valid metadata found .*"
                                             r"use force to overwrite it$"):
        create_md(p, al_extents=7)
    with create_md(p, al_extents=7, force=True, device_uuid=7) as md:
        assert md.sb.device_uuid == 7


def test_open_without_metadata_and_bad_args(tmp_path):
    p = make_file(tmp_path / "blank", 16 * MiB)
    with pytest.raises(MetadataError, match=r"^open-md: .*blank: no valid metadata found"):
        open_md(p)
    with pytest.raises(MetadataError, match="al-extents 3 outside"):
        create_md(p, al_extents=3)
    with pytest.raises(MetadataError, match="does not fit"):
        create_md(p, data_size=16 * MiB)
    with pytest.raises(MetadataError, match="No such file"):
        open_md(tmp_path / "missing")


def test_superblock_alternates_slots_and_survives_a_smashed_slot(tmp_path):
    p = make_file(tmp_path / "disk", 16 * MiB)
    with create_md(p, al_extents=7) as md:
        for i in range(5):
            md.write_superblock(uuids=GenerationUuids(0x100 * (i + 1)))
        newest = md.sb
    fd = os.open(p, os.O_RDWR)
    try:   # destroy the newest slot entirely: the previous generation must be read back
        slot = newest.generation % 2
        os.pwrite(fd, b"\xff" * PAGE, 16 * MiB - 2 * PAGE + slot * PAGE)
    finally:
        os.close(fd)
    with open_md(p) as md:
        assert md.sb.generation == newest.generation - 1
        assert md.uuids == GenerationUuids(0x400)


def test_activity_log_replay_after_crash(tmp_path):
    p = make_file(tmp_path / "disk", 64 * MiB)
    with create_md(p, al_extents=7) as md:
        md.al_make_hot(2, can_evict=lambda e: True)
        md.al_make_hot(2, can_evict=lambda e: True)    # already hot: no transaction
        md.al_make_hot(5, can_evict=lambda e: True)
        writes = md.al_writes
        # crash: no clean shutdown, bitmap never written
    with open_md(p) as md:
        dirty = set(md.bitmap.iter_dirty_runs())
        per = AL_EXTENT_SIZE // BLOCK_SIZE
        assert dirty == {(2 * per, 3 * per), (5 * per, 6 * per)}
        assert md.al_hot == []                          # applied, fresh AL
        md.clean_shutdown()
    with open_md(p) as md:
        assert md.bitmap.count() == 2 * per             # the bitmap was persisted
        assert MdFlag.AL_CLEAN in md.flags
    assert writes == 3


def test_activity_log_eviction_writes_bitmap_first(tmp_path):
    p = make_file(tmp_path / "disk", 64 * MiB)
    with create_md(p, al_extents=7) as md:
        for e in range(7):
            md.al_make_hot(e, can_evict=lambda e: False)
        md.bitmap.set_range(10 * BLOCK_SIZE, BLOCK_SIZE)   # a write in extent 0
        bm_writes = md.bm_writes
        assert md.al_make_hot(8, can_evict=lambda e: True) == 0   # evicts extent 0
        assert md.bm_writes == bm_writes + 1 and 0 not in md.al_hot
    with open_md(p, apply_al=False) as md:
        assert md.bitmap.test(10 * BLOCK_SIZE)             # survived via the bitmap page
        assert md.al_replay_extents() >= {1, 2, 3, 4, 5, 6, 8}


def test_dump_md_text_and_json(tmp_path):
    p = make_file(tmp_path / "disk", 16 * MiB)
    with create_md(p, al_extents=7, device_uuid=0xAB) as md:
        md.write_superblock(uuids=GenerationUuids(0x1111111111111111, 0x2222, (0x33, 0)),
                            flags=MdFlag.CONSISTENT | MdFlag.CRASHED_PRIMARY)
        md.bitmap.set_bits(0, 1)
        md.bitmap.set_bits(64, 128)
        text = format_dump_md(md)
        d = dump_md(md)
    assert text.startswith('version "v08";\n')
    assert "uuid {\n    0x1111111111111111; 0x0000000000002222; 0x0000000000000033; " \
           "0x0000000000000000;\n    flags 0x00000041; # consistent, crashed-primary\n}" in text
    assert f"la-size-sect {d['data_size'] // 512};" in text
    assert "bm-byte-per-bit 4096;" in text and "device-uuid 0x00000000000000AB;" in text
    assert "# bits-set 65;" in text
    assert "bm {\n   # at 0kB\n   0x0000000000000001;\n   0xFFFFFFFFFFFFFFFF;\n   " in text
    assert json.loads(json.dumps(d))["flag_names"] == ["consistent", "crashed-primary"]


# --- crash safety: a torn write at every byte boundary ------------------------------------

def _fresh(tmpdir, size=16 * MiB):
    p = make_file(os.path.join(tmpdir, "disk"), size)
    md = create_md(p, al_extents=7, device_uuid=1)
    return p, md


@settings(max_examples=120, deadline=None)
@given(st.integers(0, PAGE))
def test_torn_superblock_write_reads_old_or_new(cut):
    with tempfile.TemporaryDirectory() as d:
        p, md = _fresh(d)
        old = GenerationUuids(0x1000)
        new = GenerationUuids(0x2000, 0x1000)
        md.write_superblock(uuids=old)
        torn = TornWrites(1, cut)
        real = mdmod.os
        mdmod.os = torn.module()
        try:
            with pytest.raises(Crash):
                md.write_superblock(uuids=new)
        finally:
            mdmod.os = real
            md.close()
        with open_md(p) as back:
            assert back.uuids in (old, new)
            full = mdmod._SB.size + mdmod.CSUM
            assert back.uuids == (new if cut >= full else old)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 8192))
def test_torn_al_transaction_keeps_previous_extents(cut):
    with tempfile.TemporaryDirectory() as d:
        p, md = _fresh(d)
        md.al_make_hot(1, can_evict=lambda e: True)
        md.al_make_hot(2, can_evict=lambda e: True)
        cut = min(cut, md.sb.al_tx_size)
        torn = TornWrites(1, cut)
        real = mdmod.os
        mdmod.os = torn.module()
        try:
            with pytest.raises(Crash):
                md.al_make_hot(3, can_evict=lambda e: True)
        finally:
            mdmod.os = real
            md.close()
        with open_md(p, apply_al=False) as back:
            replay = back.al_replay_extents()
            assert {1, 2} <= replay <= {1, 2, 3}


@settings(max_examples=120, deadline=None)
@given(st.integers(0, PAGE), st.lists(st.integers(0, 3000), max_size=10))
def test_torn_bitmap_page_reads_old_new_or_all_dirty(cut, bits):
    with tempfile.TemporaryDirectory() as d:
        p, md = _fresh(d)
        md.bitmap.set_bits(7, 9)
        md.store_bitmap()
        old = set(md.bitmap.iter_dirty_runs())
        for b in bits:
            md.bitmap.set_bits(b, b + 1)
        new = set(md.bitmap.iter_dirty_runs())
        torn = TornWrites(1, cut)
        real = mdmod.os
        mdmod.os = torn.module()
        try:
            with pytest.raises(Crash):
                md.store_bitmap()
        finally:
            mdmod.os = real
            md.close()
        with open_md(p, apply_al=False) as back:
            runs = set(back.bitmap.iter_dirty_runs())
            page_bits = min(back.bitmap.nbits, mdmod.BM_PAYLOAD * 8)
            if back.torn_bitmap_pages:
                assert back.torn_bitmap_pages == [0] and (0, page_bits) in runs
            else:
                assert runs in (old, new)


@pytest.mark.parametrize("crash_at", ["bitmap", "al"])
def test_crash_during_eviction_never_loses_dirty_blocks(tmp_path, crash_at):
    p = make_file(tmp_path / "disk", 64 * MiB)
    md = create_md(p, al_extents=7)
    for e in range(7):
        md.al_make_hot(e, can_evict=lambda e: True)
    md.bitmap.set_range(12 * BLOCK_SIZE, 2 * BLOCK_SIZE)        # written while extent 0 hot
    nth = 1 if crash_at == "bitmap" else 2                       # page write, then AL write
    torn = TornWrites(nth, 100)
    real = mdmod.os
    mdmod.os = torn.module()
    try:
        with pytest.raises(Crash):
            md.al_make_hot(9, can_evict=lambda e: True)                                    # evicts extent 0
    finally:
        mdmod.os = real
        md.close()
    with open_md(p) as back:
        assert back.bitmap.test(12 * BLOCK_SIZE) and back.bitmap.test(13 * BLOCK_SIZE)


def test_crashed_primary_and_flag_helpers(tmp_path):
    from replica.roles import AttachInfo
    from replica.uuids import UuidFlag
    p = make_file(tmp_path / "disk", 16 * MiB)
    with create_md(p, al_extents=7) as md:
        assert md.uuid_flags() == UuidFlag.INCONSISTENT
        assert md.attach_info() == AttachInfo(False, False, False)
        md.set_flags(set_=MdFlag.CONSISTENT | MdFlag.WAS_UP_TO_DATE | MdFlag.PRIMARY_IND)
        md.al_make_hot(0, can_evict=lambda e: True)
        assert MdFlag.AL_CLEAN not in md.flags         # AL in use
    with open_md(p) as md:                              # reopened without demoting: a crash
        assert md.crashed_primary and MdFlag.CRASHED_PRIMARY in md.flags
        assert md.uuid_flags(discard_my_data=True) == \
            UuidFlag.CRASHED_PRIMARY | UuidFlag.DISCARD_MY_DATA
        assert md.attach_info() == AttachInfo(True, True, False)
        md.set_flags(clear=MdFlag.PRIMARY_IND | MdFlag.CRASHED_PRIMARY)
    with open_md(p) as md:
        assert not md.crashed_primary and md.uuid_flags() == UuidFlag(0)


def test_al_make_hot_for_the_c_engine(tmp_path):
    p = make_file(tmp_path / "disk", 64 * MiB)
    with create_md(p, al_extents=7) as md:
        for e in range(7):
            assert md.al_make_hot(e, can_evict=lambda e: False) is None
        assert md.al_make_hot(3, can_evict=lambda e: False) is None     # already hot: LRU bump
        with pytest.raises(MetadataError, match="all 7 extents"):
            md.al_make_hot(9, can_evict=lambda e: False)
        md.bitmap.set_range(0, BLOCK_SIZE)
        assert md.al_make_hot(9, can_evict=lambda e: e != 0) == 1      # LRU among evictable
        assert md.al_hot == [0, 2, 4, 5, 6, 3, 9]
        assert md.al_make_hot(10, can_evict=lambda e: True) == 0
        assert md.bm_writes >= 2
    with open_md(p, apply_al=False) as md:
        assert md.bitmap.test(0)                                        # stored on eviction
        assert md.al_replay_extents() >= {2, 3, 4, 5, 6, 9, 10}
    with pytest.raises(ValueError, match="extent out of range"):
        with open_md(p) as md:
            md.al_make_hot(-1, can_evict=lambda e: True)


def test_store_bitmap_changed_only_writes_the_pages_that_changed(tmp_path):
    p = make_file(tmp_path / "disk", 256 * MiB)        # 65536 bits: 3 bitmap pages
    bits_per_page = mdmod.BM_PAYLOAD * 8
    with create_md(p, al_extents=7) as md:
        assert md.sb.bm_pages == 3
        assert md.store_bitmap(changed_only=True) == 0              # as created
        md.bitmap.set_bits(bits_per_page + 5, bits_per_page + 9)    # page 1 only
        writes = md.bm_writes
        assert md.store_bitmap(changed_only=True) == 1
        assert md.bm_writes == writes + 1
        assert md.store_bitmap(changed_only=True) == 0
        assert md.store_bitmap() == 3                               # a full store still writes all
    with open_md(p, apply_al=False) as md:
        assert md.bitmap.count() == 4
        assert md.store_bitmap(changed_only=True) == 0              # known from load_bitmap
        md.bitmap.clear_bits(bits_per_page + 5, bits_per_page + 6)
        assert md.store_bitmap(changed_only=True) == 1
    with open_md(p, apply_al=False) as md:
        assert md.bitmap.count() == 3


def test_clean_shutdown_leaves_the_activity_log_clean_a_crash_applies_it(tmp_path):
    per = AL_EXTENT_SIZE // BLOCK_SIZE
    p = make_file(tmp_path / "disk", 64 * MiB)
    with create_md(p, al_extents=7) as md:
        assert md.al_clean                                     # created clean
        for e in (1, 4, 6):
            md.al_make_hot(e, can_evict=lambda e: False)
        assert not md.al_clean                                 # in use
        md.bitmap.set_range(4 * AL_EXTENT_SIZE + 3 * BLOCK_SIZE, 2 * BLOCK_SIZE)
        md.clean_shutdown()                                    # down / SIGTERM
        assert md.al_clean
    with open_md(p) as md:
        # only what was out of sync: not extents 1, 4 and 6 of the AL before the shutdown
        assert md.bitmap.count() == 2
        assert md.al_clean and md.al_hot == []
        md.al_make_hot(2, can_evict=lambda e: False)
        md.bitmap.set_range(2 * AL_EXTENT_SIZE, BLOCK_SIZE)
        # crash: no clean shutdown
    with open_md(p) as md:
        assert not md.al_clean
        assert set(md.bitmap.iter_dirty_runs()) == {(4 * per + 3, 4 * per + 5),
                                                    (2 * per, 3 * per)}
        md.clean_shutdown()
    with open_md(p) as md:                                     # applied once, then clean
        assert md.bitmap.count() == 2 + per and md.al_clean


@pytest.mark.parametrize("nth", [1, 2])
def test_crash_when_an_extent_enters_a_clean_activity_log_applies_it(tmp_path, nth):
    """The flag is cleared before the transaction that lets writes in: a crash between them,
    or in the transaction, leaves the AL replayed on the next open, never trusted clean."""
    p = make_file(tmp_path / "disk", 64 * MiB)
    md = create_md(p, al_extents=7)
    md.al_make_hot(3, can_evict=lambda e: False)
    md.clean_shutdown()
    md.close()
    md = open_md(p)
    torn = TornWrites(nth, 100 if nth == 1 else 10 ** 6)   # torn superblock, or AL write lost
    real = mdmod.os
    mdmod.os = torn.module()
    try:
        with pytest.raises(Crash):
            md.al_make_hot(5, can_evict=lambda e: False)
    finally:
        mdmod.os = real
        md.close()
    with open_md(p) as back:
        # a torn flag write reads the old, clean superblock: the AL then holds nothing that a
        # write could have used yet (the write waits for the transaction)
        assert back.al_clean is (nth == 1)
