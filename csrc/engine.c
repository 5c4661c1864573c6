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
#include <sys/socket.h>
#include <sys/stat.h>
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
    return eng;
}

void rm_engine_free(rm_engine *eng)
{
    if (!eng)
        return;
    pthread_mutex_destroy(&eng->lock);
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

static int io_error(rm_engine *eng, int err)
{
    STAT_ADD(eng, io_errors, 1);
    __atomic_store_n(&eng->stats.last_errno, err, __ATOMIC_RELAXED);
    return -err;
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
            return io_error(eng, errno);
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

static int sync_data(rm_engine *eng)
{
    if (fdatasync(eng->fd) < 0)
        return io_error(eng, errno);
    return 0;
}

int rm_engine_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua)
{
    const char *p = buf;
    int rc = engine_check_range(eng, offset, count, 1);

    if (rc < 0)
        return rc;
    while (count > 0) {
        ssize_t n = pwrite(eng->fd, p, count, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return io_error(eng, errno);
        }
        p += n;
        offset += (uint64_t)n;
        count -= (uint32_t)n;
        STAT_ADD(eng, bytes_written, (uint64_t)n);
    }
    STAT_ADD(eng, writes, 1);
    return fua ? sync_data(eng) : 0;
}

int rm_engine_flush(rm_engine *eng)
{
    STAT_ADD(eng, flushes, 1);
    return sync_data(eng);
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
            return io_error(eng, errno);
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
int rm_engine_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua)
{
    int rc = engine_check_range(eng, offset, count, 1);

    if (rc < 0)
        return rc == -ENOSPC ? -EINVAL : rc;
    STAT_ADD(eng, trims, 1);
    if (count == 0)
        return 0;
    if (eng->is_block_device) {
        uint64_t range[2] = { offset, count };
        if (ioctl(eng->fd, BLKDISCARD, range) < 0 && !is_unsupported(errno))
            return io_error(eng, errno);
    } else if (__atomic_load_n(&eng->can_punch, __ATOMIC_RELAXED)) {
        if (fallocate(eng->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count) < 0) {
            if (!is_unsupported(errno))
                return io_error(eng, errno);
            __atomic_store_n(&eng->can_punch, 0, __ATOMIC_RELAXED);
        }
    }
    return fua ? sync_data(eng) : 0;
}

/* Write zeroes: try the cheapest method the fd supports, always ending with real zeroes.
 * may_trim (no NBD_CMD_FLAG_NO_HOLE) allows punching a hole, which reads back as zeroes. */
int rm_engine_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua)
{
    int rc = engine_check_range(eng, offset, count, 1);

    if (rc < 0)
        return rc;
    STAT_ADD(eng, zeroes, 1);
    if (count == 0)
        return 0;
    if (eng->is_block_device) {
        uint64_t range[2] = { offset, count };
        if (ioctl(eng->fd, BLKZEROOUT, range) == 0)
            goto done;
        if (!is_unsupported(errno))
            return io_error(eng, errno);
    } else {
        if (may_trim && __atomic_load_n(&eng->can_punch, __ATOMIC_RELAXED)) {
            if (fallocate(eng->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count) == 0)
                goto done;
            if (!is_unsupported(errno))
                return io_error(eng, errno);
            __atomic_store_n(&eng->can_punch, 0, __ATOMIC_RELAXED);
        }
        if (__atomic_load_n(&eng->can_zero_range, __ATOMIC_RELAXED)) {
            if (fallocate(eng->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)offset, count) == 0)
                goto done;
            if (!is_unsupported(errno))
                return io_error(eng, errno);
            __atomic_store_n(&eng->can_zero_range, 0, __ATOMIC_RELAXED);
        }
    }
    rc = write_zero_buffer(eng, count, offset);
    if (rc < 0)
        return rc;
done:
    return fua ? sync_data(eng) : 0;
}
