# SPDX-License-Identifier: GPL-2.0-or-later
"""The only importer of replica._mirror: wraps each rm_* call of csrc/mirror.h.

Arguments are checked here, buffers go in with ffi.from_buffer (no copy), and a negative return
becomes an OSError with context. cffi releases the GIL around every C call, so a thread blocked
in serve_nbd() does not hold up the rest of the daemon.
"""
import errno
import os
from dataclasses import dataclass

from replica._mirror import ffi, lib

# Limits and layouts shared with C: read from the compiled contract (csrc/mirror.h), never copied.
MAX_REQUEST = lib.RM_MAX_REQUEST
BLOCK_SIZE = lib.RM_BLOCK_SIZE                  # one bitmap bit
AL_EXTENT_SIZE = lib.RM_AL_EXTENT_SIZE          # one activity-log extent
GROW_MAX = lib.RM_GROW_MAX                      # how far an engine may grow online
MAX_RESYNC_CHUNK = lib.RM_MAX_RESYNC_CHUNK      # largest resync_send() length
MAX_CONTROL_PAYLOAD = lib.RM_MAX_CONTROL_PAYLOAD
MAX_CONTROL_FRAME = lib.RM_MAX_CONTROL_FRAME    # header + largest control payload

END_REASONS = {
    lib.RM_END_DISC: "disconnect requested",
    lib.RM_END_EOF: "client closed the connection",
    lib.RM_END_SHUTDOWN: "resource going down",
    lib.RM_END_PROTOCOL: "protocol error",
    lib.RM_END_SOCKET: "socket error",
}

STAT_FIELDS = tuple(name for name, _ in ffi.typeof("rm_stats").fields)
# array fields (the ack latency histogram): read as lists of ints
STAT_ARRAYS = frozenset(name for name, f in ffi.typeof("rm_stats").fields if f.type.kind == "array")
ACK_LATENCY_BUCKETS = lib.RM_ACK_LATENCY_BUCKETS
FUSE_STAT_FIELDS = tuple(name for name, _ in ffi.typeof("rm_fuse_stats").fields)

PROTOCOLS = {"A": lib.RM_PROTOCOL_A, "B": lib.RM_PROTOCOL_B, "C": lib.RM_PROTOCOL_C}

EVENT_NAMES = {
    lib.RM_EV_PEER_LOST: "peer_lost",
    lib.RM_EV_IO_ERROR: "io_error",
    lib.RM_EV_AL_MISS: "al_miss",
    lib.RM_EV_PEER_PROTOCOL: "peer_protocol",
    lib.RM_EV_PEER_CONTROL: "peer_control",
    lib.RM_EV_OVERFLOW: "overflow",
    lib.RM_EV_VERIFY_OOS: "verify_oos",
    lib.RM_EV_INTEGRITY: "integrity",
}
# verify-alg / data-integrity-alg: the kernel crypto names DRBD accepts that C computes
# (crc32c itself, the hashes through libcrypto); the numbers travel on the wire.
DIGESTS = {
    "crc32c": lib.RM_DIGEST_CRC32C, "md5": lib.RM_DIGEST_MD5, "sha1": lib.RM_DIGEST_SHA1,
    "sha224": lib.RM_DIGEST_SHA224, "sha256": lib.RM_DIGEST_SHA256,
    "sha384": lib.RM_DIGEST_SHA384, "sha512": lib.RM_DIGEST_SHA512,
    "sha3-224": lib.RM_DIGEST_SHA3_224, "sha3-256": lib.RM_DIGEST_SHA3_256,
    "sha3-384": lib.RM_DIGEST_SHA3_384, "sha3-512": lib.RM_DIGEST_SHA3_512,
}
MAX_VERIFY_CHUNK = lib.RM_MAX_VERIFY_CHUNK      # largest verify_send() length


def digest_id(name: str) -> int | None:
    """The RM_DIGEST_* number of a verify-alg/data-integrity-alg name, None if C lacks it."""
    alg = DIGESTS.get(name)
    return alg if alg is not None and lib.rm_digest_size(alg) > 0 else None


def digest(name: str, data) -> bytes:
    """One digest as C computes it (test vectors; crc32c is the kernel's: ~crc, little endian)."""
    alg = digest_id(name)
    if alg is None:
        raise ValueError(f"mirror: digest: unknown algorithm {name!r}")
    out = ffi.new("unsigned char[]", lib.RM_DIGEST_MAX_SIZE)
    n = _check(lib.rm_digest(alg, ffi.from_buffer(data), len(data), out), f"digest {name}")
    return bytes(ffi.buffer(out, n))

# disk { on-io-error }: what C does with the request that failed (the rest is Python's)
ON_IO_ERROR_MODES = {"pass_on": lib.RM_ON_IO_ERROR_PASS_ON,
                     "fail_over": lib.RM_ON_IO_ERROR_FAIL_OVER}


class TlsError(ConnectionError):
    """A TLS context could not be built or a handshake failed: the message is C's one-line reason
    ("certificate verify failed: certificate has expired", "handshake timed out after 5000 ms")."""


TLS_ERRLEN = 512


class TlsContext:
    """TLS settings (OpenSSL's SSL_CTX in csrc/tls.c): our certificate and key, the CA to check the
    peer's against, or a psk file ("identity:hexkey" lines, psktool's format). `verify_peer`
    demands the peer's certificate and verifies it against `cafile` (mutual authentication)."""

    def __init__(self, *, server: bool, certfile: str | None = None, keyfile: str | None = None,
                 cafile: str | None = None, verify_peer: bool = False, psk_file: str | None = None,
                 psk_identity: str | None = None):
        self._handle = None
        err = ffi.new("char[]", TLS_ERRLEN)
        handle = lib.rm_tls_ctx_new(int(server), _cstr(certfile), _cstr(keyfile), _cstr(cafile), int(verify_peer),
                                    _cstr(psk_file), _cstr(psk_identity), err, TLS_ERRLEN)
        if handle == ffi.NULL:
            raise TlsError(f"tls: {ffi.string(err).decode(errors='replace')}")
        self._handle = handle
        self.server = server

    def handshake(self, fd: int, timeout_s: float, expected_name: str | None = None) -> "TlsSession":
        return TlsSession.handshake(self, fd, timeout_s, expected_name)

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            lib.rm_tls_ctx_free(handle)

    def __del__(self):
        self.close()


def _cstr(value: str | None):
    return ffi.NULL if value is None else value.encode()


class TlsSession:
    """One TLS session on a connected socket's fd (the fd stays the caller's). Python may read and
    write whole messages with it (the rest of a handshake), then hand it to C (Engine.peer_attach
    with tls=...). close() sends close_notify and restores the fd's flags: call it after C let go
    (peer_detach) and before closing the socket."""

    def __init__(self, context: TlsContext, handle, fd: int):
        self._context = context          # the SSL_CTX outlives its sessions
        self._handle = handle
        self.fd = fd

    @classmethod
    def handshake(cls, context: TlsContext, fd: int, timeout_s: float,
                  expected_name: str | None = None) -> "TlsSession":
        """Run the TLS handshake on fd (blocking, without the GIL); TlsError with C's reason."""
        if context._handle is None:
            raise ValueError("tls: handshake: the context is closed")
        err = ffi.new("char[]", TLS_ERRLEN)
        handle = lib.rm_tls_handshake(context._handle, fd, max(0, int(timeout_s * 1000)), _cstr(expected_name),
                                      err, TLS_ERRLEN)
        if handle == ffi.NULL:
            raise TlsError(f"tls: {ffi.string(err).decode(errors='replace')}")
        return cls(context, handle, fd)

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError("tls: the session is closed")
        return self._handle

    def describe(self) -> str:
        """"TLSv1.3 TLS_AES_256_GCM_SHA384 peer /CN=beta": protocol, cipher, peer."""
        out = ffi.new("char[]", 512)
        lib.rm_tls_describe(self.handle, out, 512)
        return ffi.string(out).decode(errors="replace")

    def error(self) -> str:
        """Why the session failed after its handshake ("" if it has not): with TLS 1.3 a client
        learns that the server refused its certificate only here, on its first read."""
        out = ffi.new("char[]", 256)
        lib.rm_tls_error(self.handle, out, 256)
        return ffi.string(out).decode(errors="replace")

    def _check_io(self, rc: int, what: str) -> None:
        if rc == -errno.EPROTO and (reason := self.error()):
            raise TlsError(f"tls: {reason}")
        _check(rc, what)

    def write_all(self, data) -> None:
        self._check_io(lib.rm_tls_write_all(self.handle, ffi.from_buffer(data), len(data)),
                       f"tls write: {len(data)} bytes")

    def read_exact(self, n: int, timeout_s: float | None = None) -> bytes:
        """Exactly n bytes; OSError ECONNRESET at EOF, ETIMEDOUT after timeout_s; TlsError with
        the reason when the peer sent an alert (error())."""
        buf = ffi.new("char[]", max(1, n))
        timeout_ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000))
        self._check_io(lib.rm_tls_read_exact(self.handle, buf, n, timeout_ms), f"tls read: {n} bytes")
        return ffi.buffer(buf, n)[:]

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            lib.rm_tls_close(handle)

    @property
    def closed(self) -> bool:
        return self._handle is None


def _check(rc, what):
    if rc < 0:
        raise OSError(-rc, f"mirror: {what}: {os.strerror(-rc)}")
    return rc


@dataclass(frozen=True, slots=True)
class MirrorEvent:
    """Something C tells Python: type is one of EVENT_NAMES' values."""
    type: str
    err: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ServeResult:
    """How one NBD connection ended: an RM_END_* code, its text, and an errno detail (0 if none)."""
    end: int
    reason: str
    errno: int

    @property
    def clean(self) -> bool:
        return self.end in (lib.RM_END_DISC, lib.RM_END_EOF, lib.RM_END_SHUTDOWN)


class FuseFile:
    """The resource as one file in a FUSE mount, served by C worker threads (csrc/fuse_frontend.c)
    through the request layer. Made by Engine.serve_fuse(); stop() unmounts (lazily) and ends
    the FUSE connection: whoever still holds the file gets errors from then on."""

    def __init__(self, engine: "Engine", handle, path: str):
        self._engine = engine
        self._handle = handle
        self.path = path

    def stop(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            self._engine._fuse_files.discard(self)
            lib.rm_fuse_stop(handle)

    @property
    def running(self) -> bool:
        return self._handle is not None

    def set_size(self, size: int) -> None:
        """After Engine.resize: the file's new size (the kernel's cached attributes dropped)."""
        if self._handle is not None:
            _check(lib.rm_fuse_set_size(self._handle, size), f"fuse: {self.path}: set size {size}")

    def stats(self) -> dict:
        if self._handle is None:
            return {}
        out = ffi.new("rm_fuse_stats *")
        lib.rm_fuse_get_stats(self._handle, out)
        return {name: int(getattr(out, name)) for name in FUSE_STAT_FIELDS}


class Engine:
    """One resource's data path: the backing fd, its size, and every connection served on it."""

    def __init__(self, fd: int, size: int, read_only: bool = False):
        if size < 0:
            raise ValueError(f"mirror: engine: size must not be negative, got {size}")
        flags = lib.RM_ENGINE_READ_ONLY if read_only else 0
        handle = lib.rm_engine_new(fd, size, flags)
        if handle == ffi.NULL:
            raise OSError(ffi.errno, f"mirror: engine: cannot use fd {fd}: {os.strerror(ffi.errno)}")
        self._handle = handle
        self.size = size
        self._bitmap = None  # keeps the shared buffer alive while C holds a pointer into it
        self._bitmap_ref = None
        self._retired: list = []
        self._fuse_files: set[FuseFile] = set()

    def close(self) -> None:
        for fuse_file in list(self._fuse_files):
            fuse_file.stop()   # its workers use the engine
        if self._handle is not None:
            lib.rm_engine_free(self._handle)  # detaches a peer link first
            self._handle = None
            self._bitmap = self._bitmap_ref = None

    def set_read_only(self, read_only: bool) -> None:
        lib.rm_engine_set_read_only(self._handle, 1 if read_only else 0)

    def set_suspended(self, suspended: bool) -> None:
        """suspend-io / resume-io: new requests wait in C while suspended."""
        lib.rm_engine_set_suspended(self._handle, 1 if suspended else 0)

    def set_on_io_error(self, mode: str) -> None:
        """`pass_on`: a failed request fails, its blocks are marked out of sync. `fail_over`:
        the first local error takes the disk out of use (disk_failed()) and requests go to the
        peer from then on (see csrc/mirror.h)."""
        if mode not in ON_IO_ERROR_MODES:
            raise ValueError(f"mirror: on-io-error: expected one of "
                             f"{', '.join(ON_IO_ERROR_MODES)}, got {mode!r}")
        _check(lib.rm_engine_set_on_io_error(self._handle, ON_IO_ERROR_MODES[mode]),
               f"on-io-error {mode}")

    def disk_failed(self) -> bool:
        return bool(lib.rm_engine_disk_failed(self._handle))

    def set_disk_failed(self, failed: bool) -> None:
        lib.rm_engine_set_disk_failed(self._handle, 1 if failed else 0)

    def remote_writes(self) -> int:
        """Writes sent to the peer alone while the disk was out of use (monotonic)."""
        return int(lib.rm_engine_remote_writes(self._handle))

    def reuse_disk(self, since: int) -> bool:
        """Hand the disk back unless a write went to the peer alone after `since`."""
        rc = lib.rm_engine_reuse_disk(self._handle, since)
        if rc == -errno.EAGAIN:
            return False
        _check(rc, "reuse disk")
        return True

    def shutdown(self) -> None:
        """End every connection being served; later serve_nbd() calls return at once."""
        lib.rm_engine_shutdown(self._handle)

    def stats(self) -> dict:
        out = ffi.new("rm_stats *")
        lib.rm_engine_get_stats(self._handle, out)
        return {name: [int(v) for v in getattr(out, name)] if name in STAT_ARRAYS
                else int(getattr(out, name)) for name in STAT_FIELDS}

    def serve_nbd(self, sock_fd: int, initial: bytes = b"", tls: TlsSession | None = None) -> ServeResult:
        """Run the NBD transmission phase on sock_fd until the client leaves (blocks, GIL released);
        with `tls`, through that session on sock_fd (the caller closes it afterwards)."""
        err = ffi.new("int *")
        if tls is not None:
            end = lib.rm_serve_nbd_tls(self._handle, sock_fd, tls.handle, initial, len(initial), err)
        else:
            end = lib.rm_serve_nbd(self._handle, sock_fd, initial, len(initial), err)
        return ServeResult(end, END_REASONS.get(end, f"end code {end}"), int(err[0]))

    def serve_fuse(self, mountpoint: str, filename: str, *, max_write: int, threads: int,
                   direct_io: bool) -> FuseFile:
        """Mount a FUSE filesystem on `mountpoint` holding this resource as the one file
        `filename` (self.size bytes), served by `threads` C workers; returns at once."""
        out = ffi.new("rm_fuse **")
        _check(lib.rm_fuse_start(self._handle, os.fsencode(mountpoint), os.fsencode(filename), self.size,
                                 max_write, threads, int(direct_io), out),
               f"fuse: mount {mountpoint!r}: max_write={max_write} threads={threads}")
        fuse_file = FuseFile(self, out[0], os.path.join(mountpoint, filename))
        self._fuse_files.add(fuse_file)
        return fuse_file

    # Requests from Python: through C's request layer like an NBD client's (range checks,
    # activity log, mirrored to the peer per protocol); each blocks until it is complete.
    def pread(self, length: int, offset: int) -> bytes:
        buf = bytearray(length)
        _check(lib.rm_engine_pread(self._handle, ffi.from_buffer(buf), length, offset),
               f"read: offset={offset} length={length}")
        return bytes(buf)

    def pwrite(self, data, offset: int, fua: bool = False) -> None:
        _check(lib.rm_engine_pwrite(self._handle, ffi.from_buffer(data), len(data), offset, int(fua)),
               f"write: offset={offset} length={len(data)}")

    def flush(self) -> None:
        """fdatasync of the local disk alone (metadata ordering)."""
        _check(lib.rm_engine_flush(self._handle), "flush")

    def trim(self, length: int, offset: int, fua: bool = False) -> None:
        _check(lib.rm_engine_trim(self._handle, length, offset, int(fua)),
               f"trim: offset={offset} length={length}")

    def zero(self, length: int, offset: int, may_trim: bool = True, fua: bool = False) -> None:
        _check(lib.rm_engine_zero(self._handle, length, offset, int(may_trim), int(fua)),
               f"write zeroes: offset={offset} length={length}")

    # Replication: events, bitmap, activity log, peer link, resync (csrc/mirror.h, second half).
    def event_fd(self) -> int:
        """Readable while events are queued; drain them with next_events()."""
        return lib.rm_engine_event_fd(self._handle)

    def next_events(self) -> list[MirrorEvent]:
        """Drain C's queue. When it overflowed (events were lost), recover here: writers still
        waiting for an AL extent are asked for again (rm_al_rescan posts fresh al_miss events)
        and a peer_control event makes the caller drain the control frames; the `overflow`
        event itself tells the caller to re-read anything else it learns from stats()."""
        out = ffi.new("rm_event *")
        events = []
        while lib.rm_engine_next_event(self._handle, out):
            name = EVENT_NAMES.get(out.type, f"event {out.type}")
            events.append(MirrorEvent(name, int(out.err), int(out.offset), int(out.length)))
            if out.type == lib.RM_EV_OVERFLOW:
                events.append(MirrorEvent("peer_control", 0, 0, 0))
                lib.rm_al_rescan(self._handle)
        return events

    def set_bitmap(self, bitmap) -> None:
        """Share replica.bitmap.Bitmap's buffer with C (64-bit little-endian words)."""
        ref = ffi.from_buffer(bitmap.buffer, require_writable=True)
        _check(lib.rm_engine_set_bitmap(self._handle, ref, bitmap.nbits), f"set bitmap: nbits={bitmap.nbits}")
        if self._bitmap is not None:
            # a C thread may still hold the old pointer for one bit update: keep it alive
            self._retired.append((self._bitmap, self._bitmap_ref))
        self._bitmap, self._bitmap_ref = bitmap, ref

    def resize(self, size: int, bitmap=None) -> None:
        """Online resize to `size` bytes. Growing: `bitmap` (over the same words, larger nbits)
        is handed over first, so C never sets a bit past the bitmap it has."""
        if size < 0:
            raise ValueError(f"mirror: resize: size must not be negative, got {size}")
        if bitmap is not None and size >= self.size:
            self.set_bitmap(bitmap)
        _check(lib.rm_engine_resize(self._handle, size), f"resize to {size} bytes")
        if bitmap is not None and size < self.size:
            self.set_bitmap(bitmap)
        self.size = size

    def enable_al(self) -> None:
        _check(lib.rm_engine_enable_al(self._handle), "enable activity log")

    def al_set_hot(self, extent: int, hot: bool = True) -> None:
        _check(lib.rm_al_set_hot(self._handle, extent, int(hot)), f"activity log: extent {extent}")

    def al_evict(self, extent: int, timeout_s: float) -> bool:
        """Mark `extent` cold and wait for the writes already past the gate to finish here and
        on the peer. True when none is left (the AL transaction may drop it), False on timeout
        (the extent stays cold: writes to it wait for the next AL miss to be served)."""
        rc = lib.rm_al_evict(self._handle, extent, max(0, int(timeout_s * 1000)))
        if rc == -errno.ETIMEDOUT:
            return False
        _check(rc, f"activity log: evict extent {extent}")
        return True

    def peer_attach(self, fd: int, protocol: str, integrity_alg: str | None = None,
                    max_buffers: int | None = None, tls: TlsSession | None = None) -> None:
        """Attach the peer socket; `integrity_alg` (data-integrity-alg, None = off) makes every
        DATA/RS_DATA frame carry a digest the receiver checks; `max_buffers` (net max-buffers)
        caps the requests in flight to the peer; `tls`: a session on fd, which C then reads and
        writes through (the caller closes it after peer_detach)."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"mirror: peer attach: protocol must be A, B or C, got {protocol!r}")
        alg = lib.RM_DIGEST_NONE
        if integrity_alg:
            found = digest_id(integrity_alg)
            if found is None:
                raise ValueError(f"mirror: peer attach: data-integrity-alg {integrity_alg!r} "
                                 "is not available")
            alg = found
        _check(lib.rm_peer_set_integrity(self._handle, alg), f"data-integrity-alg {integrity_alg}")
        if max_buffers is not None:
            _check(lib.rm_peer_set_max_buffers(self._handle, max_buffers), f"max-buffers {max_buffers}")
        if tls is not None:
            _check(lib.rm_peer_attach_tls(self._handle, fd, tls.handle, PROTOCOLS[protocol]),
                   f"peer attach: fd {fd} over TLS")
        else:
            _check(lib.rm_peer_attach(self._handle, fd, PROTOCOLS[protocol]), f"peer attach: fd {fd}")

    def peer_detach(self) -> None:
        """Drop the link; blocks until C's receiver has swept every pending request."""
        lib.rm_peer_detach(self._handle)

    def peer_ping(self) -> bool:
        """Send a PING; False when skipped because another send holds the link (a send blocked
        on a dead peer must not block the caller, whose ping-timeout still runs)."""
        rc = lib.rm_peer_ping(self._handle)
        if rc == -errno.EBUSY:
            return False
        _check(rc, "peer ping")
        return True

    def resync_send(self, offset: int, length: int) -> None:
        _check(lib.rm_resync_send(self._handle, offset, length), f"resync send: offset={offset} length={length}")

    def verify_send(self, alg: str, offset: int, length: int) -> None:
        """VerifyS: digests of [offset, + length) to the peer (OV_REQUEST); see csrc/mirror.h."""
        found = digest_id(alg)
        if found is None:
            raise ValueError(f"mirror: verify: verify-alg {alg!r} is not available")
        _check(lib.rm_verify_send(self._handle, found, offset, length),
               f"verify send: offset={offset} length={length}")

    def resync_csum_send(self, alg: str, offset: int, length: int) -> None:
        """SyncSource with csums-alg: digests of [offset, + length) to the peer (RS_CSUM); the
        equal blocks' bits are cleared on both sides when the answer arrives (csrc/mirror.h)."""
        found = digest_id(alg)
        if found is None:
            raise ValueError(f"mirror: resync: csums-alg {alg!r} is not available")
        _check(lib.rm_resync_csum_send(self._handle, found, offset, length),
               f"resync csum send: offset={offset} length={length}")

    def send_control(self, frame: bytes) -> None:
        _check(lib.rm_peer_send_control(self._handle, frame, len(frame)), f"send control frame: {len(frame)} bytes")

    def recv_control(self) -> bytes | None:
        buf = ffi.new("char[]", MAX_CONTROL_FRAME)
        n = _check(lib.rm_peer_recv_control(self._handle, buf, MAX_CONTROL_FRAME), "receive control frame")
        return ffi.buffer(buf, n)[:] if n else None
