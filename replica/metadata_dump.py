# SPDX-License-Identifier: GPL-2.0-or-later
"""`dump-md`: an open Metadata as JSON-ready data (`dump_md`) and as drbdmeta-style text.

Owns the output formats only; it reads `Metadata` (replica.metadata) and never writes.
"""
from replica.bitmap import BLOCK_SIZE, buffer_bytes_for
from replica.metadata import MD_VERSION, SECTOR, Metadata
from replica.uuids import MdFlag


def _hex(u: int) -> str:
    return f"0x{u:016X}"


def dump_md(md: Metadata) -> dict:
    """Everything `dump-md --json` prints (offsets in bytes, sizes also in sectors)."""
    sb = md.sb
    return {
        "version": "v08",
        "format": f"replica-md{MD_VERSION}",
        "generation": sb.generation,
        "meta_disk": "external" if sb.meta_external else "internal",
        "md_size_sect": sb.md_size // SECTOR,
        "md_offset": md.md_start + sb.sb_offset,
        "al_offset": md.md_start + sb.al_offset,
        "bm_offset": md.md_start + sb.bm_offset,
        "uuid": {"current": _hex(sb.uuids.current), "bitmap": _hex(sb.uuids.bitmap),
                 "history": [_hex(h) for h in sb.uuids.history]},
        "flags": int(sb.flags),
        "flag_names": [(f.name or "").lower().replace("_", "-") for f in MdFlag
                       if f in sb.flags],
        "al_extents": sb.al_extents,
        "al_hot": sorted(md.al_hot),
        "la_size_sect": sb.data_size // SECTOR,
        "data_size": sb.data_size,
        "bm_byte_per_bit": sb.bm_bytes_per_bit,
        "device_uuid": _hex(sb.device_uuid),
        "bm_bytes": buffer_bytes_for(md.bitmap.nbits),
        "bits_set": md.bitmap.count(),
    }


def format_dump_md(md: Metadata) -> str:
    """Text in drbdmeta's `dump-md` layout (v08 style), parseable by eye and by diff."""
    d = dump_md(md)
    u = md.sb.uuids
    lines = [
        f'version "{d["version"]}";', "",
        f"# format {d['format']} generation {d['generation']} meta-disk {d['meta_disk']}",
        f"# md_size_sect {d['md_size_sect']}",
        f"# md_offset {d['md_offset']}",
        f"# al_offset {d['al_offset']}",
        f"# bm_offset {d['bm_offset']}", "",
        "uuid {",
        "    " + " ".join(f"{_hex(x)};" for x in (u.current, u.bitmap, *u.history)),
        f"    flags 0x{d['flags']:08X};" + (f" # {', '.join(d['flag_names'])}"
                                            if d["flag_names"] else ""),
        "}",
        f"# al-extents {d['al_extents']};",
        f"la-size-sect {d['la_size_sect']};",
        f"bm-byte-per-bit {d['bm_byte_per_bit']};",
        f"device-uuid {d['device_uuid']};",
        f"# bm-bytes {d['bm_bytes']};",
        f"# bits-set {d['bits_set']};",
        "bm {",
    ]
    words = memoryview(md.bitmap.buffer).cast("B")[:d["bm_bytes"]]
    i, n = 0, d["bm_bytes"] // 8
    while i < n:
        if i % 4096 == 0 or i == 0:
            lines.append(f"   # at {i * 64 * BLOCK_SIZE // 1024}kB")
        w = bytes(words[i * 8:i * 8 + 8])
        j = i + 1
        while j < n and j % 4096 and bytes(words[j * 8:j * 8 + 8]) == w:
            j += 1
        val = f"0x{int.from_bytes(w, 'little'):016X};"
        lines.append(f"   {j - i} times {val}" if j - i > 1 else f"   {val}")
        i = j
    lines.append("}")
    return "\n".join(lines) + "\n"

