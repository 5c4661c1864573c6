# SPDX-License-Identifier: GPL-2.0-or-later
"""Dirty bitmap: memory layout shared with C, range rounding, last partial block, runs/extents,
merge, and the exchange encoding (round trip + fuzzing of the decoder)."""
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.bitmap import BLOCK_SIZE, Bitmap, bits_for, buffer_bytes_for, max_encoded_size
from replica.errors import RemoteProtocolError

K = BLOCK_SIZE


def reference_bits(bm: Bitmap) -> set[int]:
    """Decode the buffer the way C does: 64-bit little-endian words, LSB first."""
    words = struct.unpack(f"<{len(bm.to_bytes()) // 8}Q", bm.to_bytes())
    return {w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1}


def test_sizes():
    assert bits_for(0) == 0 and bits_for(1) == 1 and bits_for(K) == 1 and bits_for(K + 1) == 2
    assert buffer_bytes_for(1) == 8 and buffer_bytes_for(64) == 8 and buffer_bytes_for(65) == 16


def test_layout_matches_c_word_convention():
    bm = Bitmap(200 * K)
    for i in (0, 1, 7, 8, 63, 64, 65, 127, 199):
        bm.set_bits(i, i + 1)
    assert reference_bits(bm) == {0, 1, 7, 8, 63, 64, 65, 127, 199}
    raw = bm.to_bytes()
    assert struct.unpack_from("<Q", raw, 0)[0] == (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | \
        (1 << 63)


def test_shared_buffer_sees_external_writes():
    buf = bytearray(buffer_bytes_for(bits_for(1 << 20)))
    bm = Bitmap(1 << 20, buf)
    word = struct.unpack_from("<Q", buf, 8)[0] | (1 << 3)      # "C" sets bit 67
    struct.pack_into("<Q", buf, 8, word)
    assert bm.test(67 * K) and bm.count() == 1
    with pytest.raises(ValueError, match="too small"):
        Bitmap(1 << 20, bytearray(8))
    with pytest.raises(ValueError, match="read-only"):
        Bitmap(K, bytes(8))


def test_set_range_rounds_outwards():
    bm = Bitmap(10 * K)
    bm.set_range(K - 1, 2)                       # straddles blocks 0 and 1
    assert reference_bits(bm) == {0, 1}
    bm.set_range(5 * K, 0)                       # empty write marks nothing
    assert bm.count() == 2
    bm.set_range(3 * K + 100, 1)
    assert bm.test(3 * K) and bm.test(4 * K - 1) and not bm.test(4 * K)


def test_clear_range_only_whole_blocks():
    bm = Bitmap(10 * K)
    bm.set_all()
    bm.clear_range(K // 2, 2 * K)                # covers block 1 only entirely
    assert reference_bits(bm) == set(range(10)) - {1}
    bm.clear_range(0, 10 * K)
    assert bm.count() == 0


def test_last_partial_block():
    size = 5 * K + 100
    bm = Bitmap(size)
    assert bm.nbits == 6
    bm.set_range(size - 1, 1)
    assert bm.test_bit(5) and bm.dirty_bytes() == 100
    assert list(bm.iter_dirty_extents(1 << 20)) == [(5 * K, 100)]
    bm.clear_range(5 * K, 100)                   # reaches the device end: the block is clean
    assert bm.count() == 0
    bm.set_all()
    assert bm.count() == 6 and reference_bits(bm) == set(range(6))   # no bits past nbits
    assert bm.dirty_bytes() == size
    with pytest.raises(ValueError, match="out of device"):
        bm.set_range(size - 1, 2)
    with pytest.raises(ValueError):
        bm.test(size)


def test_runs_and_extents_split_at_max():
    bm = Bitmap(100 * K)
    bm.set_bits(3, 10)
    bm.set_bits(64, 70)
    bm.set_bits(99, 100)
    assert list(bm.iter_dirty_runs()) == [(3, 10), (64, 70), (99, 100)]
    ext = list(bm.iter_dirty_extents(4 * K))
    assert ext == [(3 * K, 4 * K), (7 * K, 3 * K), (64 * K, 4 * K), (68 * K, 2 * K),
                   (99 * K, K)]
    assert list(bm.iter_dirty_extents(100, start_offset=65 * K))[0] == (65 * K, K)


def test_merge_is_union():
    a, b = Bitmap(70 * K), Bitmap(70 * K)
    a.set_bits(0, 3)
    b.set_bits(2, 5)
    b.set_bits(69, 70)
    a.merge(b)
    assert reference_bits(a) == {0, 1, 2, 3, 4, 69}
    with pytest.raises(ValueError, match="different sizes"):
        a.merge(Bitmap(K))


def test_empty_device():
    bm = Bitmap(0)
    assert bm.count() == 0 and list(bm.iter_dirty_extents(K)) == []
    assert Bitmap.decode(bm.encode(), 0) == bm


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000 * K), st.lists(st.tuples(st.integers(0, 3000 * K),
                                                    st.integers(0, 70 * K)), max_size=20))
def test_ranges_match_a_model(size, writes):
    bm, model = Bitmap(size), set()
    for off, length in writes:
        off = min(off, size)
        length = min(length, size - off)
        bm.set_range(off, length)
        if length:
            model |= set(range(off // K, (off + length - 1) // K + 1))
    assert reference_bits(bm) == model
    assert bm.count() == len(model)
    covered = set()
    for off, length in bm.iter_dirty_extents(16 * K):
        assert 0 < length <= 16 * K and off + length <= size
        covered |= set(range(off // K, (off + length - 1) // K + 1))
    assert covered == model
    assert Bitmap.decode(bm.encode(), size) == bm
    assert len(bm.encode()) <= max_encoded_size(bm.nbits)


def test_encode_picks_rle_for_sparse_and_plain_for_noise():
    bm = Bitmap(1 << 30)
    bm.set_range(0, 1 << 20)
    enc = bm.encode()
    assert enc[0] == 1 and len(enc) < 20
    noisy = Bitmap(64 * K)
    noisy.set_bits(0, 1)
    for i in range(0, 64, 2):
        noisy.set_bits(i, i + 1)
    assert noisy.encode()[0] == 0
    assert Bitmap.decode(noisy.encode(), 64 * K) == noisy


@pytest.mark.parametrize("data,match", [
    (b"", "truncated header"),
    (struct.pack(">BQ", 0, 999), "nbits mismatch"),
    (struct.pack(">BQ", 7, 10), "unknown encoding kind"),
    (struct.pack(">BQ", 0, 10) + b"\x00", "plain body length"),
    (struct.pack(">BQ", 0, 10) + b"\x00\xfc", "past the end"),
    (struct.pack(">BQ", 1, 10) + b"\x05\x06", "run length past the end"),
    (struct.pack(">BQ", 1, 10) + b"\x05", "runs cover 5 bits"),
    (struct.pack(">BQ", 1, 10) + b"\x85", "truncated run-length varint"),
    (struct.pack(">BQ", 1, 10) + b"\xff" * 11, "longer than 64 bits"),
])
def test_decode_rejects_garbage_with_reason(data, match):
    with pytest.raises(RemoteProtocolError, match=match):
        Bitmap.decode(data, 10 * K)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 200 * K))
def test_decode_fuzz_never_crashes(data, size):
    try:
        bm = Bitmap.decode(data, size)
    except RemoteProtocolError:
        return
    assert bm.nbits == bits_for(size)
    assert max(reference_bits(bm), default=-1) < bm.nbits


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decode_fuzz_mutations(data):
    size = data.draw(st.integers(1, 300 * K))
    bm = Bitmap(size)
    for _ in range(data.draw(st.integers(0, 5))):
        a = data.draw(st.integers(0, bm.nbits - 1))
        bm.set_bits(a, data.draw(st.integers(a, bm.nbits)))
    enc = bytearray(bm.encode())
    pos = data.draw(st.integers(0, len(enc) - 1))
    enc[pos] = data.draw(st.integers(0, 255))
    try:
        out = Bitmap.decode(bytes(enc), size)
    except RemoteProtocolError:
        return
    assert out.nbits == bm.nbits


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300 * K), st.integers(0, 300 * K),
       st.lists(st.tuples(st.integers(0, 299), st.integers(1, 80)), max_size=8))
def test_decode_for_a_different_peer_size_keeps_the_common_part(ours, theirs, runs):
    peer = Bitmap(theirs)
    for a, n in runs:
        if a < peer.nbits:
            peer.set_bits(a, min(peer.nbits, a + n))
    got = Bitmap.decode(peer.encode(), ours, peer_data_size=theirs)
    assert got.nbits == bits_for(ours)
    common = min(got.nbits, peer.nbits)
    assert reference_bits(got) == {b for b in reference_bits(peer) if b < common}


def test_decode_huge_claimed_peer_size_is_cheap():
    enc = struct.pack(">BQ", 1, bits_for(1 << 60)) + b"\x00" + b"\xff\xff\xff\xff\x7f"
    with pytest.raises(RemoteProtocolError, match="runs cover"):
        Bitmap.decode(enc, 10 * K, peer_data_size=1 << 60)
