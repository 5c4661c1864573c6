/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Private to csrc/: the engine's layout and the helpers the frontends and the peer link share.
 * Not part of the cffi contract (that is mirror.h).
 *
 * Lock order (never take one to the left while holding one to the right):
 *     peer.pending_lock -> origin out_lock
 *     peer.pending_lock -> al_lock              peer.send_lock -> ev_lock (an I/O error event)
 *     lock (client registry, alone) */
#ifndef RM_MIRROR_INTERNAL_H
#define RM_MIRROR_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* Who asked for a request: a frontend connection. The peer link completes requests through
 * it from the receiver thread, so the frontend never waits for the network itself.
 *
 * Lifetime: `inflight` counts the references the peer link holds, one per request owed an
 * answer. complete() only queues the answer; the reference is dropped by release(), which
 * sends what complete() queued and then decrements `inflight`. The frontend frees its
 * connection once `inflight` is zero, so the caller must not touch `o` after release().
 * (Decrementing in complete() let a closing connection return from rm_serve_nbd while the
 * receiver still had it in its batch to flush: the use-after-return behind issue 9's crash.) */
struct rm_origin {
    void (*complete)(struct rm_origin *o, const unsigned char cookie[8], int rc);
    void (*release)(struct rm_origin *o, int n);   /* send what complete() queued, drop n refs */
    int inflight;                           /* atomic: references held by the peer link */
    int batched;                            /* receiver thread only: completions not yet released */
};

#define PENDING_SLOTS 4096                 /* in flight to the peer at most (DRBD max-buffers) */

struct rm_pending {
    int busy;
    int replied;            /* the origin already got its answer (protocol A, flush under A/B) */
    int is_flush;
    uint64_t id;
    uint64_t offset;
    uint64_t length;
    uint64_t sent_ns;
    struct rm_origin *origin;
    unsigned char cookie[8];
    int not_local;          /* sent with RPL_FLAG_NOT_LOCAL: only the peer's write counts */
};

/* A read served by the peer while this disk is out of use (engine_remote_read). */
struct rm_read_wait {
    struct rm_read_wait *next;
    uint64_t id;
    void *buf;
    uint32_t len;
    int rc;
    int done;
};

struct rm_peer {
    int fd;                 /* -1 when detached */
    int protocol;           /* RM_PROTOCOL_* */
    int dead;               /* atomic: receiver ended; new requests go to the bitmap */
    int attached;           /* a receiver thread exists (joined by detach) */
    pthread_t receiver;

    pthread_mutex_t send_lock;
    unsigned char *sbuf;    /* batched outgoing frames */
    size_t sbuf_len;
    int send_failed;

    pthread_mutex_t pending_lock;
    pthread_cond_t slot_free;
    struct rm_pending *slots;
    uint64_t next_id;
    uint64_t npending;

    /* control frames from the peer, waiting for Python */
    pthread_mutex_t control_lock;
    unsigned char *control[256];
    uint32_t control_len[256];
    unsigned control_head, control_count;

    /* reads waiting for READ_REPLY (a Diskless node): read_lock guards the list */
    pthread_mutex_t read_lock;
    pthread_cond_t read_done;
    struct rm_read_wait *reads;
    uint64_t next_read_id;
};

struct rm_engine {
    int fd;                 /* backing disk; owned by Python, never closed here */
    uint64_t size;          /* exported size in bytes (internal metadata lies beyond) */
    int read_only;          /* atomic: frontend writes answered with EPERM (a Secondary) */
    int is_block_device;    /* use BLKDISCARD/BLKZEROOUT instead of fallocate */
    int can_punch;          /* atomic: cleared after the first EOPNOTSUPP */
    int can_zero_range;     /* atomic: likewise for FALLOC_FL_ZERO_RANGE */
    rm_stats stats;         /* relaxed atomics */

    pthread_mutex_t lock;   /* guards the client registry below */
    int *clients;
    size_t nclients, cap_clients;
    int shutting_down;

    /* dirty bitmap shared with Python: bm_nbits bits in 64-bit little-endian words */
    uint64_t *bm_words;
    uint64_t bm_nbits;

    /* activity log gating */
    int al_enabled;
    uint64_t al_nextents;
    uint64_t *al_hot;       /* bit per extent: hot (covered by a committed AL transaction) */
    uint64_t *al_asked;     /* bit per extent: AL_MISS already posted */
    uint32_t *al_refs;      /* per extent: writes past the gate and not yet done (atomic) */
    int al_evicting;        /* an rm_al_evict waits for an extent's writes to finish (atomic) */
    pthread_mutex_t al_lock;
    pthread_cond_t al_cond;

    /* events to Python */
    int ev_pipe[2];
    pthread_mutex_t ev_lock;
    rm_event ev_queue[1024];
    unsigned ev_head, ev_count;

    struct rm_peer peer;

    int on_io_error;        /* RM_ON_IO_ERROR_* (atomic) */
    int disk_failed;        /* atomic: the disk is out of use, requests go to the peer */
    pthread_mutex_t fail_lock;  /* disk_failed's check + remote_writes++ vs rm_engine_reuse_disk */
    uint64_t remote_writes;     /* writes sent to the peer alone (fail_lock) */
};

#define STAT_ADD(eng, field, n) __atomic_fetch_add(&(eng)->stats.field, (n), __ATOMIC_RELAXED)
#define STAT_SET(eng, field, v) __atomic_store_n(&(eng)->stats.field, (v), __ATOMIC_RELAXED)

uint64_t now_ns(void);

/* engine.c */
int engine_check_range(rm_engine *eng, uint64_t offset, uint32_t count, int is_write);
int engine_add_client(rm_engine *eng, int fd);
void engine_remove_client(rm_engine *eng, int fd);
void engine_post_event(rm_engine *eng, int type, int err, uint64_t offset, uint64_t length);
void engine_mark_dirty(rm_engine *eng, uint64_t offset, uint64_t length);
void engine_clear_dirty(rm_engine *eng, uint64_t offset, uint64_t length);
/* Every write takes its extents with engine_al_begin before it reaches the disk and gives them
 * back with engine_al_end once it is done here and on the peer (acked, or marked out of sync). */
void engine_al_begin(rm_engine *eng, uint64_t offset, uint64_t length);
void engine_al_end(rm_engine *eng, uint64_t offset, uint64_t length);
/* Local I/O without permission checks (the peer link applies a Primary's writes on a Secondary). */
int local_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua);
int local_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua);
int local_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua);
int local_flush(rm_engine *eng);

/* Spinning before sleeping on a socket mid-payload (engine.c, spin_for_data): one per reader. */
struct rm_spin {
    unsigned score;   /* how well spinning has paid lately; 0: sleep at once */
    unsigned waits;   /* waits while score is 0 (every SPIN_PROBE-th spins anyway) */
};
void spin_for_data(int sock, struct rm_spin *spin);
int engine_splice_write(rm_engine *eng, int sock, int pipefd[2], const void *prefix, uint32_t have,
                        uint64_t offset, uint32_t length, int fua, int *write_rc, uint32_t *applied,
                        struct rm_spin *spin);
int engine_open_pipe(int pipefd[2]);
int sendfile_range(rm_engine *eng, int sock, uint64_t offset, uint64_t length, uint64_t *sent);
int recv_exact_buffered(int fd, const void *buf, size_t *start, size_t end, void *dst, size_t len);
#define SPLICE_MIN (128 * 1024)     /* payloads at least this large are spliced to the disk */

/* Requests from a frontend that change the disk; see engine_submit in peer.c. */
enum rm_op { RM_OP_WRITE, RM_OP_TRIM, RM_OP_ZERO, RM_OP_FLUSH };
#define RM_SUBMIT_DONE 0    /* *rc holds the answer now */
#define RM_SUBMIT_LATER 1   /* origin->complete() will be called once, from another thread */
int engine_submit(rm_engine *eng, struct rm_origin *o, const unsigned char cookie[8], enum rm_op op,
                  const void *data, uint32_t count, uint64_t offset, int fua, int may_trim, int *rc);
int engine_mirror(rm_engine *eng, struct rm_origin *o, const unsigned char cookie[8], enum rm_op op,
                  const void *data, uint32_t count, uint64_t offset, int fua, int may_trim);
int engine_peer_live(rm_engine *eng);
/* Send the frames batched for the peer (frontends call it before blocking on their client). */
void engine_flush_peer(rm_engine *eng);

/* Disk failures (mirror.h, on-io-error). engine_remote_read: [offset, +count) from the peer
 * (blocks until READ_REPLY or the link fails): 0, or -EIO without a live peer. */
int engine_disk_failed(rm_engine *eng);
/* A write about to be submitted: 1 if it must go to the peer alone (counted), 0 if not. */
int engine_enter_remote_only(rm_engine *eng);
int engine_remote_read(rm_engine *eng, void *buf, uint32_t count, uint64_t offset);

/* peer.c */
void peer_init(struct rm_peer *peer);
void peer_destroy(struct rm_peer *peer);

#endif
