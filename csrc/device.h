/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The device (DRBD's drbd_device): one backing disk and what guards it. Owns local I/O
 * (pread/pwrite/fdatasync/fallocate, splice from a transport, sendfile to one), the dirty
 * bitmap shared with Python, the activity-log gate, the disk-failure state, the counters and
 * the event queue to Python. Knows nothing of requests, peers or frontends.
 * Layer: above the transport only (device.c includes transport.h and nothing else of ours). */
#ifndef RM_DEVICE_H
#define RM_DEVICE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "mirror.h"     /* the contract: no include guard (cdef-clean), so only here */
#include "transport.h"

#define EV_QUEUE_SIZE 1024

struct rm_device {
    int fd;                 /* backing disk; owned by Python, never closed here */
    uint64_t size;          /* atomic: exported size in bytes (internal metadata lies beyond);
                             * grows or shrinks online (device_resize) */
    int read_only;          /* atomic: frontend writes answered with EPERM (a Secondary) */
    int suspended;          /* al_lock: suspend-io (fencing): new requests wait until resumed */
    int is_block_device;    /* use BLKDISCARD/BLKZEROOUT instead of fallocate */
    int can_punch;          /* atomic: cleared after the first EOPNOTSUPP */
    int can_zero_range;     /* atomic: likewise for FALLOC_FL_ZERO_RANGE */
    rm_stats stats;         /* relaxed atomics */

    /* dirty bitmap shared with Python: bm_nbits bits in 64-bit little-endian words */
    uint64_t *bm_words;
    uint64_t bm_nbits;

    /* activity log gating */
    int al_enabled;
    uint64_t al_nextents;   /* atomic: extents of the current size (only ever grows) */
    uint64_t al_capacity;   /* extents the arrays below have room for (device_resize's limit) */
    uint64_t *al_hot;       /* bit per extent: hot (covered by a committed AL transaction) */
    uint64_t *al_asked;     /* bit per extent: AL_MISS already posted */
    uint32_t *al_refs;      /* per extent: writes past the gate and not yet done (atomic) */
    size_t al_map_len;      /* the three arrays are one anonymous mapping of this length */
    uint64_t *al_hot_room;  /* where al_hot and al_asked go once the AL is enabled */
    int al_evicting;        /* an rm_al_evict waits for an extent's writes to finish (atomic) */
    pthread_mutex_t al_lock;
    pthread_cond_t al_cond; /* CLOCK_MONOTONIC */

    /* events to Python: a queue, and a pipe byte per event so Python can poll */
    int ev_pipe[2];
    pthread_mutex_t ev_lock;
    rm_event ev_queue[EV_QUEUE_SIZE];
    unsigned ev_head, ev_count;
    int ev_overflow;        /* ev_lock: an event was dropped; RM_EV_OVERFLOW is owed */

    int on_io_error;        /* RM_ON_IO_ERROR_* (atomic) */
    int disk_failed;        /* atomic: the disk is out of use, requests go to the peer */
    pthread_mutex_t fail_lock;  /* disk_failed's check + remote_writes++ vs device_reuse_disk */
    uint64_t remote_writes;     /* writes sent to the peer alone (fail_lock) */

    /* a read-only view of a regular backing file (device_view), made on first use */
    pthread_mutex_t view_lock;
    const unsigned char *view;  /* atomic: NULL until made */
    uint64_t view_len;
    int view_failed;
};

#define STAT_ADD(dev, field, n) __atomic_fetch_add(&(dev)->stats.field, (n), __ATOMIC_RELAXED)
#define STAT_SUB(dev, field, n) __atomic_fetch_sub(&(dev)->stats.field, (n), __ATOMIC_RELAXED)
#define STAT_SET(dev, field, v) __atomic_store_n(&(dev)->stats.field, (v), __ATOMIC_RELAXED)
/* One system call on the backing file, counted in stats.lower_pending while it runs (DRBD's
 * lower-pending: requests handed to the backing device and not yet back). GNU C statement
 * expression: the call's value, errno untouched. */
#define LOWER_IO(dev, call) ({ STAT_ADD(dev, lower_pending, 1); __typeof__(call) lower_io_ret_ = (call); \
                               STAT_SUB(dev, lower_pending, 1); lower_io_ret_; })

int device_init(struct rm_device *dev, int backing_fd, uint64_t size, int read_only);
void device_destroy(struct rm_device *dev);
void device_get_stats(struct rm_device *dev, rm_stats *out);
int device_is_read_only(struct rm_device *dev);
/* suspend-io / resume-io (fencing resource-and-stonith): requests wait while suspended */
void device_set_suspended(struct rm_device *dev, int suspended);
void device_wait_resumed(struct rm_device *dev);
int device_in_range(struct rm_device *dev, uint64_t offset, uint64_t length);
uint64_t device_size(struct rm_device *dev);
/* Online resize (rm_engine_resize): new_size <= RM_GROW_MAX (or the size at init if larger). */
int device_resize(struct rm_device *dev, uint64_t new_size);

/* events */
void device_post_event(struct rm_device *dev, int type, int err, uint64_t offset, uint64_t length);
int device_next_event(struct rm_device *dev, rm_event *out);

/* bitmap */
int device_set_bitmap(struct rm_device *dev, void *words, uint64_t nbits);
void device_mark_dirty(struct rm_device *dev, uint64_t offset, uint64_t length);
void device_clear_dirty(struct rm_device *dev, uint64_t offset, uint64_t length);

/* activity log: every write takes its extents with device_al_begin before it reaches the disk
 * and gives them back with device_al_end once it is done here and on the peer (acked, or
 * marked out of sync). */
int device_enable_al(struct rm_device *dev);
int device_al_set_hot(struct rm_device *dev, uint64_t extent, int hot);
int device_al_evict(struct rm_device *dev, uint64_t extent, uint32_t timeout_ms);
int device_al_rescan(struct rm_device *dev);
void device_al_begin(struct rm_device *dev, uint64_t offset, uint64_t length);
void device_al_end(struct rm_device *dev, uint64_t offset, uint64_t length);

/* disk failures (mirror.h, on-io-error) */
int device_set_on_io_error(struct rm_device *dev, int mode);
int device_disk_failed(struct rm_device *dev);
int device_fails_over(struct rm_device *dev);   /* on-io-error detach (FAIL_OVER) */
void device_set_disk_failed(struct rm_device *dev, int failed);
/* A write about to be submitted: 1 if it must go to the peer alone (counted), 0 if not. */
int device_enter_remote_only(struct rm_device *dev);
void device_count_remote_write(struct rm_device *dev);
uint64_t device_remote_writes(struct rm_device *dev);
int device_reuse_disk(struct rm_device *dev, uint64_t since);

/* Local I/O, no permission or range checks (the request layer checks; the connection applies a
 * Primary's writes on a Secondary). 0 or -errno; errors are counted and posted. */
int device_pread(struct rm_device *dev, void *buf, uint32_t count, uint64_t offset);
/* The same read for the data path's own use (a digest for verify or data-integrity-alg): not
 * counted among the reads clients made. */
int device_read_internal(struct rm_device *dev, void *buf, uint32_t count, uint64_t offset);
/* [offset, + count) of a regular backing file in place: the page cache itself, through one
 * read-only MAP_SHARED mapping of the file made on first use and kept until device_destroy (a
 * mapping per call costs more than the copy it saves: its munmap interrupts every CPU running
 * one of our threads). NULL for a block device, past the file's end (a short file reads as
 * zeroes; the mapping would fault), or when mmap failed: the caller reads a copy instead. */
const unsigned char *device_view(struct rm_device *dev, uint64_t offset, uint32_t count);
int device_pwrite(struct rm_device *dev, const void *buf, uint32_t count, uint64_t offset, int fua);
int device_trim(struct rm_device *dev, uint32_t count, uint64_t offset, int fua);
int device_zero(struct rm_device *dev, uint32_t count, uint64_t offset, int may_trim, int fua);
int device_flush(struct rm_device *dev);
/* A disk error noticed elsewhere (a failed sendfile from this disk): counted and posted. */
void device_report_error(struct rm_device *dev, int err, uint64_t offset, uint64_t length);

#define SPLICE_MIN (128 * 1024)     /* payloads at least this large are spliced to the disk */
/* Stream `length` bytes arriving on `t` to the disk at `offset`, the first `have` of them
 * already received into `prefix` (splice: one copy). Returns 0 with the local write's result
 * in *write_rc once the stream is consumed, or a negative errno when the transport failed,
 * with *write_rc for what arrived and *applied = bytes from `offset` on written (or failed). */
int device_splice_write(struct rm_device *dev, struct rm_transport *t, int pipefd[2], const void *prefix,
                        uint32_t have, uint64_t offset, uint32_t length, int fua, int *write_rc,
                        uint32_t *applied, struct rm_spin *spin);
/* A duplicate of a spliced payload, kept while the payload goes to the disk so that a write the
 * disk refuses can still go elsewhere (on-io-error detach: to the peer, request.c). Each chunk
 * is tee(2)d into a second pipe before it is spliced to the disk: the duplicate shares the
 * pipe's pages (no copy), and is spliced to /dev/null once the disk has the whole payload. A
 * duplicate larger than the second pipe holds moves to `buf` (a copy); so does all of it when
 * the disk fails. The disk's own copy is never read back: a failed disk is not trusted. tee
 * only takes references, so the pipe's pages must not be reused by whoever filled them: true of
 * a socket's splice_read and of write(2) into the pipe (transport_tls.c), not of vmsplice(2). */
struct rm_keep {
    int pipe[2];            /* the duplicate; -1 until device_keep_open */
    int null_fd;            /* /dev/null */
    uint32_t piped;         /* duplicate bytes in the pipe, following the `have + spilled` in buf */
    uint32_t spilled;       /* duplicate bytes moved to buf (after the prefix's place) */
    int whole;              /* after a failed write: buf holds the whole payload */
    unsigned char *buf;     /* allocated on the first spill; `cap` bytes */
    size_t cap;
};

void device_keep_init(struct rm_keep *k);
int device_keep_open(struct rm_keep *k);    /* 0 or -errno */
void device_keep_close(struct rm_keep *k);  /* fds and buffer */
/* device_splice_write, keeping a duplicate in `k` (device_keep_open'ed). When the stream was
 * consumed (0) and *write_rc < 0, k->whole says whether k->buf holds all `length` bytes. Once
 * the disk failed, the rest of the payload goes to the duplicate alone (no more disk writes). */
int device_splice_write_keep(struct rm_device *dev, struct rm_transport *t, int pipefd[2], const void *prefix,
                             uint32_t have, uint64_t offset, uint32_t length, int fua, int *write_rc,
                             uint32_t *applied, struct rm_spin *spin, struct rm_keep *k);
/* Send [offset, offset + length) of the disk to `t` from the page cache: 0 or -errno. */
int device_send_range(struct rm_device *dev, struct rm_transport *t, uint64_t offset, uint64_t length,
                      uint64_t *sent);

#endif
