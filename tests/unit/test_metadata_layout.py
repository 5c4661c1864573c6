# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.metadata_layout: the record codecs, without I/O (round trips, torn and random input)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.metadata_layout import (
    AL_EXTENTS_MAX,
    BM_PAYLOAD,
    PAGE,
    Superblock,
    al_tx_size,
    pack_al_tx,
    pack_bm_page,
    unpack_al_tx,
    unpack_bm_page,
)

extents = st.lists(st.integers(0, 2**32 - 1), max_size=64)


@given(seq=st.integers(0, 2**64 - 1), ext=extents)
def test_al_transaction_round_trips_and_a_torn_one_is_refused(seq, ext):
    raw = pack_al_tx(seq, ext)
    slot = raw + bytes(al_tx_size(64) - len(raw))
    assert unpack_al_tx(slot, 64) == (seq, ext)
    if ext:
        assert unpack_al_tx(slot, len(ext) - 1) is None                # more than the AL holds
    torn = bytearray(slot)
    torn[len(raw) - 1] ^= 0x01                                       # checksum byte
    assert unpack_al_tx(bytes(torn), 64) is None


@given(payload=st.binary(max_size=BM_PAYLOAD), page=st.integers(0, 2**32 - 1))
def test_bitmap_page_round_trips_and_names_its_index(payload, page):
    raw = pack_bm_page(payload, page)
    assert len(raw) == PAGE
    assert unpack_bm_page(raw, page) == payload + bytes(BM_PAYLOAD - len(payload))
    assert unpack_bm_page(raw, (page + 1) % 2**32) is None          # misdirected write


@settings(max_examples=300)
@given(raw=st.binary(max_size=PAGE), page=st.integers(0, 7), limit=st.integers(0, AL_EXTENTS_MAX))
def test_decoders_never_raise_on_random_bytes(raw, page, limit):
    assert Superblock.unpack(raw) is None or isinstance(Superblock.unpack(raw), Superblock)
    unpack_bm_page(raw + bytes(PAGE - len(raw)), page)
    tx = unpack_al_tx(raw, limit)
    assert tx is None or len(tx[1]) <= limit
