/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The resource: the rm_engine object (a device, a connection, the client registry) and the
 * contract's entry points (mirror.h), each a thin call into the layer that owns it. Requests
 * from Python go through request_submit like a frontend's, with an origin that waits. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "digest.h"
#include "request.h"

rm_engine *rm_engine_new(int backing_fd, uint64_t size, int flags)
{
    rm_engine *eng = calloc(1, sizeof *eng);
    int rc;

    if (!eng)
        return NULL;
    pthread_mutex_init(&eng->lock, NULL);
    rc = device_init(&eng->dev, backing_fd, size, (flags & RM_ENGINE_READ_ONLY) != 0);
    if (rc == 0)
        rc = conn_init(&eng->conn, &eng->dev);
    if (rc < 0) {
        rm_engine_free(eng);
        errno = -rc;
        return NULL;
    }
    return eng;
}

void rm_engine_free(rm_engine *eng)
{
    if (!eng)
        return;
    if (eng->conn.dev)
        conn_destroy(&eng->conn);   /* detaches a peer link first */
    device_destroy(&eng->dev);
    pthread_mutex_destroy(&eng->lock);
    free(eng->clients);
    free(eng);
}

void rm_engine_set_read_only(rm_engine *eng, int read_only)
{
    __atomic_store_n(&eng->dev.read_only, read_only != 0, __ATOMIC_RELEASE);
}

void rm_engine_set_suspended(rm_engine *eng, int suspended)
{
    device_set_suspended(&eng->dev, suspended);
}

void rm_engine_get_stats(rm_engine *eng, rm_stats *out)
{
    device_get_stats(&eng->dev, out);
}

int rm_engine_shutdown(rm_engine *eng)
{
    pthread_mutex_lock(&eng->lock);
    eng->shutting_down = 1;
    device_set_suspended(&eng->dev, 0);     /* a request waiting in suspend-io goes on, and ends */
    for (size_t i = 0; i < eng->nclients; i++)
        eng->clients[i]->ops->shutdown(eng->clients[i], SHUT_RDWR);
    pthread_mutex_unlock(&eng->lock);
    return 0;
}

/* ---- requests from Python: an origin that waits for its one answer ---- */

struct sync_origin {
    struct rm_origin origin;   /* first */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int done;
    int rc;
};

static void sync_complete(struct rm_origin *o, const unsigned char cookie[8], int rc)
{
    struct sync_origin *s = (struct sync_origin *)o;

    (void)cookie;
    pthread_mutex_lock(&s->lock);
    s->rc = rc;
    s->done = 1;
    pthread_mutex_unlock(&s->lock);
}

static void sync_release(struct rm_origin *o, int n)
{
    struct sync_origin *s = (struct sync_origin *)o;

    pthread_mutex_lock(&s->lock);
    __atomic_sub_fetch(&o->inflight, n, __ATOMIC_ACQ_REL);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);   /* the waiter frees s only after taking the lock */
}

static int submit_sync(rm_engine *eng, const struct rm_request *req)
{
    struct sync_origin s = { .origin = { .complete = sync_complete, .release = sync_release } };
    int rc = 0;

    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    if (request_submit(eng, &s.origin, NULL, req, NULL, &rc) == RM_SUBMIT_LATER) {
        request_flush_peer(eng);
        pthread_mutex_lock(&s.lock);
        while (!s.done || __atomic_load_n(&s.origin.inflight, __ATOMIC_ACQUIRE) > 0)
            pthread_cond_wait(&s.cond, &s.lock);
        rc = s.rc;
        pthread_mutex_unlock(&s.lock);
    }
    pthread_cond_destroy(&s.cond);
    pthread_mutex_destroy(&s.lock);
    return rc;
}

int rm_engine_pwrite(rm_engine *eng, const void *buf, uint32_t count, uint64_t offset, int fua)
{
    return submit_sync(eng, &(struct rm_request){ .op = RM_OP_WRITE, .offset = offset, .count = count,
                                                  .fua = fua != 0, .data = buf });
}

int rm_engine_trim(rm_engine *eng, uint32_t count, uint64_t offset, int fua)
{
    return submit_sync(eng, &(struct rm_request){ .op = RM_OP_TRIM, .offset = offset, .count = count,
                                                  .fua = fua != 0, .may_trim = 1 });
}

int rm_engine_zero(rm_engine *eng, uint32_t count, uint64_t offset, int may_trim, int fua)
{
    return submit_sync(eng, &(struct rm_request){ .op = RM_OP_ZERO, .offset = offset, .count = count,
                                                  .fua = fua != 0, .may_trim = may_trim != 0 });
}

int rm_engine_pread(rm_engine *eng, void *buf, uint32_t count, uint64_t offset)
{
    return request_read(eng, buf, count, offset);
}

int rm_engine_flush(rm_engine *eng)
{
    STAT_ADD(&eng->dev, flushes, 1);
    return device_flush(&eng->dev);
}

/* ---- events, bitmap, activity log, disk failures: the device ---- */

int rm_engine_event_fd(rm_engine *eng)
{
    return eng->dev.ev_pipe[0];
}

int rm_engine_next_event(rm_engine *eng, rm_event *out)
{
    return device_next_event(&eng->dev, out);
}

int rm_engine_set_bitmap(rm_engine *eng, void *words, uint64_t nbits)
{
    return device_set_bitmap(&eng->dev, words, nbits);
}

int rm_engine_enable_al(rm_engine *eng)
{
    return device_enable_al(&eng->dev);
}

int rm_al_set_hot(rm_engine *eng, uint64_t extent, int hot)
{
    return device_al_set_hot(&eng->dev, extent, hot);
}

int rm_al_evict(rm_engine *eng, uint64_t extent, uint32_t timeout_ms)
{
    return device_al_evict(&eng->dev, extent, timeout_ms);
}

int rm_al_rescan(rm_engine *eng)
{
    return device_al_rescan(&eng->dev);
}

int rm_engine_set_on_io_error(rm_engine *eng, int mode)
{
    return device_set_on_io_error(&eng->dev, mode);
}

int rm_engine_disk_failed(rm_engine *eng)
{
    return device_disk_failed(&eng->dev);
}

void rm_engine_set_disk_failed(rm_engine *eng, int failed)
{
    device_set_disk_failed(&eng->dev, failed);
}

uint64_t rm_engine_remote_writes(rm_engine *eng)
{
    return device_remote_writes(&eng->dev);
}

int rm_engine_reuse_disk(rm_engine *eng, uint64_t since)
{
    return device_reuse_disk(&eng->dev, since);
}

/* ---- the peer link: the connection ---- */

int rm_peer_attach(rm_engine *eng, int fd, int protocol)
{
    return conn_attach(&eng->conn, fd, protocol);
}

int rm_peer_attach_tls(rm_engine *eng, int fd, rm_tls *s, int protocol)
{
    return conn_attach_tls(&eng->conn, fd, s, protocol);
}

int rm_peer_detach(rm_engine *eng)
{
    return conn_detach(&eng->conn);
}

int rm_peer_send_control(rm_engine *eng, const void *frame, uint32_t length)
{
    return conn_send_control(&eng->conn, frame, length);
}

int rm_peer_recv_control(rm_engine *eng, void *buf, uint32_t cap)
{
    return conn_recv_control(&eng->conn, buf, cap);
}

int rm_peer_ping(rm_engine *eng)
{
    return conn_ping(&eng->conn);
}

int rm_resync_send(rm_engine *eng, uint64_t offset, uint32_t length)
{
    return conn_resync_send(&eng->conn, offset, length);
}

int rm_peer_set_integrity(rm_engine *eng, int alg)
{
    return conn_set_integrity(&eng->conn, alg);
}

int rm_peer_set_max_buffers(rm_engine *eng, uint32_t n)
{
    return conn_set_max_buffers(&eng->conn, n);
}

int rm_verify_send(rm_engine *eng, int alg, uint64_t offset, uint32_t length)
{
    return conn_verify_send(&eng->conn, alg, offset, length);
}

int rm_resync_csum_send(rm_engine *eng, int alg, uint64_t offset, uint32_t length)
{
    return conn_resync_csum_send(&eng->conn, alg, offset, length);
}

int rm_digest_size(int alg)
{
    int n = digest_size(alg);

    return n > 0 ? n : -ENOENT;
}

int rm_digest(int alg, const void *buf, uint32_t length, unsigned char *out)
{
    return digest_compute(alg, buf, length, out);
}
