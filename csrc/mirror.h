/* SPDX-License-Identifier: GPL-2.0-or-later */
/* THE C/Python contract of the data path: this file is both the cffi cdef (csrc/build_mirror.py)
 * and the header every csrc/ source includes, so it must stay cdef-clean: plain prototypes, integer
 * #defines and opaque handles, nothing else.
 *
 * Layers (nbdkit's frontends over a core, DRBD's objects; tests/unit/test_c_layers.py keeps the
 * include graph of the C sources to this order, with no cycle):
 *
 *   frontend     nbd_frontend.c: NBD transmission phase (rm_serve_nbd); fuse_frontend.c: the
 *        |       FUSE file (rm_fuse_start); each parses its protocol, calls only the request layer
 *        v
 *   request      request.c: range checks, AL references, local write ordered against the peer
 *        |       stream, the peer half, completion (replies queued to the frontend's thread);
 *        |       resource.c: the rm_engine object and this contract's entry points
 *        v
 *   connection   connection.c: sender, receiver thread, pending slots, control frames
 *   device       device.c: local I/O, dirty bitmap, activity-log gate, events, counters
 *        v
 *   transport    transport_socket.c (plain socket), transport_tls.c (TLS over tls.c, a leaf
 *                library like digest.c), transport.c helpers
 *
 * Only PyInit__mirror and the rm_* names below leave the shared object (csrc/mirror.map).
 * The thread table and lock order are in csrc/request.h.
 *
 * Return convention: 0 (or a count) on success, -errno on failure; never a message.
 * Python owns every decision (sockets, handshakes, roles, policy); C owns "this request, now". */

typedef struct rm_engine rm_engine;
typedef struct rm_tls_ctx rm_tls_ctx;   /* TLS settings: OpenSSL's SSL_CTX (csrc/tls.c) */
typedef struct rm_tls rm_tls;           /* one TLS session on one socket */

/* Counters, read by Python at any time (monotonic, relaxed atomics). */
typedef struct rm_stats {
    uint64_t reads;
    uint64_t writes;
    uint64_t flushes;
    uint64_t trims;
    uint64_t zeroes;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t io_errors;        /* local I/O errors answered with an NBD error */
    uint64_t refused;          /* requests answered with EINVAL/ENOSPC/EPERM/EOVERFLOW */
    uint64_t connections;      /* connections served since start */
    uint64_t active_connections;
    int32_t last_errno;        /* errno of the most recent local I/O error, 0 if none */
    /* replication */
    uint64_t peer_connected;       /* 1 while a peer link is attached */
    uint64_t peer_pending;         /* requests sent to the peer and not yet acknowledged */
    uint64_t peer_writes_sent;     /* DATA/TRIM/ZEROES frames sent */
    uint64_t peer_bytes_sent;      /* every byte written to the peer socket */
    uint64_t peer_frames_applied;  /* frames from the peer applied to the local disk */
    uint64_t peer_last_rx_ns;      /* CLOCK_MONOTONIC time of the last frame received */
    uint64_t peer_oldest_pending_ns; /* CLOCK_MONOTONIC send time of the oldest unacked request, 0 if none */
    uint64_t dirty_marked;         /* blocks marked out of sync since start */
    uint64_t resync_bytes_sent;    /* SyncSource: RS_DATA payload bytes sent */
    uint64_t resync_bytes_acked;   /* SyncSource: bytes acknowledged by RS_DONE (bits cleared) */
    uint64_t resync_bytes_received;/* SyncTarget: RS_DATA payload bytes written */
    uint64_t al_misses;            /* writes that waited for an activity-log transaction */
    uint64_t events_dropped;       /* events lost to a full queue (RM_EV_OVERFLOW told Python) */
    /* online verify and data-integrity-alg */
    uint64_t verify_bytes_sent;    /* VerifyS: bytes covered by the OV_REQUESTs sent */
    uint64_t verify_bytes_done;    /* VerifyS: bytes covered by the OV_REPLYs received */
    uint64_t verify_bytes_checked; /* VerifyT: bytes compared against the peer's digests */
    uint64_t verify_oos_blocks;    /* blocks verify found different (marked out of sync here) */
    uint64_t integrity_failures;   /* DATA/RS_DATA frames whose digest did not match */
    /* checksum-based resync (csums-alg) */
    uint64_t csum_bytes_sent;      /* SyncSource: bytes covered by the RS_CSUMs sent */
    uint64_t csum_bytes_done;      /* SyncSource: bytes covered by the RS_CSUM_REPLYs received */
    uint64_t csum_bytes_equal;     /* SyncSource: of those, bytes found in sync (bits cleared, no data sent) */
    uint64_t csum_bytes_checked;   /* SyncTarget: bytes compared against the peer's digests */
    /* the peer link's other direction, and how long the peer takes to acknowledge a write */
    uint64_t peer_bytes_received;  /* every byte of every frame read from the peer (headers + payloads) */
    uint64_t peer_acks;            /* DATA/TRIM/ZEROES frames answered by RECV_ACK/WRITE_ACK */
    uint64_t peer_ack_ns_sum;      /* their latencies (frame handed to the transport -> ack read) added */
    uint64_t peer_ack_us_log2[24]; /* RM_ACK_LATENCY_BUCKETS: bucket i counts latencies of fewer than
                                    * 2^i us (i = bit length of the whole us); the last, the rest */
    /* in flight now (DRBD's status --statistics): */
    uint64_t upper_pending;        /* requests from frontends (and Python) not yet answered */
    uint64_t lower_pending;        /* system calls on the backing file running */
    uint64_t peer_unacked;         /* frames from the peer being applied, not yet acknowledged */
} rm_stats;

/* One event from C to Python, read after the event fd becomes readable. */
typedef struct rm_event {
    int32_t type;       /* RM_EV_* */
    int32_t err;        /* errno detail, 0 if none */
    uint64_t offset;    /* byte offset, extent number (AL_MISS) or frame type (PEER_PROTOCOL) */
    uint64_t length;
} rm_event;

#define RM_ENGINE_READ_ONLY 1

#define RM_PROTOCOL_A 1        /* complete at local write + handed to the peer socket */
#define RM_PROTOCOL_B 2        /* ... + peer received it (RECV_ACK) */
#define RM_PROTOCOL_C 3        /* ... + peer wrote it (WRITE_ACK); flush/FUA reach peer's stable storage */

#define RM_ACK_LATENCY_BUCKETS 24   /* rm_stats.peer_ack_us_log2 (the cdef needs the literal) */

/* Limits shared with Python (replica/mirror.py reads them from the compiled module). */
#define RM_BLOCK_SIZE 4096             /* one bitmap bit */
#define RM_AL_EXTENT_SIZE 4194304      /* one activity-log extent (4 MiB) */
#define RM_MAX_RESYNC_CHUNK 8388608    /* largest rm_resync_send length (8 MiB) */
#define RM_FRAME_HEADER_SIZE 32        /* peer link frame header (replica/protocol/repl_wire.py) */
#define RM_MAX_CONTROL_PAYLOAD 65536   /* largest control frame payload C relays */
#define RM_MAX_CONTROL_FRAME 65568     /* header + largest payload: rm_peer_recv_control's cap */

#define RM_EV_PEER_LOST 1      /* link failed (err: errno, 0 = peer closed); C has already detached */
#define RM_EV_IO_ERROR 2       /* local I/O error (offset/length/err) */
#define RM_EV_AL_MISS 3        /* a writer waits for extent `offset` to be made hot (rm_al_set_hot) */
#define RM_EV_PEER_PROTOCOL 4  /* malformed/unexpected frame from the peer (offset = frame type); detached */
#define RM_EV_PEER_CONTROL 5   /* a control frame (type >= 0x40) arrived: fetch it with rm_peer_recv_control */
#define RM_EV_OVERFLOW 6       /* the queue was full and events were lost (stats.events_dropped):
                                * rescan: rm_al_rescan, rm_peer_recv_control until empty, stats */
#define RM_EV_VERIFY_OOS 7     /* verify found [offset, + length) different: marked out of sync */
#define RM_EV_INTEGRITY 8      /* data-integrity-alg: the frame for [offset, + length) arrived
                                * damaged (err EBADMSG); the link is dropped (RM_EV_PEER_LOST) */

/* How far a device may grow online (rm_engine_resize): the AL arrays get room for this many
 * bytes at rm_engine_new (address space only, MAP_NORESERVE), and so does Python's bitmap. */
#define RM_GROW_MAX 70368744177664     /* 64 TiB */

/* Largest payload one request may carry (NBD's customary 32 MiB block-size maximum). */
#define RM_MAX_REQUEST 33554432

/* Why rm_serve_nbd returned, for Python's log line. */
#define RM_END_DISC 0          /* client sent NBD_CMD_DISC */
#define RM_END_EOF 1           /* client closed the socket between requests */
#define RM_END_SHUTDOWN 2      /* rm_engine_shutdown() was called */
#define RM_END_PROTOCOL 3      /* bad magic, oversized write, truncated request */
#define RM_END_SOCKET 4        /* socket error (errno in *err) */

rm_engine *rm_engine_new(int backing_fd, uint64_t size, int flags);
void rm_engine_free(rm_engine *eng);
void rm_engine_set_read_only(rm_engine *eng, int read_only);
/* Online resize: the exported size becomes new_size (<= RM_GROW_MAX, or the size at
 * rm_engine_new if that was larger: else -EFBIG). Growing needs the bitmap to cover the new
 * size first (rm_engine_set_bitmap with the larger nbits, same words: -EINVAL otherwise).
 * Requests already past the range check finish; new ones see the new size. */
int rm_engine_resize(rm_engine *eng, uint64_t new_size);
/* suspend-io (1) / resume-io (0): while suspended, every new request waits before it starts
 * (fencing resource-and-stonith, while the fence-peer handler runs). rm_engine_shutdown resumes. */
void rm_engine_set_suspended(rm_engine *eng, int suspended);
void rm_engine_get_stats(rm_engine *eng, rm_stats *out);
/* Shut down every client socket being served; their rm_serve_nbd calls then return. */
int rm_engine_shutdown(rm_engine *eng);

/* Serve the NBD transmission phase on client_fd until the client leaves. `initial` holds bytes
 * the handshake already read past its end. Blocks; call it without the GIL (cffi does). Returns
 * one of RM_END_*; for RM_END_SOCKET/RM_END_PROTOCOL, *err gets an errno-style detail. */
int rm_serve_nbd(rm_engine *eng, int client_fd, const char *initial, size_t initial_len, int *err);
/* The same over a TLS session on client_fd (NBD_OPT_STARTTLS; rm_tls_handshake made it, and
 * the option haggling that followed went through it). The session and the fd stay the caller's:
 * rm_tls_close, then close the fd, after this returns. */
int rm_serve_nbd_tls(rm_engine *eng, int client_fd, rm_tls *s, const char *initial, size_t initial_len,
                     int *err);

/* Requests from Python, through the same request layer as every frontend (range checks, AL
 * references, mirrored to the peer per protocol, completion): they block until the request is
 * complete as an NBD client's would be. Return 0 or -errno. */
int rm_engine_pread(rm_engine *eng, void *buf, uint32_t count, uint64_t offset);
int rm_engine_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua);
int rm_engine_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua);
int rm_engine_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua);
/* fdatasync of the local disk alone (Python orders its metadata writes with it). */
int rm_engine_flush(rm_engine *eng);

/* ---- events: C -> Python ---- */
/* A file descriptor that is readable while events are queued (a pipe; Python polls it). */
int rm_engine_event_fd(rm_engine *eng);
/* Pop one event into *out: returns 1, or 0 when the queue is empty. */
int rm_engine_next_event(rm_engine *eng, rm_event *out);

/* ---- the dirty bitmap, shared with replica.bitmap ---- */
/* `words`: nbits bits in 64-bit little-endian words, owned by Python and kept alive while set.
 * C sets bits for writes the peer has not acknowledged and clears bits that resync acknowledged. */
int rm_engine_set_bitmap(rm_engine *eng, void *words, uint64_t nbits);

/* ---- activity log ---- */
/* Enable AL gating: a write to an extent that is not hot waits (RM_EV_AL_MISS) until Python has
 * committed an AL transaction and called rm_al_set_hot(extent, 1). nextents = ceil(size / 4 MiB). */
int rm_engine_enable_al(rm_engine *eng);
int rm_al_set_hot(rm_engine *eng, uint64_t extent, int hot);
/* Take `extent` out of the AL: mark it cold (new writes to it wait, RM_EV_AL_MISS), then wait
 * up to timeout_ms until every write already past the gate is done locally and acknowledged by
 * the peer (or marked out of sync): 0, or -ETIMEDOUT with the extent left cold. Only after 0
 * may Python commit the transaction that drops it. */
int rm_al_evict(rm_engine *eng, uint64_t extent, uint32_t timeout_ms);
/* After RM_EV_OVERFLOW: post RM_EV_AL_MISS again for every extent a writer still waits for.
 * Returns how many were posted. */
int rm_al_rescan(rm_engine *eng);

/* ---- peer link ---- */
/* Hand a connected, authenticated peer socket to C and start its receiver thread. From then on,
 * writes accepted by this engine are mirrored, and frames from the peer are applied here. */
int rm_peer_attach(rm_engine *eng, int fd, int protocol);
/* The same over a TLS session on fd (rm_tls_handshake): C reads and writes records through it
 * from then on. Python keeps both: after rm_peer_detach it calls rm_tls_close, then closes fd. */
int rm_peer_attach_tls(rm_engine *eng, int fd, rm_tls *s, int protocol);
/* Drop the link (idempotent): shut the socket down, join the receiver, mark every unacknowledged
 * write out of sync and complete it locally. The fd stays open: Python owns and closes it. */
int rm_peer_detach(rm_engine *eng);
/* Control frames after the handshake (STATE, UUIDS, SYNC_UUID, OUTDATE, DISCONNECT...), built and
 * parsed by Python (replica.protocol.repl): send a whole frame (header + payload) in order with
 * the data stream; receive the next queued one (returns its length, 0 if none, -ENOSPC if cap
 * is too small; at most RM_MAX_CONTROL_FRAME bytes per frame, 256 frames queued). */
int rm_peer_send_control(rm_engine *eng, const void *frame, uint32_t length);
int rm_peer_recv_control(rm_engine *eng, void *buf, uint32_t cap);
/* Send a PING; the peer answers PING_ACK, and every frame received refreshes peer_last_rx_ns.
 * Returns -EBUSY at once, sending nothing, while another send holds the link (it may be blocked
 * on a dead peer: the caller's ping-timeout still runs). */
int rm_peer_ping(rm_engine *eng);
/* SyncSource: read [offset, offset + length) locally and send it as RS_DATA (length <= RM_MAX_RESYNC_CHUNK).
 * The target writes it, clears its bits and answers RS_DONE; the source then clears its own bits.
 * Returns 0, or -ENOTCONN without a peer, or -errno. */
int rm_resync_send(rm_engine *eng, uint64_t offset, uint32_t length);

/* ---- digests: online verify (verify-alg) and data-integrity-alg ----
 * Algorithm numbers travel on the wire (OV_REQUEST flags): never renumber. crc32c is computed
 * here (the CPU's crc32 instruction), the hashes by libcrypto. */
#define RM_DIGEST_NONE 0
#define RM_DIGEST_CRC32C 1
#define RM_DIGEST_MD5 2
#define RM_DIGEST_SHA1 3
#define RM_DIGEST_SHA224 4
#define RM_DIGEST_SHA256 5
#define RM_DIGEST_SHA384 6
#define RM_DIGEST_SHA512 7
#define RM_DIGEST_SHA3_224 8
#define RM_DIGEST_SHA3_256 9
#define RM_DIGEST_SHA3_384 10
#define RM_DIGEST_SHA3_512 11
#define RM_DIGEST_LAST 11
#define RM_DIGEST_MAX_SIZE 64
#define RM_MAX_VERIFY_CHUNK 1048576    /* largest rm_verify_send length (1 MiB) */
/* Size in bytes of one digest of `alg`, or -ENOENT when this build cannot compute it. */
int rm_digest_size(int alg);
/* Digest of buf[0..length) into out (RM_DIGEST_MAX_SIZE bytes of room): its size, or -errno. */
int rm_digest(int alg, const void *buf, uint32_t length, unsigned char *out);
/* data-integrity-alg for the next rm_peer_attach (RM_DIGEST_NONE: off): the sender puts a
 * DIGEST frame before each DATA/RS_DATA frame, the receiver checks it; a mismatch posts
 * RM_EV_INTEGRITY and drops the link (the block stays out of sync on the sender: resynced). */
int rm_peer_set_integrity(rm_engine *eng, int alg);
/* net { max-buffers } for the next rm_peer_attach: at most n (32..131072) requests in flight
 * to the peer; writers wait for a free one (DRBD: the peer's buffers). -EBUSY while attached. */
int rm_peer_set_max_buffers(rm_engine *eng, uint32_t n);
/* VerifyS: read [offset, + length) here (length <= RM_MAX_VERIFY_CHUNK), send OV_REQUEST with
 * one `alg` digest per 4 KiB block. The peer compares with its own blocks, marks the differing
 * ones out of sync and answers OV_REPLY; this side then marks them too (RM_EV_VERIFY_OOS on
 * both sides, stats verify_*). Returns 0, -ENOTCONN without a peer, or -errno. */
int rm_verify_send(rm_engine *eng, int alg, uint64_t offset, uint32_t length);

/* ---- checksum-based resync (csums-alg) ----
 * SyncSource: read [offset, + length) here (length <= RM_MAX_RESYNC_CHUNK), send RS_CSUM with one
 * `alg` (RM_DIGEST_*) digest per 4 KiB block, in order with the data stream. The SyncTarget
 * compares with its own blocks, clears its bits of the equal ones and answers RS_CSUM_REPLY;
 * this side then clears its bits of those too (stats csum_*). Blocks that differ stay out of
 * sync on both sides: the caller sends them with rm_resync_send afterwards. Returns 0,
 * -ENOENT for an algorithm this build lacks, -ENOTCONN without a peer, or -errno. */
int rm_resync_csum_send(rm_engine *eng, int alg, uint64_t offset, uint32_t length);

/* ---- local disk failures (disk { on-io-error }) ----
 * Python picks the mode; C only applies it to the request at hand.
 * PASS_ON: a failed request fails (the client sees the errno) and its blocks are marked out of
 * sync; the disk stays in use. FAIL_OVER (Python's `detach` and `call-local-io-error`): the
 * first error takes the disk out of use at once (rm_engine_disk_failed() = 1, then
 * RM_EV_IO_ERROR), before any later request could read a block it failed to write; from then
 * on reads are served by the peer (READ_REQUEST) and writes go to the peer alone, flagged so
 * the peer marks them out of sync for us; the failing write itself is retried on the peer.
 * Without a peer such a request fails with EIO. Python clears the flag once the disk is
 * attached again and resynced (SyncTarget done). */
#define RM_ON_IO_ERROR_PASS_ON 0
#define RM_ON_IO_ERROR_FAIL_OVER 1
int rm_engine_set_on_io_error(rm_engine *eng, int mode);
int rm_engine_disk_failed(rm_engine *eng);
void rm_engine_set_disk_failed(rm_engine *eng, int failed);
/* Handing the disk back after the resync that follows a re-attach. Writes sent to the peer
 * alone are counted (rm_engine_remote_writes); one sent after `since` (read before asking for
 * the resync) may not be on this disk although the resync is done, so the disk is handed back
 * only if none was: 0, or -EAGAIN (still out of use: resync again). Atomic against writers. */
uint64_t rm_engine_remote_writes(rm_engine *eng);
int rm_engine_reuse_disk(rm_engine *eng, uint64_t since);

/* ---- the FUSE file (csrc/fuse_frontend.c): the resource as one regular file ----
 * rm_fuse_start mounts a FUSE filesystem (libfuse3) on `mountpoint` (an existing directory)
 * holding one file, `filename`, of `size` bytes (mode 0600), served by `nthreads` C worker
 * threads through the request layer, and returns at once: Python then attaches a loop device
 * to it. max_write (4 KiB..1 MiB) caps one FUSE write/read; direct_io asks the kernel to
 * bypass its page cache for every open of the file (FOPEN_DIRECT_IO). fsync is RM_OP_FLUSH;
 * writes while the engine is read-only fail with EROFS. Returns 0 or -errno.
 * rm_fuse_stop ends the workers, closes the FUSE connection (whoever still holds the file gets
 * ENOTCONN) and detaches the mount lazily; it never waits for the kernel side, and frees `f`.
 * Stop every rm_fuse of an engine before rm_engine_free. */
typedef struct rm_fuse rm_fuse;

typedef struct rm_fuse_stats {
    uint64_t requests;      /* reads, writes, fsyncs and fallocates handled */
    uint64_t errors;        /* answered with an errno */
    uint64_t refused;       /* of which refused by this frontend or read-only (EROFS) */
    uint64_t inflight;      /* requests being served now */
    uint64_t inflight_max;  /* the most served at once (queue depth reached) */
    uint64_t threads;       /* worker threads */
} rm_fuse_stats;

int rm_fuse_start(rm_engine *eng, const char *mountpoint, const char *filename, uint64_t size, uint32_t max_write,
                  uint32_t nthreads, int direct_io, rm_fuse **out);
int rm_fuse_stop(rm_fuse *f);
void rm_fuse_get_stats(rm_fuse *f, rm_fuse_stats *out);
/* After rm_engine_resize: the file takes the new size (the kernel's cached attributes of it are
 * invalidated). 0 or -errno. */
int rm_fuse_set_size(rm_fuse *f, uint64_t size);

/* ---- TLS (csrc/tls.c, OpenSSL; this kernel has no kTLS, so records are sealed in user space)
 * Python builds a context, runs the handshake on a connected socket (blocking, without the GIL)
 * and hands the session to C with the fd (rm_peer_attach_tls, the NBD frontend). TLS 1.2 at
 * least, 1.3 preferred; no session tickets. The fd stays the caller's: rm_tls_close sends
 * close_notify and restores the fd's flags, so call it before closing the fd. */
/* server: 1 for the accepting side. certfile/keyfile/cafile may be NULL (PSK only).
 * verify_peer: require and verify the peer's certificate against cafile (mutual auth).
 * psk_file: NULL, or a file of "identity:hexkey" lines (qemu/nbdkit psktool format);
 * psk_identity: the client's identity in it (NULL: its first line).
 * On error returns NULL and writes a one-line reason into err. */
rm_tls_ctx *rm_tls_ctx_new(int server, const char *certfile, const char *keyfile, const char *cafile,
                           int verify_peer, const char *psk_file, const char *psk_identity, char *err,
                           size_t errlen);
void rm_tls_ctx_free(rm_tls_ctx *ctx);
/* Blocking handshake on fd (left non-blocking until rm_tls_close) within timeout_ms; NULL and a
 * reason in err ("certificate verify failed: certificate has expired", "peer did not present
 * a certificate", "handshake timed out after 5000 ms", "peer does not speak TLS: ...").
 * expected_name: NULL, or the peer's name to find in its certificate (DNS name or IP address). */
rm_tls *rm_tls_handshake(rm_tls_ctx *ctx, int fd, int timeout_ms, const char *expected_name, char *err,
                         size_t errlen);
/* Whole writes and reads for Python before C takes the session: 0 or -errno (-ECONNRESET at
 * EOF, -ETIMEDOUT after timeout_ms; timeout_ms < 0 waits for ever). */
int rm_tls_write_all(rm_tls *s, const void *buf, size_t len);
int rm_tls_read_exact(rm_tls *s, void *buf, size_t len, int timeout_ms);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384 peer /CN=beta" (protocol, cipher, peer) for logs and status */
void rm_tls_describe(rm_tls *s, char *out, size_t outlen);
/* Why a read or write failed with -EPROTO after the handshake ("" if none did). With TLS 1.3
 * the client finishes its handshake before the server has checked the client's certificate,
 * so a refusal ("peer refused the handshake: alert certificate expired") reaches the client
 * on its first read. */
void rm_tls_error(rm_tls *s, char *out, size_t outlen);
void rm_tls_close(rm_tls *s);
