# SPDX-License-Identifier: GPL-2.0-or-later
"""On-disk metadata: superblock (UUIDs, flags), dirty bitmap and activity log, crash-safe.

Owns: `create_md`/`open_md` and `Metadata` (superblock updates, bitmap load/store,
activity-log transactions, the online resize move): the I/O and its ordering. The format
itself (sizes, placement, record codecs) is replica.metadata_layout, re-exported here;
`dump-md` output is replica.metadata_dump. All I/O is os.pread/os.pwrite + os.fsync on file
descriptors (a plain file or a block device).


Crash safety (a write torn at any byte leaves the old or the new state readable):
- Superblock: two 4 KiB slots written alternately; each carries a generation counter and a
  checksum; readers take the valid slot with the highest generation. A torn write can only
  damage the slot being written, whose previous content was the older generation.
- Activity log: a ring of `al_tx_count` transactions, each listing every extent hot at that
  moment (4 MiB extents, DRBD's unit), with a sequence number and checksum. An extent enters
  the AL (transaction written and fsynced) before the first write to it; before an extent leaves
  it, the bitmap pages covering it are written and fsynced. Replay marks the union of the two
  newest valid transactions dirty, so a torn newest transaction falls back to its predecessor,
  which covers every extent any completed write could have touched.
- Clean shutdown (DRBD's "clean" flag): bitmap stored, an empty AL transaction, then the
  superblock flag AL_CLEAN; the first extent to enter the AL clears the flag before its
  transaction. Open replays the AL only without AL_CLEAN (a crash), so a clean stop resyncs
  what the bitmap says and no more.
- Bitmap pages: 4064 payload bytes + index + checksum per 4 KiB page. A page that fails its
  checksum reads back as all dirty (more resync, never less); its extents are also in the AL.
"""
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from replica import mirror
from replica.bitmap import BLOCK_SIZE, Bitmap, growable_buffer
from replica.metadata_layout import _SB as _SB  # tests tear superblock writes at its size
from replica.metadata_layout import (
    AL_EXTENT_SIZE,
    AL_EXTENTS_DEFAULT,
    AL_EXTENTS_MAX,
    AL_EXTENTS_MIN,
    AL_TX_COUNT,
    BM_PAYLOAD,
    CSUM,
    MD_VERSION,
    PAGE,
    SB_SLOTS,
    SECTOR,
    MetadataError,
    Superblock,
    _layout,
    bm_pages_for,
    data_size_for,
    md_size_for,
    pack_al_tx,
    pack_bm_page,
    unpack_al_tx,
    unpack_bm_page,
)
from replica.roles import AttachInfo
from replica.uuids import UUID_JUST_CREATED, GenerationUuids, MdFlag, UuidFlag

# the format's names stay importable from here (replica.metadata_layout defines them)
__all__ = ["AL_EXTENT_SIZE", "AL_EXTENTS_DEFAULT", "AL_EXTENTS_MAX", "AL_EXTENTS_MIN", "AL_TX_COUNT",
           "BM_PAYLOAD", "CSUM", "MD_VERSION", "PAGE", "SB_SLOTS", "SECTOR", "Metadata",
           "MetadataError", "MetadataExists", "Superblock", "bm_pages_for", "create_md",
           "data_size_for", "md_size_for", "open_md"]



class MetadataExists(MetadataError):
    """create-md found valid metadata and was not forced (drbdmeta asks before overwriting)."""


def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _open(path_or_fd, create: bool = False) -> tuple[int, bool, str]:
    if isinstance(path_or_fd, int):
        return path_or_fd, False, f"fd {path_or_fd}"
    path = os.fspath(path_or_fd)
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o600), True, path
    except OSError as e:
        raise MetadataError(f"open-md: {path}: {e.strerror}") from None


def _pread_exact(fd: int, n: int, off: int) -> bytes:
    data = os.pread(fd, n, off)
    return data + bytes(n - len(data))        # past EOF of a sparse/short file reads as zeros


def _read_sb_slots(fd: int, sb_abs: int) -> Superblock | None:
    best = None
    for slot in range(SB_SLOTS):
        sb = Superblock.unpack(_pread_exact(fd, PAGE, sb_abs + slot * PAGE))
        if sb is not None and (best is None or sb.generation > best.generation):
            best = sb
    return best


def _find_sb(fd: int, external: bool) -> Superblock | None:
    if external:
        return _read_sb_slots(fd, 0)
    end = _device_size(fd)
    if end < SB_SLOTS * PAGE:
        return None
    return _read_sb_slots(fd, end - SB_SLOTS * PAGE)


class Metadata:
    """An open metadata area: superblock, in-memory bitmap and activity log.

    Not thread-safe; the daemon owns one per resource. `bitmap.buffer` is what the C data
    path sets bits in.
    """

    def __init__(self, fd: int, own_fd: bool, name: str, sb: Superblock, md_start: int,
                 growable: bool = False):
        self.fd, self._own_fd, self.name = fd, own_fd, name
        self.sb = sb
        self.md_start = md_start
        # growable: the bitmap's words have room to grow online (replica.resize)
        self.bitmap = Bitmap(sb.data_size, growable_buffer(max(mirror.GROW_MAX, sb.data_size),
                                                           sb.data_size) if growable else None)
        self.torn_bitmap_pages: list[int] = []
        self._bm_page_csum: dict[int, bytes] = {}     # page -> checksum of what is on disk
        self._al_hot: OrderedDict[int, None] = OrderedDict()   # hot extents, least recent first
        self._al_seq = 0
        self._al_slot_seq: list[int] = []
        self.al_writes = 0
        self.bm_writes = 0
        self.crashed_primary = False

    # --- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_fd and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def uuids(self) -> GenerationUuids:
        return self.sb.uuids

    @property
    def flags(self) -> MdFlag:
        return self.sb.flags

    def attach_info(self) -> AttachInfo:
        """What `attach` derives from the flags (roles.request(..., Request.ATTACH))."""
        f = self.sb.flags
        return AttachInfo(consistent=MdFlag.CONSISTENT in f,
                          was_up_to_date=MdFlag.WAS_UP_TO_DATE in f,
                          peer_outdated=MdFlag.PEER_OUT_DATED in f,
                          was_connected=MdFlag.CONNECTED_IND in f)

    def uuid_flags(self, *, discard_my_data: bool = False) -> UuidFlag:
        """The flags our HELLO carries with the UUIDs (DRBD P_UUIDS uuid_flags)."""
        out = UuidFlag(0)
        if discard_my_data:
            out |= UuidFlag.DISCARD_MY_DATA
        if MdFlag.CRASHED_PRIMARY in self.sb.flags:
            out |= UuidFlag.CRASHED_PRIMARY
        if MdFlag.CONSISTENT not in self.sb.flags:
            out |= UuidFlag.INCONSISTENT
        return out

    def note_crash_on_open(self) -> bool:
        """PRIMARY_IND still set at open: we were Primary and did not demote cleanly.

        As DRBD's attach does, remember it as CRASHED_PRIMARY (persisted until the caller
        clears it after the next completed resync). Returns True if it was a crashed Primary.
        """
        if MdFlag.PRIMARY_IND not in self.sb.flags:
            return False
        if MdFlag.CRASHED_PRIMARY not in self.sb.flags:
            self.set_flags(set_=MdFlag.CRASHED_PRIMARY)
        return True

    # --- superblock -------------------------------------------------------------------------

    def write_superblock(self, **changes) -> Superblock:
        """Replace fields (uuids=, flags=, ...) and persist: next slot, generation + 1, fsync."""
        sb = replace(self.sb, generation=self.sb.generation + 1, **changes)
        slot = sb.generation % SB_SLOTS
        buf = sb.pack()
        os.pwrite(self.fd, buf + bytes(PAGE - len(buf)),
                  self.md_start + sb.sb_offset + slot * PAGE)
        os.fsync(self.fd)
        self.sb = sb
        return sb

    def set_flags(self, set_: MdFlag = MdFlag(0), clear: MdFlag = MdFlag(0)) -> Superblock:
        return self.write_superblock(flags=(self.sb.flags | set_) & ~clear)

    # --- bitmap -----------------------------------------------------------------------------

    def _bm_page_offset(self, page: int) -> int:
        return self.md_start + self.sb.bm_offset + page * PAGE

    def _pack_bm_page(self, page: int) -> bytes:
        mv = memoryview(self.bitmap.buffer).cast("B")
        lo = page * BM_PAYLOAD
        return pack_bm_page(bytes(mv[lo:lo + BM_PAYLOAD]), page)

    def load_bitmap(self) -> Bitmap:
        """Read every bitmap page; a page failing its checksum becomes all dirty."""
        mv = memoryview(self.bitmap.buffer).cast("B")
        self.torn_bitmap_pages = []
        nbytes = len(mv)
        for page in range(self.sb.bm_pages):
            raw = _pread_exact(self.fd, PAGE, self._bm_page_offset(page))
            payload = unpack_bm_page(raw, page)
            lo = page * BM_PAYLOAD
            hi = min(nbytes, lo + BM_PAYLOAD)
            if hi <= lo:
                continue
            if payload is not None:
                mv[lo:hi] = payload[:hi - lo]
                self._bm_page_csum[page] = raw[-CSUM:]
            else:
                self.torn_bitmap_pages.append(page)
                first = lo * 8
                self.bitmap.set_bits(first, min(self.bitmap.nbits, hi * 8))
        return self.bitmap

    def store_bitmap(self, offset: int = 0, length: int | None = None, *,
                     changed_only: bool = False) -> int:
        """Write the bitmap pages covering data bytes [offset, offset+length) and fsync.

        Returns the number of pages written. Without arguments, writes all pages.
        `changed_only`: skip pages equal to what this object last read or wrote there (the
        periodic store during a resync rewrites only what the resync changed).
        """
        if length is None:
            pages = range(self.sb.bm_pages)
        else:
            if length <= 0:
                return 0
            first_bit = offset // BLOCK_SIZE
            last_bit = (offset + length - 1) // BLOCK_SIZE
            bits_per_page = BM_PAYLOAD * 8
            pages = range(first_bit // bits_per_page,
                          min(self.sb.bm_pages, last_bit // bits_per_page + 1))
        written = 0
        for page in pages:
            raw = self._pack_bm_page(page)
            csum = raw[-CSUM:]
            if changed_only and self._bm_page_csum.get(page) == csum:
                continue
            os.pwrite(self.fd, raw, self._bm_page_offset(page))
            self._bm_page_csum[page] = csum
            written += 1
        if written or not changed_only:
            os.fsync(self.fd)
        self.bm_writes += written
        return written

    # --- activity log -----------------------------------------------------------------------

    def _al_slot_offset(self, slot: int) -> int:
        return self.md_start + self.sb.al_offset + slot * self.sb.al_tx_size

    def _read_al(self) -> list[tuple[int, list[int]]]:
        """Valid transactions as (seq, extents), newest first."""
        found = []
        for slot in range(self.sb.al_tx_count):
            raw = _pread_exact(self.fd, self.sb.al_tx_size, self._al_slot_offset(slot))
            tx = unpack_al_tx(raw, self.sb.al_extents)
            if tx is not None:
                found.append(tx)
        found.sort(reverse=True)
        return found

    def al_replay_extents(self) -> set[int]:
        """Extents that may hold writes not reflected in the on-disk bitmap (union of the
        two newest valid transactions)."""
        txs = self._read_al()
        self._al_seq = txs[0][0] if txs else 0
        out: set[int] = set()
        for _seq, ext in txs[:2]:
            out.update(ext)
        return out

    @property
    def al_clean(self) -> bool:
        """The last shutdown was clean: bitmap stored, then the AL emptied (AL_CLEAN)."""
        return MdFlag.AL_CLEAN in self.sb.flags

    def apply_al(self) -> int:
        """drbdmeta apply-al: mark replayed AL extents dirty, persist, start an empty AL.

        Returns the number of extents applied. Called on attach/open. After a clean shutdown
        there is nothing to apply: the bitmap on disk is complete (DRBD's "clean" flag). The
        replay must not run then, since it also takes the transaction before the newest, which
        still lists the extents that were hot before the shutdown emptied the AL.
        """
        logged = self.al_replay_extents()              # also finds the sequence number
        extents = set() if self.al_clean else logged
        for e in sorted(extents):
            off = e * AL_EXTENT_SIZE
            if off >= self.sb.data_size:
                continue
            self.bitmap.set_range(off, min(AL_EXTENT_SIZE, self.sb.data_size - off))
        if extents:
            self.store_bitmap()
        self._al_hot.clear()
        self._write_al_tx()
        return len(extents)

    def _write_al_tx(self) -> None:
        self._al_seq += 1
        buf = pack_al_tx(self._al_seq, list(self._al_hot))
        slot = self._al_seq % self.sb.al_tx_count
        os.pwrite(self.fd, buf + bytes(self.sb.al_tx_size - len(buf)),
                  self._al_slot_offset(slot))
        os.fsync(self.fd)
        self.al_writes += 1

    @staticmethod
    def extents_for(offset: int, length: int) -> range:
        """AL extents (4 MiB) touched by a write of `length` bytes at `offset`."""
        if length <= 0:
            return range(0)
        return range(offset // AL_EXTENT_SIZE, (offset + length - 1) // AL_EXTENT_SIZE + 1)

    def al_make_hot(self, extent: int, *, can_evict: Callable[[int], bool]) -> int | None:
        """Make `extent` hot; the C engine counts the writes in flight to each extent.

        `can_evict(e)` must return True only for an extent the C engine has already marked
        cold (rm_al_set_hot(e, 0)) and that has no write in flight: its bitmap pages are
        written before the transaction that drops it. Returns the evicted extent (None if
        there was room), for the log and for the engine. Raises MetadataError if nothing can
        be evicted.
        """
        if extent in self._al_hot:
            self._check_extent(extent)
            self._al_hot.move_to_end(extent)
            return None
        return self._activate(extent, can_evict)

    def al_victim(self, extent: int) -> int | None:
        """The extent al_make_hot(extent) would evict first (the least recently used), or None
        when `extent` is hot already or the AL has room: the caller drains it beforehand."""
        if extent in self._al_hot or len(self._al_hot) < self.sb.al_extents:
            return None
        return next(iter(self._al_hot))

    @staticmethod
    def _check_extent(extent: int) -> None:
        if not 0 <= extent < 2**32:
            raise ValueError(f"activity log: extent out of range: {extent}")

    def _activate(self, extent: int, evictable: Callable[[int], bool]) -> int | None:
        self._check_extent(extent)
        victim = None
        if len(self._al_hot) >= self.sb.al_extents:
            victim = next((e for e in self._al_hot if evictable(e)), None)
            if victim is None:
                raise MetadataError(f"activity log: {self.name}: all {self.sb.al_extents} "
                                    "extents have I/O in flight")
            off = victim * AL_EXTENT_SIZE
            if off < self.sb.data_size:
                self.store_bitmap(off, min(AL_EXTENT_SIZE, self.sb.data_size - off))
            del self._al_hot[victim]
        if MdFlag.AL_CLEAN in self.sb.flags:
            # not clean from before the first write the transaction below allows: a crash
            # after it must apply the AL
            self.set_flags(clear=MdFlag.AL_CLEAN)
        self._al_hot[extent] = None
        self._write_al_tx()
        return victim

    @property
    def al_hot(self) -> list[int]:
        return list(self._al_hot)

    # --- resize ------------------------------------------------------------------------------

    def max_data_size(self, backing_size: int) -> int:
        """The largest data size a backing device of `backing_size` bytes holds (internal
        metadata at its end, which is where it must be for that device size)."""
        if self.sb.meta_external:
            return backing_size // PAGE * PAGE
        return data_size_for(backing_size, self.sb.al_extents)

    def resize(self, bitmap: Bitmap) -> None:
        """Make `bitmap` (this bitmap resized(), bits of a new area already set or not) the
        metadata's, for data size bitmap.data_size: crash-safe at every write.

        In place when the layout still fits where it is (a shrink, a grow back, external
        metadata: bitmap pages written first, then the superblock). Internal metadata on a
        grown device moves to the new end (drbd-reference 1.4: it lives at the end):

            1. the "stretched" superblock: the old bitmap and AL where they are, its two slots at
               the new end (md_size reaching from the old start to the new end) -- from here an
               open at the device end finds valid metadata for the old size
            2. the new bitmap and AL in the new area (which must not overlap the old one)
            3. the new superblock (generation + 1, the other slot): the new size
            4. the old area zeroed (it is data now: zeros on both nodes, as a grown file reads)

        A crash before 1 leaves the old metadata where open_md no longer looks: the same as a
        device grown while down (open_md names it). A torn write in 1 or 3 leaves the other slot.
        """
        new_size = bitmap.data_size
        pages = bm_pages_for(new_size)
        backing = _device_size(self.fd)
        old_end = self.md_start + self.sb.md_size
        if self.sb.meta_external:
            self._resize_external(bitmap, pages)
            return
        if backing < old_end:
            raise MetadataError(f"resize: {self.name}: the device is smaller ({backing} bytes) "
                                f"than its metadata's end ({old_end})")
        if backing == old_end and pages <= self.sb.bm_pages:
            if new_size > self.md_start:
                raise MetadataError(f"resize: {self.name}: {new_size} data bytes do not fit "
                                    f"before the metadata at {self.md_start}")
            self.bitmap = bitmap
            self.store_bitmap()
            self.write_superblock(data_size=new_size)
            return
        lay = _layout(new_size, self.sb.al_extents, False)
        new_start = backing - lay["md_size"]
        if new_size > new_start:
            raise MetadataError(f"resize: {self.name}: {new_size} data bytes and "
                                f"{lay['md_size']} bytes of metadata do not fit in {backing}")
        if new_start < old_end:
            raise MetadataError(
                f"resize: {self.name}: the device grew by {backing - old_end} bytes; moving the "
                f"internal metadata needs at least {old_end - self.md_start + lay['md_size']} "
                "more (grow it further)")
        old_start, old_md_size = self.md_start, self.sb.md_size
        gen = self.sb.generation
        # 1. the stretched superblock (after zeroing the slot it does not use: a stale
        #    superblock there from the device's earlier life must not win)
        os.pwrite(self.fd, bytes(PAGE), backing - SB_SLOTS * PAGE + ((gen + 2) % SB_SLOTS) * PAGE)
        os.fsync(self.fd)
        self.write_superblock(md_size=backing - old_start,
                              sb_offset=backing - SB_SLOTS * PAGE - old_start)
        # 2. the new bitmap and an AL with the extents hot now
        self.bitmap = bitmap
        for page in range(pages):
            os.pwrite(self.fd, self._pack_bm_page(page), new_start + lay["bm_offset"] + page * PAGE)
        os.pwrite(self.fd, bytes(AL_TX_COUNT * lay["al_tx_size"]), new_start + lay["al_offset"])
        os.fsync(self.fd)
        stretched = self.sb
        self.md_start = new_start
        self.sb = replace(stretched, md_size=lay["md_size"], bm_pages=pages,
                          bm_offset=lay["bm_offset"], al_offset=lay["al_offset"],
                          sb_offset=lay["sb_offset"], al_tx_size=lay["al_tx_size"])
        self._bm_page_csum.clear()
        self._write_al_tx()
        # 3. the new superblock
        self.write_superblock(data_size=new_size)
        # 4. the old area is data now
        os.pwrite(self.fd, bytes(old_md_size), old_start)
        os.fsync(self.fd)
        self.store_bitmap()         # the checksums of what is on disk, for changed_only stores

    def _resize_external(self, bitmap: Bitmap, pages: int) -> None:
        lay = _layout(bitmap.data_size, self.sb.al_extents, True)
        if pages > self.sb.bm_pages and _device_size(self.fd) < self.md_start + lay["md_size"]:
            os.ftruncate(self.fd, self.md_start + lay["md_size"])
        self.bitmap = bitmap
        if pages > self.sb.bm_pages:
            self.sb = replace(self.sb, bm_pages=pages)     # written by the superblock below
            self.store_bitmap()
            self.write_superblock(data_size=bitmap.data_size, md_size=lay["md_size"])
        else:
            self.store_bitmap()
            self.write_superblock(data_size=bitmap.data_size)

    def clean_shutdown(self) -> None:
        """Persist the bitmap, empty the AL and mark it clean (drbdadm down/detach, the
        daemon's SIGTERM). In this order: a crash at any point leaves AL_CLEAN unset and the
        next open applies the AL; after it the next open trusts the bitmap alone."""
        self.store_bitmap()
        self._al_hot.clear()
        self._write_al_tx()
        self.set_flags(set_=MdFlag.AL_CLEAN)


def create_md(backing, meta: str = "internal", *, al_extents: int = AL_EXTENTS_DEFAULT,
              data_size: int | None = None, force: bool = False,
              device_uuid: int | None = None) -> Metadata:
    """drbdmeta create-md: initialise metadata for `backing` (path or fd) and open it.

    `meta` is "internal" or the path of the external metadata file/device. Refuses to
    overwrite valid metadata unless `force` (MetadataExists). The new superblock has
    current UUID JUST_CREATED and no flags but AL_CLEAN; the bitmap is all clean.
    """
    if not AL_EXTENTS_MIN <= al_extents <= AL_EXTENTS_MAX:
        raise MetadataError(f"create-md: al-extents {al_extents} outside "
                            f"{AL_EXTENTS_MIN}..{AL_EXTENTS_MAX}")
    external = meta != "internal"
    bfd, own_b, bname = _open(backing)
    mfd, own_m, mname = bfd, own_b, bname
    try:
        backing_size = _device_size(bfd)
        if external:
            mfd, own_m, mname = _open(meta, create=True)
            size = backing_size if data_size is None else data_size
            if size > backing_size:
                raise MetadataError(f"create-md: {bname}: data size {size} exceeds the "
                                    f"device ({backing_size} bytes)")
            size = size // PAGE * PAGE
        else:
            size = data_size_for(backing_size, al_extents) if data_size is None else data_size
            if size % PAGE or size + md_size_for(size, al_extents) > backing_size:
                raise MetadataError(f"create-md: {bname}: data size {size} with internal "
                                    f"metadata does not fit in {backing_size} bytes")
        old = _find_sb(mfd, external)
        if old is not None and not force:
            raise MetadataExists(f"create-md: {mname}: valid metadata found (current UUID "
                                 f"{old.uuids.current:016X}, data size {old.data_size}): "
                                 "use force to overwrite it")
        lay = _layout(size, al_extents, external)
        start = 0 if external else backing_size - lay["md_size"]
        if external and _device_size(mfd) < lay["md_size"]:
            os.ftruncate(mfd, lay["md_size"])
        if device_uuid is None:
            device_uuid = int.from_bytes(os.urandom(8), "big")
        sb = Superblock(size, lay["md_size"], GenerationUuids(UUID_JUST_CREATED),
                        MdFlag.AL_CLEAN, al_extents, lay["bm_pages"], external,
                        lay["bm_offset"], lay["al_offset"], lay["sb_offset"], device_uuid,
                        generation=0, al_tx_size=lay["al_tx_size"])
        zero_page = bytes(PAGE)
        for slot in range(SB_SLOTS):           # invalidate both slots first
            os.pwrite(mfd, zero_page, start + sb.sb_offset + slot * PAGE)
        os.pwrite(mfd, bytes(AL_TX_COUNT * sb.al_tx_size), start + sb.al_offset)
        md = Metadata(mfd, own_m, mname, sb, start)
        md.store_bitmap()
        md._write_al_tx()
        md.write_superblock()
    except BaseException:
        for fd, own in {(bfd, own_b), (mfd, own_m)}:
            if own:
                os.close(fd)
        raise
    if external and own_b:
        os.close(bfd)
    return md


def open_md(backing, meta: str = "internal", *, apply_al: bool = True,
            growable: bool = False) -> Metadata:
    """Open existing metadata (the newest valid superblock), load the bitmap, and replay the
    AL unless the last shutdown was clean. `growable`: room for an online resize."""
    external = meta != "internal"
    target = meta if external else backing
    fd, own, name = _open(target)
    try:
        sb = _find_sb(fd, external)
        if sb is None:
            raise MetadataError(f"open-md: {name}: no valid metadata found (run create-md; "
                                "after growing an internal-metadata device, move it first)")
        if sb.meta_external != external:
            raise MetadataError(f"open-md: {name}: metadata is "
                                f"{'external' if sb.meta_external else 'internal'}, "
                                f"configured meta-disk {meta}")
        start = 0 if external else _device_size(fd) - sb.md_size
        md = Metadata(fd, own, name, sb, start, growable=growable)
    except BaseException:
        if own:
            os.close(fd)
        raise
    md.load_bitmap()
    if apply_al:
        md.apply_al()
    else:
        md.al_replay_extents()
    md.crashed_primary = md.note_crash_on_open()
    return md
