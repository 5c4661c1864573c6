# SPDX-License-Identifier: GPL-2.0-or-later
"""The on-disk metadata format: sizes, placement, and the codecs of its three records.

Owns the layout only, without I/O: replica.metadata reads and writes these records on a file
descriptor and keeps them crash-safe (its docstring says in which order).

Placement (drbd-reference 1.4)::

    meta-disk internal:   [ data (data_size) ... | bitmap | AL ring | sb slot 0 | sb slot 1 ]
                          ^ offset 0 = device offset 0      metadata ends at the device end
    meta-disk PATH:       data: the whole backing device
                          PATH: [ sb slot 0 | sb slot 1 | AL ring | bitmap ]  from offset 0

md_size = 8 KiB superblock slots + al_tx_count x al_tx_size + bitmap pages x 4 KiB, all 4 KiB
aligned; internal data_size is the largest multiple of 4 KiB such that data + md fit
(`data_size_for`). 1 GiB with the default al-extents 1237 costs 8 KiB + 32 KiB + 36 KiB.

Checksums: SHA-256 truncated to 16 bytes (hashlib, C speed; crc32c is not in the stdlib and a
cryptographic hash also catches misdirected writes). Integers are little-endian.

Records (each one 4 KiB aligned, its checksum last):
- superblock: `_SB` + checksum, in each of 2 slots (`Superblock.pack`/`unpack`)
- AL transaction: `_AL_HDR` + n x u32 extent + checksum (`pack_al_tx`/`unpack_al_tx`)
- bitmap page: 4064 payload bytes + `_BM_TRAILER` + 8 reserved + checksum
  (`pack_bm_page`/`unpack_bm_page`)
"""
import hashlib
import struct
from dataclasses import dataclass

from replica import mirror
from replica.bitmap import BLOCK_SIZE, bits_for, buffer_bytes_for
from replica.errors import ReplicaError
from replica.uuids import GenerationUuids, MdFlag

PAGE = 4096
SECTOR = 512
AL_EXTENT_SIZE = mirror.AL_EXTENT_SIZE
AL_EXTENTS_DEFAULT = 1237
AL_EXTENTS_MIN = 7
AL_EXTENTS_MAX = 65534
AL_TX_COUNT = 4
SB_SLOTS = 2
MD_VERSION = 1
CSUM = 16

MD_MAGIC = 0x52504D44          # ASCII "RPMD"
AL_MAGIC = 0x5250414C          # ASCII "RPAL"
BM_MAGIC = 0x5250424D          # ASCII "RPBM"

# magic, version, generation, data_size, md_size, current, bitmap, history0, history1,
# flags, al_extents, bm_bytes_per_bit, al_tx_size, al_tx_count, bm_pages, meta_external,
# bm_offset, al_offset, sb_offset (relative to the start of the metadata area), device_uuid
_SB = struct.Struct("<IIQQQQQQQIIIIIIIQQQQ")
_AL_HDR = struct.Struct("<IIQI")          # magic, reserved, seq, n_extents
_BM_TRAILER = struct.Struct("<II")         # magic, page index
BM_PAYLOAD = PAGE - _BM_TRAILER.size - CSUM - 8   # 4064 bytes = 508 words
assert BM_PAYLOAD % 8 == 0


class MetadataError(ReplicaError):
    """Metadata missing, corrupt or unusable; the message names the device."""


def _csum(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()[:CSUM]


def _align(n: int) -> int:
    return -(-n // PAGE) * PAGE


def al_tx_size(al_extents: int) -> int:
    return _align(_AL_HDR.size + CSUM + 4 * al_extents)


def bm_pages_for(data_size: int) -> int:
    return max(1, -(-buffer_bytes_for(bits_for(data_size)) // BM_PAYLOAD))


def md_size_for(data_size: int, al_extents: int = AL_EXTENTS_DEFAULT) -> int:
    """Bytes of metadata for `data_size` bytes of data (4 KiB aligned)."""
    return SB_SLOTS * PAGE + AL_TX_COUNT * al_tx_size(al_extents) + bm_pages_for(data_size) * PAGE


def data_size_for(backing_size: int, al_extents: int = AL_EXTENTS_DEFAULT) -> int:
    """Usable data bytes of a backing device with internal metadata (multiple of 4 KiB)."""
    d = (backing_size - md_size_for(backing_size, al_extents)) // PAGE * PAGE
    if d <= 0:
        raise MetadataError(f"create-md: backing device too small for internal metadata: "
                            f"{backing_size} bytes, metadata needs "
                            f"{md_size_for(PAGE, al_extents)}")
    while d + PAGE + md_size_for(d + PAGE, al_extents) <= backing_size:
        d += PAGE
    return d


@dataclass(frozen=True, slots=True)
class Superblock:
    data_size: int
    md_size: int
    uuids: GenerationUuids
    flags: MdFlag
    al_extents: int
    bm_pages: int
    meta_external: bool
    bm_offset: int
    al_offset: int
    sb_offset: int
    device_uuid: int
    generation: int = 0
    al_tx_size: int = 0
    al_tx_count: int = AL_TX_COUNT
    bm_bytes_per_bit: int = BLOCK_SIZE

    def pack(self) -> bytes:
        u = self.uuids
        body = _SB.pack(MD_MAGIC, MD_VERSION, self.generation, self.data_size, self.md_size,
                        u.current, u.bitmap, u.history[0], u.history[1], int(self.flags),
                        self.al_extents, self.bm_bytes_per_bit, self.al_tx_size,
                        self.al_tx_count, self.bm_pages, int(self.meta_external),
                        self.bm_offset, self.al_offset, self.sb_offset, self.device_uuid)
        return body + _csum(body)

    @classmethod
    def unpack(cls, raw: bytes) -> "Superblock | None":
        """The superblock in `raw`, or None if the slot is empty, torn or foreign."""
        if len(raw) < _SB.size + CSUM:
            return None
        body = raw[:_SB.size]
        if _csum(body) != raw[_SB.size:_SB.size + CSUM]:
            return None
        (magic, version, gen, data_size, md_size, cur, bm, h0, h1, flags, al_extents, bpb,
         tx_size, tx_count, bm_pages, external, bm_off, al_off, sb_off,
         dev_uuid) = _SB.unpack(body)
        if magic != MD_MAGIC or version != MD_VERSION:
            return None
        return cls(data_size, md_size, GenerationUuids(cur, bm, (h0, h1)), MdFlag(flags),
                   al_extents, bm_pages, bool(external), bm_off, al_off, sb_off, dev_uuid,
                   gen, tx_size, tx_count, bpb)


def _layout(data_size: int, al_extents: int, external: bool) -> dict:
    tx = al_tx_size(al_extents)
    pages = bm_pages_for(data_size)
    al_len, bm_len = AL_TX_COUNT * tx, pages * PAGE
    if external:
        sb_off, al_off, bm_off = 0, SB_SLOTS * PAGE, SB_SLOTS * PAGE + al_len
    else:
        bm_off, al_off, sb_off = 0, bm_len, bm_len + al_len
    return dict(md_size=SB_SLOTS * PAGE + al_len + bm_len, bm_pages=pages, al_tx_size=tx,
                bm_offset=bm_off, al_offset=al_off, sb_offset=sb_off)


def pack_bm_page(payload: bytes, page: int) -> bytes:
    """Bitmap page `page` holding `payload` (at most BM_PAYLOAD bytes, zero-padded)."""
    payload += bytes(BM_PAYLOAD - len(payload))
    trailer = _BM_TRAILER.pack(BM_MAGIC, page) + bytes(8)
    return payload + trailer + _csum(payload, trailer)


def unpack_bm_page(raw: bytes, page: int) -> bytes | None:
    """The payload of bitmap page `page` read as `raw` (PAGE bytes), or None when it fails
    its checksum or carries another page's index (torn, misdirected)."""
    payload, trailer = raw[:BM_PAYLOAD], raw[BM_PAYLOAD:BM_PAYLOAD + _BM_TRAILER.size + 8]
    csum = raw[BM_PAYLOAD + _BM_TRAILER.size + 8:]
    if _csum(payload, trailer) != csum or _BM_TRAILER.unpack_from(trailer) != (BM_MAGIC, page):
        return None
    return payload


def pack_al_tx(seq: int, extents: list[int]) -> bytes:
    """An activity-log transaction: sequence number `seq`, the hot `extents` (unpadded)."""
    body = _AL_HDR.pack(AL_MAGIC, 0, seq, len(extents)) + struct.pack(f"<{len(extents)}I", *extents)
    return body + _csum(body)


def unpack_al_tx(raw: bytes, al_extents: int) -> tuple[int, list[int]] | None:
    """(seq, extents) of the transaction in `raw` (one AL slot), or None when the slot is
    empty, torn or lists more than `al_extents` extents."""
    if len(raw) < _AL_HDR.size:
        return None
    magic, _r, seq, n = _AL_HDR.unpack_from(raw)
    if magic != AL_MAGIC or n > al_extents:
        return None
    end = _AL_HDR.size + 4 * n
    if len(raw) < end + CSUM or _csum(raw[:end]) != raw[end:end + CSUM]:
        return None
    return seq, list(struct.unpack_from(f"<{n}I", raw, _AL_HDR.size))
