/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The engine: one per resource. Owns the backing fd and the counters, and performs the local
 * half of every request (pread/pwrite/fdatasync/fallocate). Frontends (NBD, later FUSE) validate
 * nothing themselves beyond framing: range and permission checks live here, once. */
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
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mirror.h"
#include "mirror_internal.h"

rm_engine *rm_engine_new(int backing_fd, uint64_t size, int flags)
{
    struct stat st;
    rm_engine *eng;

    if (fstat(backing_fd, &st) < 0)
        return NULL;
    eng = calloc(1, sizeof *eng);
    if (!eng)
        return NULL;
    eng->fd = backing_fd;
    eng->size = size;
    eng->read_only = (flags & RM_ENGINE_READ_ONLY) != 0;
    eng->is_block_device = S_ISBLK(st.st_mode);
    /* Assume both hole punching and zero ranges work until the kernel says otherwise. */
    eng->can_punch = 1;
    eng->can_zero_range = 1;
    pthread_mutex_init(&eng->lock, NULL);
    pthread_mutex_init(&eng->al_lock, NULL);
    pthread_cond_init(&eng->al_cond, NULL);
    pthread_mutex_init(&eng->ev_lock, NULL);
    pthread_mutex_init(&eng->fail_lock, NULL);
    if (pipe2(eng->ev_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        free(eng);
        return NULL;
    }
    eng->al_nextents = (size + RM_AL_EXTENT_SIZE - 1) / RM_AL_EXTENT_SIZE;
    eng->al_refs = calloc(eng->al_nextents + 1, sizeof *eng->al_refs);
    peer_init(&eng->peer);
    if (!eng->al_refs || !eng->peer.sbuf || !eng->peer.slots) {
        rm_engine_free(eng);
        return NULL;
    }
    return eng;
}

void rm_engine_free(rm_engine *eng)
{
    if (!eng)
        return;
    rm_peer_detach(eng);
    peer_destroy(&eng->peer);
    pthread_mutex_destroy(&eng->lock);
    pthread_mutex_destroy(&eng->al_lock);
    pthread_cond_destroy(&eng->al_cond);
    pthread_mutex_destroy(&eng->ev_lock);
    pthread_mutex_destroy(&eng->fail_lock);
    close(eng->ev_pipe[0]);
    close(eng->ev_pipe[1]);
    free(eng->al_hot);
    free(eng->al_asked);
    free(eng->al_refs);
    free(eng->clients);
    free(eng);
}

void rm_engine_set_read_only(rm_engine *eng, int read_only)
{
    __atomic_store_n(&eng->read_only, read_only != 0, __ATOMIC_RELEASE);
}

#define LOAD(field) __atomic_load_n(&eng->stats.field, __ATOMIC_RELAXED)

void rm_engine_get_stats(rm_engine *eng, rm_stats *out)
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
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- events to Python: a queue, and a pipe byte per event so Python can poll ---- */

void engine_post_event(rm_engine *eng, int type, int err, uint64_t offset, uint64_t length)
{
    char byte = 1;

    pthread_mutex_lock(&eng->ev_lock);
    if (eng->ev_count < sizeof eng->ev_queue / sizeof eng->ev_queue[0]) {
        rm_event *ev = &eng->ev_queue[(eng->ev_head + eng->ev_count) % (sizeof eng->ev_queue / sizeof eng->ev_queue[0])];
        ev->type = type;
        ev->err = err;
        ev->offset = offset;
        ev->length = length;
        eng->ev_count++;
    }
    pthread_mutex_unlock(&eng->ev_lock);
    if (write(eng->ev_pipe[1], &byte, 1) < 0) {
        /* pipe full: Python is behind, and will find the queue non-empty anyway */
    }
}

int rm_engine_event_fd(rm_engine *eng)
{
    return eng->ev_pipe[0];
}

int rm_engine_next_event(rm_engine *eng, rm_event *out)
{
    char byte;
    int got = 0;

    pthread_mutex_lock(&eng->ev_lock);
    if (eng->ev_count) {
        *out = eng->ev_queue[eng->ev_head];
        eng->ev_head = (eng->ev_head + 1) % (sizeof eng->ev_queue / sizeof eng->ev_queue[0]);
        eng->ev_count--;
        got = 1;
    }
    pthread_mutex_unlock(&eng->ev_lock);
    if (read(eng->ev_pipe[0], &byte, 1) < 0) {
        /* empty: fine */
    }
    return got;
}

/* ---- dirty bitmap: shared words, atomic bit operations ---- */

int rm_engine_set_bitmap(rm_engine *eng, void *words, uint64_t nbits)
{
    if (nbits < (eng->size + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE)
        return -EINVAL;
    __atomic_store_n(&eng->bm_nbits, nbits, __ATOMIC_RELAXED);
    __atomic_store_n(&eng->bm_words, (uint64_t *)words, __ATOMIC_RELEASE);
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
static uint64_t bits_update(rm_engine *eng, uint64_t first, uint64_t last_excl, int set)
{
    uint64_t *words = __atomic_load_n(&eng->bm_words, __ATOMIC_ACQUIRE);
    uint64_t changed = 0;

    if (!words)
        return 0;
    if (last_excl > eng->bm_nbits)
        last_excl = eng->bm_nbits;
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
void engine_mark_dirty(rm_engine *eng, uint64_t offset, uint64_t length)
{
    uint64_t first, last;

    if (length == 0)
        return;
    first = offset / RM_BLOCK_SIZE;
    last = (offset + length + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE;
    STAT_ADD(eng, dirty_marked, bits_update(eng, first, last, 1));
}

/* Only blocks the range covers entirely are in sync now (the device's last block may be short). */
void engine_clear_dirty(rm_engine *eng, uint64_t offset, uint64_t length)
{
    uint64_t first = (offset + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE;
    uint64_t end = offset + length;
    uint64_t last = end >= eng->size ? (eng->size + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE : end / RM_BLOCK_SIZE;

    if (first < last)
        bits_update(eng, first, last, 0);
}

/* ---- activity log gating ---- */

int rm_engine_enable_al(rm_engine *eng)
{
    size_t words = (size_t)((eng->al_nextents + 63) / 64) + 1;

    pthread_mutex_lock(&eng->al_lock);
    if (!eng->al_hot) {
        eng->al_hot = calloc(words, sizeof(uint64_t));
        eng->al_asked = calloc(words, sizeof(uint64_t));
        if (!eng->al_hot || !eng->al_asked) {
            pthread_mutex_unlock(&eng->al_lock);
            return -ENOMEM;
        }
    }
    eng->al_enabled = 1;
    pthread_mutex_unlock(&eng->al_lock);
    return 0;
}

static int al_is_hot(rm_engine *eng, uint64_t e)
{
    return (eng->al_hot[e >> 6] >> (e & 63)) & 1;
}

int rm_al_set_hot(rm_engine *eng, uint64_t extent, int hot)
{
    pthread_mutex_lock(&eng->al_lock);
    if (!eng->al_hot || extent >= eng->al_nextents) {
        pthread_mutex_unlock(&eng->al_lock);
        return -EINVAL;
    }
    if (hot)
        eng->al_hot[extent >> 6] |= 1ull << (extent & 63);
    else
        eng->al_hot[extent >> 6] &= ~(1ull << (extent & 63));
    eng->al_asked[extent >> 6] &= ~(1ull << (extent & 63));
    pthread_cond_broadcast(&eng->al_cond);
    pthread_mutex_unlock(&eng->al_lock);
    return 0;
}

int rm_al_evict(rm_engine *eng, uint64_t extent, uint32_t timeout_ms)
{
    struct timespec until;
    int rc = rm_al_set_hot(eng, extent, 0);

    if (rc < 0)
        return rc;
    clock_gettime(CLOCK_REALTIME, &until);   /* al_cond's clock */
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&eng->al_lock);
    __atomic_add_fetch(&eng->al_evicting, 1, __ATOMIC_SEQ_CST);
    while (rc == 0 && __atomic_load_n(&eng->al_refs[extent], __ATOMIC_SEQ_CST))
        rc = -pthread_cond_timedwait(&eng->al_cond, &eng->al_lock, &until);
    if (rc == -ETIMEDOUT && !__atomic_load_n(&eng->al_refs[extent], __ATOMIC_SEQ_CST))
        rc = 0;
    __atomic_sub_fetch(&eng->al_evicting, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&eng->al_lock);
    return rc;
}

static void al_range(rm_engine *eng, uint64_t offset, uint64_t length, uint64_t *first, uint64_t *last)
{
    *first = offset / RM_AL_EXTENT_SIZE;
    *last = (offset + length - 1) / RM_AL_EXTENT_SIZE;
    if (*last >= eng->al_nextents)
        *last = eng->al_nextents - 1;
}

/* Before a write reaches the disk, every extent it touches must be in a committed AL
 * transaction, so that after a crash of this Primary only AL extents need a resync. The write
 * then holds a reference on those extents, so none leaves the AL while it is in flight. The
 * references are taken under al_lock once all extents are hot together: rm_al_evict marks an
 * extent cold under the same lock, so it either sees the reference or the writer sees it cold. */
void engine_al_begin(rm_engine *eng, uint64_t offset, uint64_t length)
{
    uint64_t e, first, last;
    int all_hot;

    if (length == 0 || eng->al_nextents == 0)
        return;
    al_range(eng, offset, length, &first, &last);
    if (!__atomic_load_n(&eng->al_enabled, __ATOMIC_ACQUIRE)) {
        for (e = first; e <= last; e++)
            __atomic_add_fetch(&eng->al_refs[e], 1, __ATOMIC_SEQ_CST);
        return;
    }
    pthread_mutex_lock(&eng->al_lock);
    do {
        all_hot = 1;
        for (e = first; e <= last; e++) {
            if (al_is_hot(eng, e))
                continue;
            STAT_ADD(eng, al_misses, 1);
            all_hot = 0;
            uint64_t bit = 1ull << (e & 63);
            while (eng->al_enabled && !al_is_hot(eng, e)) {
                if (!(eng->al_asked[e >> 6] & bit)) {
                    eng->al_asked[e >> 6] |= bit;
                    pthread_mutex_unlock(&eng->al_lock);
                    engine_post_event(eng, RM_EV_AL_MISS, 0, e, 1);
                    pthread_mutex_lock(&eng->al_lock);
                    continue;
                }
                pthread_cond_wait(&eng->al_cond, &eng->al_lock);
            }
        }
    } while (!all_hot && eng->al_enabled);   /* an earlier extent may have gone cold meanwhile */
    for (e = first; e <= last; e++)
        __atomic_add_fetch(&eng->al_refs[e], 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&eng->al_lock);
}

void engine_al_end(rm_engine *eng, uint64_t offset, uint64_t length)
{
    uint64_t e, first, last;
    int wake = 0;

    if (length == 0 || eng->al_nextents == 0)
        return;
    al_range(eng, offset, length, &first, &last);
    for (e = first; e <= last; e++)
        wake |= __atomic_sub_fetch(&eng->al_refs[e], 1, __ATOMIC_SEQ_CST) == 0;
    if (wake && __atomic_load_n(&eng->al_evicting, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&eng->al_lock);
        pthread_cond_broadcast(&eng->al_cond);
        pthread_mutex_unlock(&eng->al_lock);
    }
}

/* ---- client registry: lets `down` end every connection at once ---- */

int engine_add_client(rm_engine *eng, int fd)
{
    int rc = 0;

    pthread_mutex_lock(&eng->lock);
    if (eng->shutting_down) {
        rc = -ESHUTDOWN;
    } else {
        if (eng->nclients == eng->cap_clients) {
            size_t cap = eng->cap_clients ? eng->cap_clients * 2 : 8;
            int *p = realloc(eng->clients, cap * sizeof *p);
            if (!p) {
                rc = -ENOMEM;
                goto out;
            }
            eng->clients = p;
            eng->cap_clients = cap;
        }
        eng->clients[eng->nclients++] = fd;
        STAT_ADD(eng, connections, 1);
        STAT_ADD(eng, active_connections, 1);
    }
out:
    pthread_mutex_unlock(&eng->lock);
    return rc;
}

void engine_remove_client(rm_engine *eng, int fd)
{
    pthread_mutex_lock(&eng->lock);
    for (size_t i = 0; i < eng->nclients; i++) {
        if (eng->clients[i] == fd) {
            eng->clients[i] = eng->clients[--eng->nclients];
            __atomic_fetch_sub(&eng->stats.active_connections, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    pthread_mutex_unlock(&eng->lock);
}

int rm_engine_shutdown(rm_engine *eng)
{
    pthread_mutex_lock(&eng->lock);
    eng->shutting_down = 1;
    for (size_t i = 0; i < eng->nclients; i++)
        shutdown(eng->clients[i], SHUT_RDWR);
    pthread_mutex_unlock(&eng->lock);
    return 0;
}

/* ---- local I/O ---- */

static int io_error(rm_engine *eng, int err, uint64_t offset, uint64_t length)
{
    STAT_ADD(eng, io_errors, 1);
    __atomic_store_n(&eng->stats.last_errno, err, __ATOMIC_RELAXED);
    /* FAIL_OVER: out of use before anyone is told, so no later request reads this disk */
    if (__atomic_load_n(&eng->on_io_error, __ATOMIC_ACQUIRE) == RM_ON_IO_ERROR_FAIL_OVER)
        __atomic_store_n(&eng->disk_failed, 1, __ATOMIC_SEQ_CST);
    engine_post_event(eng, RM_EV_IO_ERROR, err, offset, length);
    return -err;
}

int rm_engine_set_on_io_error(rm_engine *eng, int mode)
{
    if (mode != RM_ON_IO_ERROR_PASS_ON && mode != RM_ON_IO_ERROR_FAIL_OVER)
        return -EINVAL;
    __atomic_store_n(&eng->on_io_error, mode, __ATOMIC_RELEASE);
    return 0;
}

int engine_disk_failed(rm_engine *eng)
{
    return __atomic_load_n(&eng->disk_failed, __ATOMIC_SEQ_CST);
}

int rm_engine_disk_failed(rm_engine *eng)
{
    return engine_disk_failed(eng);
}

void rm_engine_set_disk_failed(rm_engine *eng, int failed)
{
    pthread_mutex_lock(&eng->fail_lock);
    __atomic_store_n(&eng->disk_failed, failed != 0, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&eng->fail_lock);
}

int engine_enter_remote_only(rm_engine *eng)
{
    int failed;

    if (!engine_disk_failed(eng))
        return 0;                 /* handing back takes the lock; a stale 1 is re-checked */
    pthread_mutex_lock(&eng->fail_lock);
    failed = engine_disk_failed(eng);
    if (failed)
        eng->remote_writes++;
    pthread_mutex_unlock(&eng->fail_lock);
    return failed;
}

uint64_t rm_engine_remote_writes(rm_engine *eng)
{
    uint64_t n;

    pthread_mutex_lock(&eng->fail_lock);
    n = eng->remote_writes;
    pthread_mutex_unlock(&eng->fail_lock);
    return n;
}

int rm_engine_reuse_disk(rm_engine *eng, uint64_t since)
{
    int rc = -EAGAIN;

    pthread_mutex_lock(&eng->fail_lock);
    if (eng->remote_writes == since) {
        __atomic_store_n(&eng->disk_failed, 0, __ATOMIC_SEQ_CST);
        rc = 0;
    }
    pthread_mutex_unlock(&eng->fail_lock);
    return rc;
}

/* Range check shared by every request: NBD says EINVAL for reads/trims past the end and
 * ENOSPC for writes past the end (proto.md, "Request types"). */
int engine_check_range(rm_engine *eng, uint64_t offset, uint32_t count, int is_write)
{
    if (offset > eng->size || count > eng->size - offset) {
        STAT_ADD(eng, refused, 1);
        return is_write ? -ENOSPC : -EINVAL;
    }
    if (is_write && __atomic_load_n(&eng->read_only, __ATOMIC_ACQUIRE)) {
        STAT_ADD(eng, refused, 1);
        return -EPERM;
    }
    return 0;
}

int rm_engine_pread(rm_engine *eng, void *buf, uint32_t count, uint64_t offset)
{
    char *p = buf;
    int rc = engine_check_range(eng, offset, count, 0);

    if (rc < 0)
        return rc;
    while (count > 0) {
        ssize_t n = pread(eng->fd, p, count, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(eng, errno, offset, count);
        }
        if (n == 0) {
            /* Past the end of a short backing file: the device reads as zeroes. */
            memset(p, 0, count);
            n = count;
        }
        p += n;
        offset += (uint64_t)n;
        count -= (uint32_t)n;
        STAT_ADD(eng, bytes_read, (uint64_t)n);
    }
    STAT_ADD(eng, reads, 1);
    return 0;
}

int local_flush(rm_engine *eng)
{
    if (fdatasync(eng->fd) < 0)
        return io_error(eng, errno, 0, 0);
    return 0;
}

int local_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua)
{
    const char *p = buf;
    uint64_t start = offset;
    uint32_t total = count;

    while (count > 0) {
        ssize_t n = pwrite(eng->fd, p, count, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(eng, errno, start, total);
        }
        p += n;
        offset += (uint64_t)n;
        count -= (uint32_t)n;
        STAT_ADD(eng, bytes_written, (uint64_t)n);
    }
    STAT_ADD(eng, writes, 1);
    return fua ? local_flush(eng) : 0;
}

int rm_engine_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua)
{
    int rc = engine_check_range(eng, offset, count, 1);

    return rc < 0 ? rc : local_pwrite(eng, buf, count, offset, fua);
}

int rm_engine_flush(rm_engine *eng)
{
    STAT_ADD(eng, flushes, 1);
    return local_flush(eng);
}

static int write_zero_buffer(rm_engine *eng, uint32_t count, uint64_t offset)
{
    static const char zeroes[65536];

    while (count > 0) {
        uint32_t chunk = count < sizeof zeroes ? count : (uint32_t)sizeof zeroes;
        ssize_t n = pwrite(eng->fd, zeroes, chunk, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(eng, errno, offset, count);
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
int local_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua)
{
    STAT_ADD(eng, trims, 1);
    if (count == 0)
        return 0;
    if (eng->is_block_device) {
        uint64_t range[2] = { offset, count };
        if (ioctl(eng->fd, BLKDISCARD, range) < 0 && !is_unsupported(errno))
            return io_error(eng, errno, offset, count);
    } else if (__atomic_load_n(&eng->can_punch, __ATOMIC_RELAXED)) {
        if (fallocate(eng->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count) < 0) {
            if (!is_unsupported(errno))
                return io_error(eng, errno, offset, count);
            __atomic_store_n(&eng->can_punch, 0, __ATOMIC_RELAXED);
        }
    }
    return fua ? local_flush(eng) : 0;
}

int rm_engine_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua)
{
    int rc = engine_check_range(eng, offset, count, 1);

    if (rc < 0)
        return rc == -ENOSPC ? -EINVAL : rc;
    return local_trim(eng, count, offset, fua);
}

/* Write zeroes: try the cheapest method the fd supports, always ending with real zeroes.
 * may_trim (no NBD_CMD_FLAG_NO_HOLE) allows punching a hole, which reads back as zeroes. */
int local_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua)
{
    int rc;

    STAT_ADD(eng, zeroes, 1);
    if (count == 0)
        return 0;
    if (eng->is_block_device) {
        uint64_t range[2] = { offset, count };
        if (ioctl(eng->fd, BLKZEROOUT, range) == 0)
            goto done;
        if (!is_unsupported(errno))
            return io_error(eng, errno, offset, count);
    } else {
        if (may_trim && __atomic_load_n(&eng->can_punch, __ATOMIC_RELAXED)) {
            if (fallocate(eng->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count) == 0)
                goto done;
            if (!is_unsupported(errno))
                return io_error(eng, errno, offset, count);
            __atomic_store_n(&eng->can_punch, 0, __ATOMIC_RELAXED);
        }
        if (__atomic_load_n(&eng->can_zero_range, __ATOMIC_RELAXED)) {
            if (fallocate(eng->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count) == 0)
                goto done;
            if (!is_unsupported(errno))
                return io_error(eng, errno, offset, count);
            __atomic_store_n(&eng->can_zero_range, 0, __ATOMIC_RELAXED);
        }
    }
    rc = write_zero_buffer(eng, count, offset);
    if (rc < 0)
        return rc;
done:
    return fua ? local_flush(eng) : 0;
}

int rm_engine_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua)
{
    int rc = engine_check_range(eng, offset, count, 1);

    return rc < 0 ? rc : local_zero(eng, count, offset, may_trim, fua);
}

/* Move `in` bytes from the pipe to the disk at *off. Keeps the stream in step on a disk error
 * (drains what the pipe holds) and returns that error once; 0 otherwise. */
static int pipe_to_disk(rm_engine *eng, int pipefd[2], uint64_t *off, size_t in, uint64_t start, uint64_t total)
{
    int rc = 0;

    while (in > 0) {
        loff_t pos = (loff_t)*off;
        ssize_t out = splice(pipefd[0], NULL, eng->fd, &pos, in, SPLICE_F_MOVE);
        if (out < 0 && errno == EINTR)
            continue;
        if (out <= 0) {
            char sink[65536];
            ssize_t n = read(pipefd[0], sink, in < sizeof sink ? in : sizeof sink);
            if (rc == 0)
                rc = io_error(eng, out < 0 ? errno : EIO, start, total);
            out = n > 0 ? n : (ssize_t)in;
        } else {
            STAT_ADD(eng, bytes_written, (uint64_t)out);
        }
        *off += (uint64_t)out;
        in -= (size_t)out;
    }
    return rc;
}

/* The part of a payload already read with its header goes first: counted as part of the one
 * write request that finish_write() counts. */
static int write_prefix(rm_engine *eng, const void *prefix, uint32_t have, uint64_t offset)
{
    int rc = have ? local_pwrite(eng, prefix, have, offset, 0) : 0;

    if (have && rc == 0)
        __atomic_fetch_sub(&eng->stats.writes, 1, __ATOMIC_RELAXED);
    return rc;
}

static int finish_write(rm_engine *eng, int rc, int fua)
{
    if (rc == 0) {
        STAT_ADD(eng, writes, 1);
        if (fua)
            rc = local_flush(eng);
    }
    return rc;
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
 * given, how many bytes from `offset` on were written (or failed to be). */
int engine_splice_write(rm_engine *eng, int sock, int pipefd[2], const void *prefix, uint32_t have,
                        uint64_t offset, uint32_t length, int fua, int *write_rc, uint32_t *applied,
                        struct rm_spin *spin)
{
    uint64_t off = offset + have;
    uint32_t left = length - have;
    int rc = write_prefix(eng, prefix, have, offset);

    while (left > 0) {
        spin_for_data(sock, spin);
        ssize_t in = splice(sock, NULL, pipefd[1], NULL, left, SPLICE_F_MOVE);
        if (in < 0 && errno == EINTR)
            continue;
        if (in <= 0) {
            int err = in == 0 ? ECONNRESET : errno;
            *write_rc = finish_write(eng, rc, 0);
            if (applied)
                *applied = length - left;
            return -err;
        }
        left -= (uint32_t)in;
        int prc = pipe_to_disk(eng, pipefd, &off, (size_t)in, offset, length);
        if (rc == 0)
            rc = prc;
    }
    *write_rc = finish_write(eng, rc, fua);
    if (applied)
        *applied = length;
    return 0;
}

/* A thread asleep on a socket is woken by the sender, and on a virtual machine that wake-up (an
 * inter-processor interrupt) costs the sender tens of µs. In the middle of a payload the next
 * segment is usually a few µs away, so the receiver spins briefly first. Measured at 1 MiB QD16
 * from fio over a unix socket: the NBD reader slept 7 times per MiB, under 2 with a 10 µs spin
 * (about 3 spins in 4 find data), and protocol C went from 1929 to 2123 MiB/s (eight paired
 * runs). Spinning pays while at least a third of the spins find data, so a score tracks that
 * (+2 per spin that found data, -1 per spin in vain): at zero this reader sleeps at once, trying
 * a spin again every SPIN_PROBE waits (a slow network costs nothing). */
#define SPIN_NS 10000
#define SPIN_SCORE_MAX 32
#define SPIN_PROBE 32

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void spin_for_data(int sock, struct rm_spin *spin)
{
    uint64_t deadline = 0;
    int avail;

    while (ioctl(sock, FIONREAD, &avail) == 0 && avail == 0) {
        if (!deadline) {
            if (spin->score == 0 && ++spin->waits % SPIN_PROBE != 0)
                return;
            deadline = now_ns() + SPIN_NS;
        } else if (now_ns() > deadline) {
            if (spin->score > 0)
                spin->score--;
            return;
        }
        for (int i = 0; i < 16; i++)
            cpu_relax();
    }
    if (deadline)
        spin->score = spin->score + 2 > SPIN_SCORE_MAX ? SPIN_SCORE_MAX : spin->score + 2;
}

/* A pipe for splice, as large as the system allows up to 1 MiB; returns its capacity or -errno. */
int engine_open_pipe(int pipefd[2])
{
    int cap;

    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -errno;
    fcntl(pipefd[1], F_SETPIPE_SZ, 1024 * 1024);  /* best effort: fewer round trips per MiB */
    cap = fcntl(pipefd[1], F_GETPIPE_SZ);
    return cap > 0 ? cap : 65536;
}

/* Read exactly len bytes: first those already received in buf[*start, end), then straight from
 * the socket into dst. Returns 0, -ECONNRESET when the sender vanished midway, or -errno. */
int recv_exact_buffered(int fd, const void *buf, size_t *start, size_t end, void *dst, size_t len)
{
    size_t have = end - *start, take = have < len ? have : len;
    char *out = dst;

    memcpy(out, (const char *)buf + *start, take);
    *start += take;
    out += take;
    len -= take;
    while (len > 0) {
        ssize_t n = recv(fd, out, len, MSG_WAITALL);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        out += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Send [offset, offset + length) of the backing disk to `sock` straight from the page cache.
 * Returns 0, or -errno (-EIO when the backing file ends early); *sent counts what went out. */
int sendfile_range(rm_engine *eng, int sock, uint64_t offset, uint64_t length, uint64_t *sent)
{
    off_t off = (off_t)offset;

    *sent = 0;
    while (length > 0) {
        ssize_t n = sendfile(sock, eng->fd, &off, length > 0x7ffff000 ? 0x7ffff000 : (size_t)length);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        *sent += (uint64_t)n;
        length -= (uint64_t)n;
    }
    return 0;
}
