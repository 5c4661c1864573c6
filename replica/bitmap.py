# SPDX-License-Identifier: GPL-2.0-or-later
"""The dirty ("quick-sync") bitmap: one bit per 4 KiB block of the replicated device.

Owns: the in-memory bitmap shared with the C data path, and its exchange encoding.

Memory layout (the C/Python contract, see csrc/bitmap.h): a writable buffer of 64-bit
little-endian words; bit i (block i, bytes [i*4096, (i+1)*4096) of the device) is bit (i & 63)
of word (i >> 6), counted from the least significant bit. C sets bits with
`words[i >> 6] |= 1ull << (i & 63)` (on a big-endian host C must convert with htole64). As the
words are little-endian, bit i is also bit (i & 7) of byte (i >> 3), which is how this module
reads it. The buffer is a whole number of words; bits past `nbits` are zero and stay zero.

A block is dirty when any byte of it may differ from the peer, so `set_range` rounds outwards;
`clear_range` clears only blocks it covers entirely (plus the last, partial block of the device
when the range reaches the device end), so a block is never marked clean by a partial transfer.

Exchange encoding (`encode`/`decode`, carried in BITMAP frames), all integers big-endian:
    u8 kind (0 = plain, 1 = RLE) | u64 nbits | body
    plain: the bitmap bytes, ceil(nbits/8) of them
    RLE:   alternating run lengths of clear, set, clear, ... bits as unsigned LEB128 varints
           (the first run may be 0); the runs must add up to exactly nbits.
`encode` picks whichever is smaller, so an encoding is never longer than nbits/8 + 9 bytes and a
decoder can bound its input before reading it.
"""
import mmap
import re
import struct
from collections.abc import Iterator

from replica.errors import RemoteProtocolError
from replica.mirror import BLOCK_SIZE  # csrc/mirror.h RM_BLOCK_SIZE

ENC_PLAIN = 0
ENC_RLE = 1
_ENC_HEADER = struct.Struct(">BQ")
_SET_BYTE = re.compile(rb"[^\x00]")
_CLEAR_BYTE = re.compile(rb"[^\xff]")
_POPCOUNT_CHUNK = 1 << 20
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)   # Linux's value; Python >= 3.13 names it


def bits_for(data_size: int) -> int:
    """Number of 4 KiB blocks (bits) for a device of `data_size` bytes (last block partial)."""
    return -(-data_size // BLOCK_SIZE)


def buffer_bytes_for(nbits: int) -> int:
    """Bytes of the word-aligned buffer holding `nbits` bits."""
    return -(-nbits // 64) * 8


def max_encoded_size(nbits: int) -> int:
    return _ENC_HEADER.size + -(-nbits // 8)


def growable_buffer(capacity_bytes: int, data_size: int = 0) -> mmap.mmap | bytearray:
    """Room for the bitmap of a device that may grow to `capacity_bytes` online: an anonymous
    MAP_NORESERVE mapping, so address space only, pages resident once used. The words C was
    given never move when the device grows (Bitmap.resized over the same buffer). Where the
    kernel will not map that much (vm.overcommit_memory 2), room for `data_size` only: the
    device then cannot grow online (Bitmap.resized says so)."""
    length = max(buffer_bytes_for(bits_for(capacity_bytes)), mmap.PAGESIZE)
    try:
        return mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    except OSError:
        return bytearray(buffer_bytes_for(bits_for(data_size)))


class Bitmap:
    """Dirty bitmap over a device of `data_size` bytes, in `buffer` (allocated if None).

    `buffer` may be larger than needed (growable_buffer): `buffer` then is the first bytes of it
    that the bitmap uses, and `resized()` gives the bitmap of another size over the same words."""

    def __init__(self, data_size: int, buffer=None):
        if data_size < 0:
            raise ValueError(f"bitmap: negative data size: {data_size}")
        self.data_size = data_size
        self.nbits = bits_for(data_size)
        need = buffer_bytes_for(self.nbits)
        if buffer is None:
            buffer = bytearray(need)
        mv = memoryview(buffer).cast("B")
        if mv.readonly:
            raise ValueError("bitmap: buffer is read-only")
        if len(mv) < need:
            raise ValueError(f"bitmap: buffer too small: {len(mv)} bytes, need {need}")
        self._backing = buffer
        self._mv = mv[:need]
        self.buffer = buffer if len(mv) == need else self._mv

    @property
    def capacity_bytes(self) -> int:
        """The largest data size a resized() bitmap over this buffer can cover."""
        return len(memoryview(self._backing).cast("B")) * 8 * BLOCK_SIZE

    def resized(self, data_size: int) -> "Bitmap":
        """The bitmap of a device of `data_size` bytes over the same words: the bits it shares
        with this one stay; bits past the new end (a shrink) are cleared, so a later grow finds
        them clean; new bits (a grow) are clean. ValueError past capacity_bytes."""
        if data_size > self.capacity_bytes:
            raise ValueError(f"bitmap: cannot grow to {data_size} bytes: room for "
                             f"{self.capacity_bytes}")
        if data_size < self.data_size:
            self.clear_bits(bits_for(data_size), self.nbits)
        return Bitmap(data_size, self._backing)

    def __repr__(self) -> str:
        return f"Bitmap(data_size={self.data_size}, nbits={self.nbits}, dirty={self.count()})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Bitmap) and self.nbits == other.nbits and \
            self._mv == other._mv

    # --- ranges of bytes -> ranges of bits ----------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.data_size:
            raise ValueError(f"bitmap: range out of device: offset={offset} length={length} "
                             f"size={self.data_size}")

    def set_range(self, offset: int, length: int) -> None:
        """Mark every block touched by [offset, offset+length) dirty."""
        self._check(offset, length)
        if length:
            self.set_bits(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1)

    def clear_range(self, offset: int, length: int) -> None:
        """Mark clean every block lying entirely inside [offset, offset+length)."""
        self._check(offset, length)
        end = offset + length
        first = -(-offset // BLOCK_SIZE)
        last = end // BLOCK_SIZE if end < self.data_size else self.nbits
        if last > first:
            self.clear_bits(first, last)

    def test(self, offset: int) -> bool:
        """Is the block holding byte `offset` dirty?"""
        if not 0 <= offset < self.data_size:
            raise ValueError(f"bitmap: offset out of device: {offset} size={self.data_size}")
        return self.test_bit(offset // BLOCK_SIZE)

    def test_range(self, offset: int, length: int) -> bool:
        """Is any block touched by the range dirty?"""
        self._check(offset, length)
        if not length:
            return False
        first, end = offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1
        return self.next_set(first) < end

    # --- bits ---------------------------------------------------------------------------------

    def test_bit(self, i: int) -> bool:
        return bool(self._mv[i >> 3] >> (i & 7) & 1)

    def set_bits(self, start: int, end: int) -> None:
        self._fill(start, end, True)

    def clear_bits(self, start: int, end: int) -> None:
        self._fill(start, end, False)

    def _fill(self, start: int, end: int, value: bool) -> None:
        if not 0 <= start <= end <= self.nbits:
            raise ValueError(f"bitmap: bit range out of bounds: {start}..{end} nbits={self.nbits}")
        mv = self._mv
        while start < end and start & 7:
            self._set1(start, value)
            start += 1
        full_end = end & ~7
        if full_end > start:
            mv[start >> 3:full_end >> 3] = (b"\xff" if value else b"\x00") * \
                ((full_end - start) >> 3)
            start = full_end
        while start < end:
            self._set1(start, value)
            start += 1

    def _set1(self, i: int, value: bool) -> None:
        if value:
            self._mv[i >> 3] |= 1 << (i & 7)
        else:
            self._mv[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def set_all(self) -> None:
        self.set_bits(0, self.nbits)

    def clear_all(self) -> None:
        self.clear_bits(0, self.nbits)

    def count(self) -> int:
        """Number of dirty blocks (popcount)."""
        total = 0
        for i in range(0, len(self._mv), _POPCOUNT_CHUNK):
            total += int.from_bytes(self._mv[i:i + _POPCOUNT_CHUNK], "little").bit_count()
        return total

    def dirty_bytes(self) -> int:
        """Bytes to resync: dirty blocks x 4 KiB, the last block counted by its real size."""
        n = self.count() * BLOCK_SIZE
        if self.nbits and self.data_size % BLOCK_SIZE and self.test_bit(self.nbits - 1):
            n -= BLOCK_SIZE - self.data_size % BLOCK_SIZE
        return n

    def next_set(self, start: int) -> int:
        """Index of the first dirty bit >= start, or nbits."""
        return self._next(start, True)

    def next_clear(self, start: int) -> int:
        """Index of the first clean bit >= start, or nbits."""
        return self._next(start, False)

    def _next(self, start: int, want: bool) -> int:
        mv, n = self._mv, self.nbits
        i = start
        while i < n and i & 7:
            if self.test_bit(i) == want:
                return i
            i += 1
        if i >= n:
            return n
        m = (_SET_BYTE if want else _CLEAR_BYTE).search(mv, i >> 3)
        if m is None:
            return n
        byte_index = m.start()
        b = mv[byte_index] if want else ~mv[byte_index] & 0xFF
        bit = (byte_index << 3) + ((b & -b).bit_length() - 1)
        return min(bit, n)

    def iter_dirty_runs(self, start: int = 0) -> Iterator[tuple[int, int]]:
        """(first_bit, end_bit) for each maximal run of dirty bits."""
        i = self.next_set(start)
        while i < self.nbits:
            j = self.next_clear(i)
            yield i, j
            i = self.next_set(j)

    def iter_dirty_extents(self, max_extent_bytes: int, start_offset: int = 0
                           ) -> Iterator[tuple[int, int]]:
        """(offset, length) byte ranges covering the dirty blocks, in ascending order.

        Each is at most `max_extent_bytes` (rounded down to whole blocks, at least one block)
        and ends at the device end for the last partial block.
        """
        max_bits = max(1, max_extent_bytes // BLOCK_SIZE)
        for a, b in self.iter_dirty_runs(start_offset // BLOCK_SIZE):
            while a < b:
                e = min(b, a + max_bits)
                off = a * BLOCK_SIZE
                yield off, min(e * BLOCK_SIZE, self.data_size) - off
                a = e

    def merge(self, other: "Bitmap") -> None:
        """Union: a block dirty on either side is dirty (DRBD resyncs the union of both)."""
        if other.nbits != self.nbits:
            raise ValueError(f"bitmap: merge of different sizes: {self.nbits} vs "
                             f"{other.nbits} bits")
        n = len(self._mv)
        merged = int.from_bytes(self._mv, "little") | int.from_bytes(other._mv, "little")
        self._mv[:] = merged.to_bytes(n, "little")

    def copy(self) -> "Bitmap":
        return Bitmap(self.data_size, bytearray(self._mv))

    def to_bytes(self) -> bytes:
        return bytes(self._mv)

    # --- exchange encoding --------------------------------------------------------------------

    def encode(self) -> bytes:
        """Encode for the peer: RLE if smaller, else plain (see module docstring)."""
        plain_len = -(-self.nbits // 8)
        out = bytearray(_ENC_HEADER.pack(ENC_RLE, self.nbits))
        limit = len(out) + plain_len
        pos = 0
        for a, b in self.iter_dirty_runs():
            _put_varint(out, a - pos)
            _put_varint(out, b - a)
            pos = b
            if len(out) > limit:
                break
        else:
            if pos < self.nbits:
                _put_varint(out, self.nbits - pos)
            if len(out) <= limit:
                return bytes(out)
        return _ENC_HEADER.pack(ENC_PLAIN, self.nbits) + bytes(self._mv[:plain_len])

    @classmethod
    def decode(cls, data: bytes, data_size: int, *, peer_data_size: int | None = None
               ) -> "Bitmap":
        """Decode a peer's bitmap into a Bitmap for our device of `data_size` bytes.

        `peer_data_size` (default: ours) is the size the peer encoded for; when it differs,
        blocks past the smaller size are dropped or left clean (only the common part is ever
        resynced, as with DRBD's agreed size), so memory is bounded by our own size whatever
        the peer claims. Raises RemoteProtocolError naming the field on any inconsistency
        (wrong size, runs past the end, truncated varint, stray bits past nbits, extra bytes).
        """
        bm = cls(data_size)
        peer_bits = bm.nbits if peer_data_size is None else bits_for(peer_data_size)
        if len(data) < _ENC_HEADER.size:
            raise RemoteProtocolError(f"bitmap: truncated header: {len(data)} bytes")
        kind, nbits = _ENC_HEADER.unpack_from(data)
        if nbits != peer_bits:
            raise RemoteProtocolError(f"bitmap: nbits mismatch: peer {nbits}, expected {peer_bits}")
        keep = min(nbits, bm.nbits)
        body = memoryview(data)[_ENC_HEADER.size:]
        if kind == ENC_PLAIN:
            plain_len = -(-nbits // 8)
            if len(body) != plain_len:
                raise RemoteProtocolError(f"bitmap: plain body length {len(body)}, "
                                          f"expected {plain_len}")
            if nbits & 7 and body[-1] >> (nbits & 7):
                raise RemoteProtocolError("bitmap: bits set past the end of the device")
            whole = keep // 8
            bm._mv[:whole] = body[:whole]
            for i in range(whole * 8, keep):
                if body[i >> 3] >> (i & 7) & 1:
                    bm._set1(i, True)
            return bm
        if kind != ENC_RLE:
            raise RemoteProtocolError(f"bitmap: unknown encoding kind: {kind}")
        if len(body) > max_encoded_size(nbits):
            raise RemoteProtocolError(f"bitmap: RLE body too long: {len(body)} bytes")
        pos, i, dirty = 0, 0, False
        while i < len(body):
            run, i = _get_varint(body, i)
            if run > nbits - pos:
                raise RemoteProtocolError(f"bitmap: run length past the end: bit {pos} + {run} "
                                          f"> nbits {nbits}")
            if dirty and run and pos < keep:
                bm.set_bits(pos, min(keep, pos + run))
            pos += run
            dirty = not dirty
        if pos != nbits:
            raise RemoteProtocolError(f"bitmap: runs cover {pos} bits, expected {nbits}")
        return bm


def _put_varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)


def _get_varint(buf, i: int) -> tuple[int, int]:
    v, shift = 0, 0
    while True:
        if i >= len(buf):
            raise RemoteProtocolError("bitmap: truncated run-length varint")
        b = buf[i]
        i += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, i
        shift += 7
        if shift > 63:
            raise RemoteProtocolError("bitmap: run-length varint longer than 64 bits")
