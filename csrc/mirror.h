/* SPDX-License-Identifier: GPL-2.0-or-later */
/* THE C/Python contract of the data path: this file is both the cffi cdef (csrc/build_mirror.py)
 * and the header mirror.c includes, so it must stay cdef-clean: plain prototypes, integer
 * #defines and opaque handles, nothing else.
 *
 * Layers (nbdkit's server/plugin split, in miniature):
 *
 *   frontend: NBD transmission phase (rm_serve_nbd)   <- later also the FUSE file frontend
 *        |  one request at a time per connection, replies batched
 *        v
 *   engine: rm_engine: range checks, local pread/pwrite/fdatasync/fallocate, counters
 *        |  (next: every write also framed to the peer link, acks per protocol A/B/C)
 *        v
 *   backing fd (regular file or block device)
 *
 * Return convention: 0 (or a count) on success, -errno on failure; never a message.
 * Python owns every decision (sockets, handshakes, roles, policy); C owns "this request, now". */

typedef struct rm_engine rm_engine;

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
} rm_stats;

#define RM_ENGINE_READ_ONLY 1

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
void rm_engine_get_stats(rm_engine *eng, rm_stats *out);
/* Shut down every client socket being served; their rm_serve_nbd calls then return. */
int rm_engine_shutdown(rm_engine *eng);

/* Serve the NBD transmission phase on client_fd until the client leaves. `initial` holds bytes
 * the handshake already read past its end. Blocks; call it without the GIL (cffi does). Returns
 * one of RM_END_*; for RM_END_SOCKET/RM_END_PROTOCOL, *err gets an errno-style detail. */
int rm_serve_nbd(rm_engine *eng, int client_fd, const char *initial, size_t initial_len, int *err);

/* Engine operations used by every frontend (NBD now, FUSE next). Return 0 or -errno. */
int rm_engine_pread(rm_engine *eng, void *buf, uint32_t count, uint64_t offset);
int rm_engine_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua);
int rm_engine_flush(rm_engine *eng);
int rm_engine_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua);
int rm_engine_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua);
