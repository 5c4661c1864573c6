/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The device: local I/O on the backing fd, the dirty bitmap, the activity-log gate, disk
 * failure and the event queue to Python (device.h). Range and permission checks are the
 * request layer's; this file does what it is told, counts it and reports errors. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "device.h"

static int al_map(struct rm_device *dev, uint64_t capacity);

int device_init(struct rm_device *dev, int backing_fd, uint64_t size, int read_only)
{
    pthread_condattr_t attr;
    struct stat st;

    memset(dev, 0, sizeof *dev);
    dev->ev_pipe[0] = dev->ev_pipe[1] = -1;
    if (fstat(backing_fd, &st) < 0)
        return -errno;
    dev->fd = backing_fd;
    dev->size = size;
    dev->read_only = read_only != 0;
    dev->is_block_device = S_ISBLK(st.st_mode);
    /* Assume both hole punching and zero ranges work until the kernel says otherwise. */
    dev->can_punch = 1;
    dev->can_zero_range = 1;
    pthread_mutex_init(&dev->al_lock, NULL);
    /* rm_al_evict's timeout must not move with the wall clock */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&dev->al_cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&dev->ev_lock, NULL);
    pthread_mutex_init(&dev->fail_lock, NULL);
    pthread_mutex_init(&dev->view_lock, NULL);
    if (pipe2(dev->ev_pipe, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    dev->al_nextents = (size + RM_AL_EXTENT_SIZE - 1) / RM_AL_EXTENT_SIZE;
    /* no room to grow where the kernel will not map it (vm.overcommit_memory 2): resize then
     * says -EFBIG */
    if (al_map(dev, size > RM_GROW_MAX ? size : RM_GROW_MAX) == 0)
        return 0;
    return al_map(dev, size);
}

/* The AL arrays have room for every extent of `capacity` bytes from the start, so that an
 * online grow (device_resize) only moves al_nextents: a writer never sees an array move under
 * it. One anonymous MAP_NORESERVE mapping: pages cost memory only once an extent of theirs is
 * used (64 TiB of room is 64 MiB of address space, none of it resident while unused). */
static int al_map(struct rm_device *dev, uint64_t capacity)
{
    uint64_t n = (capacity + RM_AL_EXTENT_SIZE - 1) / RM_AL_EXTENT_SIZE + 1;
    size_t words = (size_t)((n + 63) / 64) + 1;
    size_t refs_len = (size_t)n * sizeof(uint32_t);
    size_t len = refs_len + 2 * words * sizeof(uint64_t);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);

    if (p == MAP_FAILED)
        return -errno;
    dev->al_map_len = len;
    dev->al_capacity = n - 1;
    dev->al_refs = p;
    /* al_hot/al_asked stay NULL until device_enable_al: that is how the gate knows it is off */
    dev->al_hot_room = (uint64_t *)((char *)p + ((refs_len + 7) & ~(size_t)7));
    return 0;
}

uint64_t device_size(struct rm_device *dev)
{
    return __atomic_load_n(&dev->size, __ATOMIC_ACQUIRE);
}

/* Grow: al_nextents first, then the size (release): a request that passes the range check
 * with the new size finds room in the AL arrays and the bitmap (Python set the bitmap's nbits
 * first). Shrink: only the size; al_nextents stays, so a write already past the gate beyond the
 * new end gives its AL references back to the same extents it took them on. */
int device_resize(struct rm_device *dev, uint64_t new_size)
{
    uint64_t extents = (new_size + RM_AL_EXTENT_SIZE - 1) / RM_AL_EXTENT_SIZE;

    if (extents > dev->al_capacity)
        return -EFBIG;
    if ((new_size + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE > __atomic_load_n(&dev->bm_nbits, __ATOMIC_ACQUIRE) &&
        __atomic_load_n(&dev->bm_words, __ATOMIC_ACQUIRE))
        return -EINVAL;                         /* the bitmap must cover the new size first */
    pthread_mutex_lock(&dev->al_lock);
    if (extents > dev->al_nextents)
        __atomic_store_n(&dev->al_nextents, extents, __ATOMIC_RELEASE);
    __atomic_store_n(&dev->size, new_size, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&dev->al_lock);
    return 0;
}

void device_destroy(struct rm_device *dev)
{
    if (dev->view)
        munmap((void *)dev->view, dev->view_len);
    pthread_mutex_destroy(&dev->view_lock);
    pthread_mutex_destroy(&dev->al_lock);
    pthread_cond_destroy(&dev->al_cond);
    pthread_mutex_destroy(&dev->ev_lock);
    pthread_mutex_destroy(&dev->fail_lock);
    if (dev->ev_pipe[0] >= 0) {
        close(dev->ev_pipe[0]);
        close(dev->ev_pipe[1]);
    }
    if (dev->al_refs)
        munmap(dev->al_refs, dev->al_map_len);
}

#define LOAD(field) __atomic_load_n(&dev->stats.field, __ATOMIC_RELAXED)

void device_get_stats(struct rm_device *dev, rm_stats *out)
{
    out->reads = LOAD(reads);
    out->writes = LOAD(writes);
    out->flushes = LOAD(flushes);
    out->trims = LOAD(trims);
    out->zeroes = LOAD(zeroes);
    out->bytes_read = LOAD(bytes_read);
    out->bytes_written = LOAD(bytes_written);
    out->io_errors = LOAD(io_errors);
    out->refused = LOAD(refused);
    out->connections = LOAD(connections);
    out->active_connections = LOAD(active_connections);
    out->last_errno = LOAD(last_errno);
    out->peer_connected = LOAD(peer_connected);
    out->peer_pending = LOAD(peer_pending);
    out->peer_writes_sent = LOAD(peer_writes_sent);
    out->peer_bytes_sent = LOAD(peer_bytes_sent);
    out->peer_frames_applied = LOAD(peer_frames_applied);
    out->peer_last_rx_ns = LOAD(peer_last_rx_ns);
    out->peer_oldest_pending_ns = LOAD(peer_oldest_pending_ns);
    out->dirty_marked = LOAD(dirty_marked);
    out->resync_bytes_sent = LOAD(resync_bytes_sent);
    out->resync_bytes_acked = LOAD(resync_bytes_acked);
    out->resync_bytes_received = LOAD(resync_bytes_received);
    out->al_misses = LOAD(al_misses);
    out->events_dropped = LOAD(events_dropped);
    out->verify_bytes_sent = LOAD(verify_bytes_sent);
    out->verify_bytes_done = LOAD(verify_bytes_done);
    out->verify_bytes_checked = LOAD(verify_bytes_checked);
    out->verify_oos_blocks = LOAD(verify_oos_blocks);
    out->integrity_failures = LOAD(integrity_failures);
    out->csum_bytes_sent = LOAD(csum_bytes_sent);
    out->csum_bytes_done = LOAD(csum_bytes_done);
    out->csum_bytes_equal = LOAD(csum_bytes_equal);
    out->csum_bytes_checked = LOAD(csum_bytes_checked);
    out->peer_bytes_received = LOAD(peer_bytes_received);
    out->upper_pending = LOAD(upper_pending);
    out->lower_pending = LOAD(lower_pending);
    out->peer_unacked = LOAD(peer_unacked);
    out->peer_acks = LOAD(peer_acks);
    out->peer_ack_ns_sum = LOAD(peer_ack_ns_sum);
    for (int i = 0; i < RM_ACK_LATENCY_BUCKETS; i++)
        out->peer_ack_us_log2[i] = LOAD(peer_ack_us_log2[i]);
}

_Static_assert(sizeof(((rm_stats *)0)->peer_ack_us_log2) == RM_ACK_LATENCY_BUCKETS * sizeof(uint64_t),
               "rm_stats.peer_ack_us_log2 has RM_ACK_LATENCY_BUCKETS buckets");

int device_is_read_only(struct rm_device *dev)
{
    return __atomic_load_n(&dev->read_only, __ATOMIC_ACQUIRE);
}

void device_set_suspended(struct rm_device *dev, int suspended)
{
    pthread_mutex_lock(&dev->al_lock);
    __atomic_store_n(&dev->suspended, suspended != 0, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&dev->al_cond);
    pthread_mutex_unlock(&dev->al_lock);
}

/* DRBD's suspend-io: the request waits (its frontend connection with it) until resume-io. The
 * flag is read without the lock first: an unsuspended device costs one atomic load. */
void device_wait_resumed(struct rm_device *dev)
{
    if (!__atomic_load_n(&dev->suspended, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&dev->al_lock);
    while (__atomic_load_n(&dev->suspended, __ATOMIC_ACQUIRE))
        pthread_cond_wait(&dev->al_cond, &dev->al_lock);
    pthread_mutex_unlock(&dev->al_lock);
}

int device_in_range(struct rm_device *dev, uint64_t offset, uint64_t length)
{
    uint64_t size = device_size(dev);

    return offset <= size && length <= size - offset;
}

/* ---- events to Python: a queue, and a pipe byte per event so Python can poll ---- */

void device_post_event(struct rm_device *dev, int type, int err, uint64_t offset, uint64_t length)
{
    char byte = 1;

    pthread_mutex_lock(&dev->ev_lock);
    if (dev->ev_count < EV_QUEUE_SIZE) {
        rm_event *ev = &dev->ev_queue[(dev->ev_head + dev->ev_count) % EV_QUEUE_SIZE];
        ev->type = type;
        ev->err = err;
        ev->offset = offset;
        ev->length = length;
        dev->ev_count++;
    } else {
        /* Python is behind: remember that something was lost; device_next_event hands out
         * RM_EV_OVERFLOW once the queue drains, and Python rescans (rm_al_rescan...). */
        dev->ev_overflow = 1;
        STAT_ADD(dev, events_dropped, 1);
    }
    pthread_mutex_unlock(&dev->ev_lock);
    if (write(dev->ev_pipe[1], &byte, 1) < 0) {
        /* pipe full: Python is behind, and will find the queue non-empty anyway */
    }
}

int device_next_event(struct rm_device *dev, rm_event *out)
{
    char byte;
    int got = 0;

    pthread_mutex_lock(&dev->ev_lock);
    if (dev->ev_count) {
        *out = dev->ev_queue[dev->ev_head];
        dev->ev_head = (dev->ev_head + 1) % EV_QUEUE_SIZE;
        dev->ev_count--;
        got = 1;
    } else if (dev->ev_overflow) {
        *out = (rm_event){ .type = RM_EV_OVERFLOW };
        dev->ev_overflow = 0;
        got = 1;
    }
    pthread_mutex_unlock(&dev->ev_lock);
    if (read(dev->ev_pipe[0], &byte, 1) < 0) {
        /* empty: fine */
    }
    return got;
}

/* ---- dirty bitmap: shared words, atomic bit operations ---- */

int device_set_bitmap(struct rm_device *dev, void *words, uint64_t nbits)
{
    if (nbits < (device_size(dev) + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE)
        return -EINVAL;
    __atomic_store_n(&dev->bm_nbits, nbits, __ATOMIC_RELAXED);
    __atomic_store_n(&dev->bm_words, (uint64_t *)words, __ATOMIC_RELEASE);
    return 0;
}

static inline uint64_t to_le64(uint64_t v)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap64(v);
#else
    return v;
#endif
}

/* Apply `set` or clear to bits [first, last_excl). Returns how many bits changed. */
static uint64_t bits_update(struct rm_device *dev, uint64_t first, uint64_t last_excl, int set)
{
    uint64_t *words = __atomic_load_n(&dev->bm_words, __ATOMIC_ACQUIRE);
    uint64_t changed = 0;

    if (!words)
        return 0;
    uint64_t nbits = __atomic_load_n(&dev->bm_nbits, __ATOMIC_ACQUIRE);

    if (last_excl > nbits)
        last_excl = nbits;
    while (first < last_excl) {
        uint64_t w = first >> 6;
        unsigned lo = (unsigned)(first & 63);
        unsigned hi = (last_excl - (w << 6)) >= 64 ? 64 : (unsigned)(last_excl - (w << 6));
        uint64_t mask = (hi == 64 ? ~0ull : ((1ull << hi) - 1)) & ~((1ull << lo) - 1);
        uint64_t old;
        if (set) {
            old = to_le64(__atomic_fetch_or(&words[w], to_le64(mask), __ATOMIC_RELAXED));
            changed += (uint64_t)__builtin_popcountll(mask & ~old);
        } else {
            old = to_le64(__atomic_fetch_and(&words[w], to_le64(~mask), __ATOMIC_RELAXED));
            changed += (uint64_t)__builtin_popcountll(mask & old);
        }
        first = (w + 1) << 6;
    }
    return changed;
}

/* Any block touched by [offset, offset+length) may now differ from the peer. */
void device_mark_dirty(struct rm_device *dev, uint64_t offset, uint64_t length)
{
    uint64_t first, last;

    if (length == 0)
        return;
    first = offset / RM_BLOCK_SIZE;
    last = (offset + length + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE;
    STAT_ADD(dev, dirty_marked, bits_update(dev, first, last, 1));
}

/* Only blocks the range covers entirely are in sync now (the device's last block may be short). */
void device_clear_dirty(struct rm_device *dev, uint64_t offset, uint64_t length)
{
    uint64_t first = (offset + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE;
    uint64_t end = offset + length;
    uint64_t size = device_size(dev);
    uint64_t last = end >= size ? (size + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE : end / RM_BLOCK_SIZE;

    if (first < last)
        bits_update(dev, first, last, 0);
}

/* ---- activity log gating ---- */

int device_enable_al(struct rm_device *dev)
{
    size_t words = (size_t)((dev->al_capacity + 1 + 63) / 64) + 1;

    pthread_mutex_lock(&dev->al_lock);
    if (!dev->al_hot) {
        dev->al_hot = dev->al_hot_room;
        dev->al_asked = dev->al_hot_room + words;
    }
    dev->al_enabled = 1;
    pthread_mutex_unlock(&dev->al_lock);
    return 0;
}

/* Hot bits change under al_lock but are read without it by device_al_begin's fast path:
 * every access is atomic (seq_cst, see there). */
static int al_is_hot(struct rm_device *dev, uint64_t e)
{
    return (__atomic_load_n(&dev->al_hot[e >> 6], __ATOMIC_SEQ_CST) >> (e & 63)) & 1;
}

int device_al_set_hot(struct rm_device *dev, uint64_t extent, int hot)
{
    pthread_mutex_lock(&dev->al_lock);
    if (!dev->al_hot || extent >= __atomic_load_n(&dev->al_nextents, __ATOMIC_ACQUIRE)) {
        pthread_mutex_unlock(&dev->al_lock);
        return -EINVAL;
    }
    if (hot)
        __atomic_or_fetch(&dev->al_hot[extent >> 6], 1ull << (extent & 63), __ATOMIC_SEQ_CST);
    else
        __atomic_and_fetch(&dev->al_hot[extent >> 6], ~(1ull << (extent & 63)), __ATOMIC_SEQ_CST);
    dev->al_asked[extent >> 6] &= ~(1ull << (extent & 63));
    pthread_cond_broadcast(&dev->al_cond);
    pthread_mutex_unlock(&dev->al_lock);
    return 0;
}

int device_al_evict(struct rm_device *dev, uint64_t extent, uint32_t timeout_ms)
{
    struct timespec until;
    int rc = device_al_set_hot(dev, extent, 0);

    if (rc < 0)
        return rc;
    clock_gettime(CLOCK_MONOTONIC, &until);   /* al_cond's clock */
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&dev->al_lock);
    __atomic_add_fetch(&dev->al_evicting, 1, __ATOMIC_SEQ_CST);
    while (rc == 0 && __atomic_load_n(&dev->al_refs[extent], __ATOMIC_SEQ_CST))
        rc = -pthread_cond_timedwait(&dev->al_cond, &dev->al_lock, &until);
    if (rc == -ETIMEDOUT && !__atomic_load_n(&dev->al_refs[extent], __ATOMIC_SEQ_CST))
        rc = 0;
    __atomic_sub_fetch(&dev->al_evicting, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&dev->al_lock);
    return rc;
}

static void al_range(struct rm_device *dev, uint64_t offset, uint64_t length, uint64_t *first, uint64_t *last)
{
    *first = offset / RM_AL_EXTENT_SIZE;
    uint64_t n = __atomic_load_n(&dev->al_nextents, __ATOMIC_ACQUIRE);

    *last = (offset + length - 1) / RM_AL_EXTENT_SIZE;
    if (*last >= n)
        *last = n - 1;
}

/* Before a write reaches the disk, every extent it touches must be in a committed AL
 * transaction, so that after a crash of this Primary only AL extents need a resync. The write
 * then holds a reference on those extents, so none leaves the AL while it is in flight. The
 * references are taken under al_lock once all extents are hot together: rm_al_evict marks an
 * extent cold under the same lock, so it either sees the reference or the writer sees it cold. */
void device_al_begin(struct rm_device *dev, uint64_t offset, uint64_t length)
{
    uint64_t e, first, last;
    int all_hot;

    if (length == 0 || __atomic_load_n(&dev->al_nextents, __ATOMIC_ACQUIRE) == 0)
        return;
    al_range(dev, offset, length, &first, &last);
    if (!__atomic_load_n(&dev->al_enabled, __ATOMIC_ACQUIRE)) {
        for (e = first; e <= last; e++)
            __atomic_add_fetch(&dev->al_refs[e], 1, __ATOMIC_SEQ_CST);
        return;
    }
    /* Fast path, no lock shared by all writers: take the references, then look at the hot
     * bits. device_al_evict clears a bit, then reads the references; both sides use seq_cst,
     * so at least one sees the other (the store-then-load pattern): either the evictor waits
     * for this write, or this write sees the extent cold, gives its references back (waking
     * the evictor as device_al_end does) and queues on al_lock below. Measured: al_lock was
     * taken by every write, by all 16 connections of the bench's conn16 row. */
    for (e = first; e <= last; e++)
        __atomic_add_fetch(&dev->al_refs[e], 1, __ATOMIC_SEQ_CST);
    all_hot = 1;
    for (e = first; e <= last && all_hot; e++)
        all_hot = al_is_hot(dev, e);
    if (all_hot)
        return;
    device_al_end(dev, offset, length);

    pthread_mutex_lock(&dev->al_lock);
    do {
        all_hot = 1;
        for (e = first; e <= last; e++) {
            if (al_is_hot(dev, e))
                continue;
            STAT_ADD(dev, al_misses, 1);
            all_hot = 0;
            uint64_t bit = 1ull << (e & 63);
            while (dev->al_enabled && !al_is_hot(dev, e)) {
                if (!(dev->al_asked[e >> 6] & bit)) {
                    dev->al_asked[e >> 6] |= bit;
                    pthread_mutex_unlock(&dev->al_lock);
                    device_post_event(dev, RM_EV_AL_MISS, 0, e, 1);
                    pthread_mutex_lock(&dev->al_lock);
                    continue;
                }
                pthread_cond_wait(&dev->al_cond, &dev->al_lock);
            }
        }
    } while (!all_hot && dev->al_enabled);   /* an earlier extent may have gone cold meanwhile */
    for (e = first; e <= last; e++)
        __atomic_add_fetch(&dev->al_refs[e], 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&dev->al_lock);
}

void device_al_end(struct rm_device *dev, uint64_t offset, uint64_t length)
{
    uint64_t e, first, last;
    int wake = 0;

    if (length == 0 || __atomic_load_n(&dev->al_nextents, __ATOMIC_ACQUIRE) == 0)
        return;
    al_range(dev, offset, length, &first, &last);
    for (e = first; e <= last; e++)
        wake |= __atomic_sub_fetch(&dev->al_refs[e], 1, __ATOMIC_SEQ_CST) == 0;
    if (wake && __atomic_load_n(&dev->al_evicting, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&dev->al_lock);
        pthread_cond_broadcast(&dev->al_cond);
        pthread_mutex_unlock(&dev->al_lock);
    }
}

/* ---- local I/O ---- */

static int io_error(struct rm_device *dev, int err, uint64_t offset, uint64_t length)
{
    STAT_ADD(dev, io_errors, 1);
    __atomic_store_n(&dev->stats.last_errno, err, __ATOMIC_RELAXED);
    /* FAIL_OVER: out of use before anyone is told, so no later request reads this disk */
    if (__atomic_load_n(&dev->on_io_error, __ATOMIC_ACQUIRE) == RM_ON_IO_ERROR_FAIL_OVER)
        __atomic_store_n(&dev->disk_failed, 1, __ATOMIC_SEQ_CST);
    device_post_event(dev, RM_EV_IO_ERROR, err, offset, length);
    return -err;
}

int device_set_on_io_error(struct rm_device *dev, int mode)
{
    if (mode != RM_ON_IO_ERROR_PASS_ON && mode != RM_ON_IO_ERROR_FAIL_OVER)
        return -EINVAL;
    __atomic_store_n(&dev->on_io_error, mode, __ATOMIC_RELEASE);
    return 0;
}

int device_fails_over(struct rm_device *dev)
{
    return __atomic_load_n(&dev->on_io_error, __ATOMIC_ACQUIRE) == RM_ON_IO_ERROR_FAIL_OVER;
}

int device_disk_failed(struct rm_device *dev)
{
    return __atomic_load_n(&dev->disk_failed, __ATOMIC_SEQ_CST);
}

void device_set_disk_failed(struct rm_device *dev, int failed)
{
    pthread_mutex_lock(&dev->fail_lock);
    __atomic_store_n(&dev->disk_failed, failed != 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&dev->fail_lock);
}

int device_enter_remote_only(struct rm_device *dev)
{
    int failed;

    if (!device_disk_failed(dev))
        return 0;                 /* handing back takes the lock; a stale 1 is re-checked */
    pthread_mutex_lock(&dev->fail_lock);
    failed = device_disk_failed(dev);
    if (failed)
        dev->remote_writes++;
    pthread_mutex_unlock(&dev->fail_lock);
    return failed;
}

uint64_t device_remote_writes(struct rm_device *dev)
{
    uint64_t n;

    pthread_mutex_lock(&dev->fail_lock);
    n = dev->remote_writes;
    pthread_mutex_unlock(&dev->fail_lock);
    return n;
}

int device_reuse_disk(struct rm_device *dev, uint64_t since)
{
    int rc = -EAGAIN;

    pthread_mutex_lock(&dev->fail_lock);
    if (dev->remote_writes == since) {
        __atomic_store_n(&dev->disk_failed, 0, __ATOMIC_SEQ_CST);
        rc = 0;
    }
    pthread_mutex_unlock(&dev->fail_lock);
    return rc;
}

static int read_range(struct rm_device *dev, void *buf, uint32_t count, uint64_t offset, int counted)
{
    char *p = buf;

    while (count > 0) {
        ssize_t n = LOWER_IO(dev, pread(dev->fd, p, count, (off_t)offset));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(dev, errno, offset, count);
        }
        if (n == 0) {
            /* Past the end of a short backing file: the device reads as zeroes. */
            memset(p, 0, count);
            n = count;
        }
        p += n;
        offset += (uint64_t)n;
        count -= (uint32_t)n;
        if (counted)
            STAT_ADD(dev, bytes_read, (uint64_t)n);
    }
    if (counted)
        STAT_ADD(dev, reads, 1);
    return 0;
}

int device_pread(struct rm_device *dev, void *buf, uint32_t count, uint64_t offset)
{
    return read_range(dev, buf, count, offset, 1);
}

int device_read_internal(struct rm_device *dev, void *buf, uint32_t count, uint64_t offset)
{
    return read_range(dev, buf, count, offset, 0);
}

const unsigned char *device_view(struct rm_device *dev, uint64_t offset, uint32_t count)
{
    const unsigned char *v = __atomic_load_n(&dev->view, __ATOMIC_ACQUIRE);

    if (!v) {
        pthread_mutex_lock(&dev->view_lock);
        if (!dev->view && !dev->view_failed) {
            struct stat st;
            void *p = MAP_FAILED;
            if (!dev->is_block_device && fstat(dev->fd, &st) == 0 && st.st_size > 0) {
                uint64_t size = device_size(dev);
                uint64_t len = (uint64_t)st.st_size < size ? (uint64_t)st.st_size : size;
                p = mmap(NULL, len, PROT_READ, MAP_SHARED, dev->fd, 0);
                if (p != MAP_FAILED)
                    dev->view_len = len;
            }
            if (p == MAP_FAILED)
                dev->view_failed = 1;
            else
                __atomic_store_n(&dev->view, (const unsigned char *)p, __ATOMIC_RELEASE);
        }
        v = dev->view;
        pthread_mutex_unlock(&dev->view_lock);
    }
    if (!v || offset > dev->view_len || count > dev->view_len - offset)
        return NULL;
    return v + offset;
}

int device_flush(struct rm_device *dev)
{
    if (LOWER_IO(dev, fdatasync(dev->fd)) < 0)
        return io_error(dev, errno, 0, 0);
    return 0;
}

int device_pwrite(struct rm_device *dev, const void *buf, uint32_t count, uint64_t offset, int fua)
{
    const char *p = buf;
    uint64_t start = offset;
    uint32_t total = count;

    while (count > 0) {
        ssize_t n = LOWER_IO(dev, pwrite(dev->fd, p, count, (off_t)offset));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(dev, errno, start, total);
        }
        p += n;
        offset += (uint64_t)n;
        count -= (uint32_t)n;
        STAT_ADD(dev, bytes_written, (uint64_t)n);
    }
    STAT_ADD(dev, writes, 1);
    return fua ? device_flush(dev) : 0;
}

static int write_zero_buffer(struct rm_device *dev, uint32_t count, uint64_t offset)
{
    static const char zeroes[65536];

    while (count > 0) {
        uint32_t chunk = count < sizeof zeroes ? count : (uint32_t)sizeof zeroes;
        ssize_t n = LOWER_IO(dev, pwrite(dev->fd, zeroes, chunk, (off_t)offset));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(dev, errno, offset, count);
        }
        offset += (uint64_t)n;
        count -= (uint32_t)n;
    }
    return 0;
}

static int is_unsupported(int err)
{
    return err == EOPNOTSUPP || err == ENOTTY || err == EINVAL || err == ENOSYS;
}

/* Discard: advisory in NBD, so an fd that cannot punch holes simply keeps its data. */
int device_trim(struct rm_device *dev, uint32_t count, uint64_t offset, int fua)
{
    STAT_ADD(dev, trims, 1);
    if (count == 0)
        return 0;
    if (dev->is_block_device) {
        uint64_t range[2] = { offset, count };
        if (ioctl(dev->fd, BLKDISCARD, range) < 0 && !is_unsupported(errno))
            return io_error(dev, errno, offset, count);
    } else if (__atomic_load_n(&dev->can_punch, __ATOMIC_RELAXED)) {
        if (LOWER_IO(dev, fallocate(dev->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count)) < 0) {
            if (!is_unsupported(errno))
                return io_error(dev, errno, offset, count);
            __atomic_store_n(&dev->can_punch, 0, __ATOMIC_RELAXED);
        }
    }
    return fua ? device_flush(dev) : 0;
}

/* Write zeroes: try the cheapest method the fd supports, always ending with real zeroes.
 * may_trim (no NBD_CMD_FLAG_NO_HOLE) allows punching a hole, which reads back as zeroes. */
int device_zero(struct rm_device *dev, uint32_t count, uint64_t offset, int may_trim, int fua)
{
    int rc;

    STAT_ADD(dev, zeroes, 1);
    if (count == 0)
        return 0;
    if (dev->is_block_device) {
        uint64_t range[2] = { offset, count };
        if (ioctl(dev->fd, BLKZEROOUT, range) == 0)
            goto done;
        if (!is_unsupported(errno))
            return io_error(dev, errno, offset, count);
    } else {
        if (may_trim && __atomic_load_n(&dev->can_punch, __ATOMIC_RELAXED)) {
            if (LOWER_IO(dev, fallocate(dev->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count)) == 0)
                goto done;
            if (!is_unsupported(errno))
                return io_error(dev, errno, offset, count);
            __atomic_store_n(&dev->can_punch, 0, __ATOMIC_RELAXED);
        }
        if (__atomic_load_n(&dev->can_zero_range, __ATOMIC_RELAXED)) {
            if (LOWER_IO(dev, fallocate(dev->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count)) == 0)
                goto done;
            if (!is_unsupported(errno))
                return io_error(dev, errno, offset, count);
            __atomic_store_n(&dev->can_zero_range, 0, __ATOMIC_RELAXED);
        }
    }
    rc = write_zero_buffer(dev, count, offset);
    if (rc < 0)
        return rc;
done:
    return fua ? device_flush(dev) : 0;
}

/* Move `in` bytes from the pipe to the disk at *off. Keeps the stream in step on a disk error
 * (drains what the pipe holds) and returns that error once; 0 otherwise. */
static int pipe_to_disk(struct rm_device *dev, int pipefd[2], uint64_t *off, size_t in, uint64_t start, uint64_t total)
{
    int rc = 0;

    while (in > 0) {
        loff_t pos = (loff_t)*off;
        ssize_t out = LOWER_IO(dev, splice(pipefd[0], NULL, dev->fd, &pos, in, SPLICE_F_MOVE));
        if (out < 0 && errno == EINTR)
            continue;
        if (out <= 0) {
            char sink[65536];
            ssize_t n = read(pipefd[0], sink, in < sizeof sink ? in : sizeof sink);
            if (rc == 0)
                rc = io_error(dev, out < 0 ? errno : EIO, start, total);
            out = n > 0 ? n : (ssize_t)in;
        } else {
            STAT_ADD(dev, bytes_written, (uint64_t)out);
        }
        *off += (uint64_t)out;
        in -= (size_t)out;
    }
    return rc;
}

/* The part of a payload already read with its header goes first: counted as part of the one
 * write request that finish_write() counts. */
static int write_prefix(struct rm_device *dev, const void *prefix, uint32_t have, uint64_t offset)
{
    int rc = have ? device_pwrite(dev, prefix, have, offset, 0) : 0;

    if (have && rc == 0)
        __atomic_fetch_sub(&dev->stats.writes, 1, __ATOMIC_RELAXED);
    return rc;
}

static int finish_write(struct rm_device *dev, int rc, int fua)
{
    if (rc == 0) {
        STAT_ADD(dev, writes, 1);
        if (fua)
            rc = device_flush(dev);
    }
    return rc;
}

/* ---- the duplicate of a spliced payload (struct rm_keep) ---- */

void device_keep_init(struct rm_keep *k)
{
    memset(k, 0, sizeof *k);
    k->pipe[0] = k->pipe[1] = k->null_fd = -1;
}

/* The duplicate's pipe: non-blocking (a full duplicate is spilled, never waited for), and as
 * large as we may make it. A buffer per received segment: a 1 MiB payload over TCP without GRO
 * is ~725 of them, more than the 256 of a 1 MiB pipe; above pipe-max-size needs
 * CAP_SYS_RESOURCE (replicad runs as root), else the pipe stays at transport_open_pipe's. */
#define KEEP_PIPE_SIZE (4 * 1024 * 1024)

static int keep_open_pipe(struct rm_keep *k)
{
    int rc = transport_open_pipe(k->pipe);

    if (rc < 0) {
        k->pipe[0] = k->pipe[1] = -1;
        return rc;
    }
    fcntl(k->pipe[1], F_SETPIPE_SZ, KEEP_PIPE_SIZE);   /* best effort */
    fcntl(k->pipe[1], F_SETFL, O_NONBLOCK);
    return 0;
}

int device_keep_open(struct rm_keep *k)
{
    int rc;

    if (k->pipe[0] >= 0)
        return 0;
    if (k->null_fd < 0 && (k->null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC)) < 0)
        return -errno;
    rc = keep_open_pipe(k);
    return rc < 0 ? rc : 0;
}

void device_keep_close(struct rm_keep *k)
{
    if (k->pipe[0] >= 0) {
        close(k->pipe[0]);
        close(k->pipe[1]);
    }
    if (k->null_fd >= 0)
        close(k->null_fd);
    free(k->buf);
    device_keep_init(k);
}

/* Throw the duplicate away (splice to /dev/null: the pages are released, nothing is copied). */
static void keep_drop(struct rm_keep *k)
{
    while (k->piped > 0) {
        ssize_t n = splice(k->pipe[0], NULL, k->null_fd, NULL, k->piped, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* cannot happen with /dev/null; a pipe we cannot empty must not leak into the next
             * payload, so it is replaced */
            close(k->pipe[0]);
            close(k->pipe[1]);
            keep_open_pipe(k);     /* -1 on failure: device_keep_open tries again */
            break;
        }
        k->piped -= (uint32_t)n;
    }
    k->piped = 0;
    k->spilled = 0;
}

/* Move the duplicate from the pipe to buf (a copy), after the prefix's place and what was
 * spilled before. 0, or -errno (the duplicate is then incomplete). */
static int keep_spill(struct rm_keep *k, uint32_t have, uint32_t length)
{
    if (k->cap < length) {
        unsigned char *b = realloc(k->buf, length);
        if (!b)
            return -ENOMEM;
        k->buf = b;
        k->cap = length;
    }
    while (k->piped > 0) {
        ssize_t n = read(k->pipe[0], k->buf + have + k->spilled, k->piped);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        k->piped -= (uint32_t)n;
        k->spilled += (uint32_t)n;
    }
    return 0;
}

/* The `in` bytes at the front of the pipe into the duplicate: tee(2) while the disk takes them
 * (the pipe keeps them for pipe_to_disk), moved by splice once the disk has failed (nothing is
 * written to it any more). -errno when no duplicate could be kept. */
static int keep_chunk(struct rm_device *dev, int pipefd[2], struct rm_keep *k, int disk_ok, uint64_t *off, size_t in,
                      uint32_t have, uint64_t start, uint32_t length, int *rc)
{
    while (in > 0) {
        ssize_t n = disk_ok ? tee(pipefd[0], k->pipe[1], in, SPLICE_F_NONBLOCK)
                            : splice(pipefd[0], NULL, k->pipe[1], NULL, in, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN && k->piped > 0) {   /* the duplicate's pipe is full */
            int r = keep_spill(k, have, length);
            if (r < 0)
                return r;
            continue;
        }
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        k->piped += (uint32_t)n;
        if (disk_ok) {
            int prc = pipe_to_disk(dev, pipefd, off, (size_t)n, start, length);
            if (*rc == 0)
                *rc = prc;
            disk_ok = *rc == 0;
        } else {
            *off += (uint64_t)n;
        }
        in -= (size_t)n;
    }
    return 0;
}

/* Stream `length` bytes arriving on `sock` to the disk at `offset`, the first `have` of them
 * already received into `prefix`. splice(2) moves the socket's pages into the pipe and copies
 * them once into the page cache, where recv + pwrite would copy twice, and bytes reach the disk
 * as they arrive, so the copy overlaps the sender's (any length: the pipe is drained as it
 * fills). A torn payload is covered by the Primary's bitmap or activity log on the peer link;
 * the NBD frontend sends what reached its disk on to the peer.
 *
 * Returns 0 with the local write's result in *write_rc once the stream is consumed, or a
 * negative errno when the socket failed, with *write_rc for what arrived and, when `applied` is
 * given, how many bytes from `offset` on were written (or failed to be). With `k`, a duplicate
 * of the payload is kept (struct rm_keep). */
static int splice_write(struct rm_device *dev, struct rm_transport *t, int pipefd[2], const void *prefix,
                        uint32_t have, uint64_t offset, uint32_t length, int fua, int *write_rc,
                        uint32_t *applied, struct rm_spin *spin, struct rm_keep *k)
{
    uint64_t off = offset + have;
    uint32_t left = length - have;
    int rc = write_prefix(dev, prefix, have, offset);

    if (k) {
        keep_drop(k);              /* empty already, unless a previous payload left one */
        k->whole = 0;
        if (k->pipe[0] < 0)
            k = NULL;
    }
    while (left > 0) {
        transport_spin_for_data(t, spin);
        ssize_t in = t->ops->splice_to_pipe(t, pipefd[1], left);
        if (in == -EINTR)
            continue;
        if (in <= 0) {
            int err = in == 0 ? ECONNRESET : (int)-in;
            if (k)
                keep_drop(k);
            *write_rc = finish_write(dev, rc, 0);
            if (applied)
                *applied = length - left;
            return -err;
        }
        left -= (uint32_t)in;
        if (k && keep_chunk(dev, pipefd, k, rc == 0, &off, (size_t)in, have, offset, length, &rc) < 0) {
            /* No duplicate after all (out of memory): what is still in the pipe goes on as
             * without one, and a failure is answered as such. */
            size_t rest = (size_t)(offset + length - left - off);   /* this chunk's, still in the pipe */
            keep_drop(k);
            k = NULL;
            if (rest) {
                int prc = pipe_to_disk(dev, pipefd, &off, rest, offset, length);
                if (rc == 0)
                    rc = prc;
            }
            continue;
        }
        if (!k) {
            int prc = pipe_to_disk(dev, pipefd, &off, (size_t)in, offset, length);
            if (rc == 0)
                rc = prc;
        }
    }
    *write_rc = finish_write(dev, rc, fua);
    if (k) {
        if (*write_rc < 0 && keep_spill(k, have, length) == 0 && have + k->spilled == length) {
            if (have)
                memcpy(k->buf, prefix, have);
            k->whole = 1;
        }
        keep_drop(k);
    }
    if (applied)
        *applied = length;
    return 0;
}

int device_splice_write(struct rm_device *dev, struct rm_transport *t, int pipefd[2], const void *prefix,
                        uint32_t have, uint64_t offset, uint32_t length, int fua, int *write_rc,
                        uint32_t *applied, struct rm_spin *spin)
{
    return splice_write(dev, t, pipefd, prefix, have, offset, length, fua, write_rc, applied, spin, NULL);
}

int device_splice_write_keep(struct rm_device *dev, struct rm_transport *t, int pipefd[2], const void *prefix,
                             uint32_t have, uint64_t offset, uint32_t length, int fua, int *write_rc,
                             uint32_t *applied, struct rm_spin *spin, struct rm_keep *k)
{
    return splice_write(dev, t, pipefd, prefix, have, offset, length, fua, write_rc, applied, spin, k);
}

/* Send [offset, offset + length) of the backing disk to `t` straight from the page cache.
 * Returns 0, or -errno (-EIO when the backing file ends early); *sent counts what went out. */
int device_send_range(struct rm_device *dev, struct rm_transport *t, uint64_t offset, uint64_t length,
                      uint64_t *sent)
{
    return LOWER_IO(dev, transport_sendfile_all(t, dev->fd, offset, length, sent));
}

void device_report_error(struct rm_device *dev, int err, uint64_t offset, uint64_t length)
{
    STAT_ADD(dev, io_errors, 1);
    __atomic_store_n(&dev->stats.last_errno, err, __ATOMIC_RELAXED);
    device_post_event(dev, RM_EV_IO_ERROR, err, offset, length);
}

void device_count_remote_write(struct rm_device *dev)
{
    pthread_mutex_lock(&dev->fail_lock);
    dev->remote_writes++;
    pthread_mutex_unlock(&dev->fail_lock);
}

/* After RM_EV_OVERFLOW: post AL_MISS again for every extent a writer still waits for (asked
 * and cold), so a miss dropped with the overflow is not a writer waiting forever. */
int device_al_rescan(struct rm_device *dev)
{
    uint64_t e, n = 0;

    pthread_mutex_lock(&dev->al_lock);
    if (!dev->al_hot) {
        pthread_mutex_unlock(&dev->al_lock);
        return 0;
    }
    for (e = 0; e < __atomic_load_n(&dev->al_nextents, __ATOMIC_ACQUIRE); e++) {
        uint64_t bit = 1ull << (e & 63);
        if ((dev->al_asked[e >> 6] & bit) && !(dev->al_hot[e >> 6] & bit)) {
            pthread_mutex_unlock(&dev->al_lock);   /* ev_lock is never taken under al_lock */
            device_post_event(dev, RM_EV_AL_MISS, 0, e, 1);
            n++;
            pthread_mutex_lock(&dev->al_lock);
        }
    }
    pthread_mutex_unlock(&dev->al_lock);
    return (int)(n > 0x7fffffff ? 0x7fffffff : n);
}
