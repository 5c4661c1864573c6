/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The request layer (request.h): one path for every request that changes the disk, whichever
 * frontend parsed it, and the reads that may have to come from the peer. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "request.h"

/* ---- checks ---- */

/* Range check shared by every request: NBD says EINVAL for reads/trims past the end and
 * ENOSPC for writes past the end (proto.md, "Request types"). */
static int check_range(rm_engine *eng, uint64_t offset, uint32_t count, int is_write)
{
    if (!device_in_range(&eng->dev, offset, count)) {
        STAT_ADD(&eng->dev, refused, 1);
        return is_write ? -ENOSPC : -EINVAL;
    }
    if (is_write && device_is_read_only(&eng->dev)) {
        STAT_ADD(&eng->dev, refused, 1);
        return -EPERM;
    }
    return 0;
}

void request_count_refused(rm_engine *eng)
{
    STAT_ADD(&eng->dev, refused, 1);
}

void request_flush_peer(rm_engine *eng)
{
    conn_flush(&eng->conn);
}

/* ---- the local half and the frame ---- */

static int local_op(rm_engine *eng, const struct rm_request *req, const void *data, int fua)
{
    struct rm_device *dev = &eng->dev;

    switch (req->op) {
    case RM_OP_WRITE: return device_pwrite(dev, data, req->count, req->offset, fua);
    case RM_OP_TRIM: return device_trim(dev, req->count, req->offset, fua);
    case RM_OP_ZERO: return device_zero(dev, req->count, req->offset, req->may_trim, fua);
    default: STAT_ADD(dev, flushes, 1); return device_flush(dev);
    }
}

static void frame_for(struct rpl_header *h, uint64_t id, const struct rm_request *req)
{
    *h = (struct rpl_header){ .id = id, .offset = req->offset };
    switch (req->op) {
    case RM_OP_WRITE: h->type = RPL_DATA; h->length = req->count; break;
    case RM_OP_TRIM: h->type = RPL_TRIM; h->aux = req->count; break;
    case RM_OP_ZERO: h->type = RPL_ZEROES; h->aux = req->count; h->flags = req->may_trim ? 0 : RPL_FLAG_NO_HOLE; break;
    default: h->type = RPL_FLUSH; h->offset = 0; break;
    }
    if (req->fua)
        h->flags |= RPL_FLAG_FUA;
}

/* A request that will not reach the peer: its blocks are out of sync (marked before its AL
 * references go, so an eviction stores them), and it is done. */
static int unmirrored(rm_engine *eng, const struct rm_request *req)
{
    if (req->op != RM_OP_FLUSH) {
        device_mark_dirty(&eng->dev, req->offset, req->count);
        device_al_end(&eng->dev, req->offset, req->count);
    }
    return RM_SUBMIT_DONE;
}

/* After the send: the ack answers the origin (RM_SUBMIT_LATER) if the slot is still ours, the
 * request fully succeeded here and its protocol waits for the peer (!replied_now); otherwise
 * the caller answers now with *rc. A request that never reached the wire gives its slot back
 * and is out of sync. */
static int submit_finish(rm_engine *eng, uint64_t id, struct rm_origin *o, const struct rm_request *req,
                         int sent, int rc, int replied_now)
{
    int bound = conn_bind_slot(&eng->conn, id, o, req->cookie, sent, rc == 0 && !replied_now);

    if (bound == SLOT_RETURNED)
        unmirrored(eng, req);
    if (sent == 0 && req->op != RM_OP_FLUSH)
        STAT_ADD(&eng->dev, peer_writes_sent, 1);
    return bound == SLOT_BOUND ? RM_SUBMIT_LATER : RM_SUBMIT_DONE;
}

/* ---- a failed disk (mirror.h, on-io-error): requests served by the peer ---- */

/* Slot `id` is reserved and not on the wire: send the request as NOT_LOCAL (the peer marks its
 * blocks out of sync for us). Our own bitmap also records the blocks (a write that failed
 * here may have partly reached this disk). It succeeds only when the peer wrote it: a NEG_ACK
 * or a lost link answer EIO, since no disk has it then. */
static int retry_on_peer(rm_engine *eng, uint64_t id, struct rm_origin *o, const struct rm_request *req,
                         int *rc)
{
    struct rm_connection *c = &eng->conn;
    struct rpl_header h;
    int sent, ret;

    conn_mark_not_local(c, id);
    frame_for(&h, id, req);
    if (req->op != RM_OP_FLUSH) {
        h.flags |= RPL_FLAG_NOT_LOCAL;
        device_mark_dirty(&eng->dev, req->offset, req->count);
    }
    conn_slot_sent(c, id);
    sent = conn_send_frame(c, &h, req->data, 0);
    /* Protocol A answers at the send; otherwise the peer's ack (a flush: C's, as usual). */
    ret = submit_finish(eng, id, o, req, sent, 0,
                        (conn_protocol(c) == RM_PROTOCOL_A && req->op != RM_OP_FLUSH) ||
                        (req->op == RM_OP_FLUSH && conn_protocol(c) != RM_PROTOCOL_C));
    *rc = sent < 0 ? -EIO : 0;
    /* answered here: the peer may have refused it (NEG_ACK, link lost) before the origin was
     * attached */
    if (ret == RM_SUBMIT_DONE && sent == 0 && conn_slot_failed_remote(c, id))
        *rc = -EIO;
    return ret;
}

/* Without a peer there is nowhere to write: EIO (DRBD's on-no-data-accessible io-error). The
 * AL references taken by the caller are given back with the slot, as for any mirrored write. */
static int submit_remote_only(rm_engine *eng, struct rm_origin *o, const struct rm_request *req, int *rc)
{
    uint64_t id = conn_reserve_slot(&eng->conn, req->op == RM_OP_FLUSH, req->offset, req->count);

    if (id == NO_SLOT) {
        if (req->op != RM_OP_FLUSH) {
            device_mark_dirty(&eng->dev, req->offset, req->count);
            device_al_end(&eng->dev, req->offset, req->count);
        }
        *rc = -EIO;
        return RM_SUBMIT_DONE;
    }
    return retry_on_peer(eng, id, o, req, rc);
}

/* ---- the peer half ---- */

/* The peer half of a request whose local half succeeded. A WRITE with data == NULL takes its
 * payload from the disk it was just written to (sendfile: no copy through user space). The AL
 * references are given back here when it never reaches the peer, else when its slot finishes. */
static int mirror_to_peer(rm_engine *eng, struct rm_origin *o, const struct rm_request *req)
{
    struct rm_connection *c = &eng->conn;
    struct rpl_header h;
    uint64_t id;
    int sent;

    id = conn_reserve_slot(c, req->op == RM_OP_FLUSH, req->offset, req->count);
    if (id == NO_SLOT)
        return unmirrored(eng, req);
    frame_for(&h, id, req);
    conn_slot_sent(c, id);
    if (req->op == RM_OP_WRITE && req->data == NULL) {
        conn_send_lock(c);
        sent = conn_send_range_frame_locked(c, &h);
        conn_send_unlock(c);
    } else {
        sent = conn_send_frame(c, &h, req->data, 0);
    }
    /* Protocol A answers once the frame is handed to the transport; a flush waits for the
     * peer's stable storage only under protocol C. */
    return submit_finish(eng, id, o, req, sent, 0,
                         conn_protocol(c) == RM_PROTOCOL_A ||
                         (req->op == RM_OP_FLUSH && conn_protocol(c) != RM_PROTOCOL_C));
}

/* A request whose payload is in memory (or that has none), range-checked, AL held. */
static int submit_local_and_peer(rm_engine *eng, struct rm_origin *o, const struct rm_request *req, int *rc)
{
    struct rm_connection *c = &eng->conn;
    struct rpl_header h;
    uint64_t id;
    int r, sent;

    if (device_enter_remote_only(&eng->dev))
        return submit_remote_only(eng, o, req, rc);
    id = conn_reserve_slot(c, 0, req->offset, req->count);
    if (id == NO_SLOT) {                  /* no link: the local write alone, out of sync */
        *rc = r = local_op(eng, req, req->data, req->fua);
        if (r < 0) {
            device_mark_dirty(&eng->dev, req->offset, req->count);   /* it may have partly reached the disk */
            device_al_end(&eng->dev, req->offset, req->count);
            return RM_SUBMIT_DONE;        /* the client sees the error */
        }
        return unmirrored(eng, req);
    }
    /* The local write and the frame's place on the wire happen together under send_lock, so
     * the peer applies overlapping writes from different connections in the order they reached
     * this disk, as DRBD serializes conflicting requests. (Large writes need not: their frame
     * is read from the disk at send time.) FUA's flush waits until after the lock. */
    frame_for(&h, id, req);
    conn_send_lock(c);
    r = local_op(eng, req, req->data, 0);
    if (r < 0 && device_disk_failed(&eng->dev)) {
        /* The disk just failed (FAIL_OVER): this write goes to the peer alone. */
        conn_send_unlock(c);
        device_count_remote_write(&eng->dev);
        return retry_on_peer(eng, id, o, req, rc);
    }
    if (r == 0)
        conn_slot_sent(c, id);
    sent = r < 0 ? r : conn_send_frame_locked(c, &h, req->data);
    conn_send_unlock(c);
    if (r == 0 && req->fua)
        r = device_flush(&eng->dev);
    *rc = r;
    return submit_finish(eng, id, o, req, sent, r, conn_protocol(c) == RM_PROTOCOL_A);
}

/* ---- large writes streamed from the frontend's transport (write-behind) ---- */

/* Payload buffers above this size are released after use, to keep RSS small between bursts. */
#define KEEP_PAYLOAD (4 * 1024 * 1024)

/* The second half of a large write already on this disk: FUA's flush, then to the peer from
 * the page cache (or marked out of sync without a peer), or answered now. Known gap: a disk
 * that fails after this write reached it and before the peer half is read sends what the failed
 * disk reads (in tests/unit/test_mirror_io_error.py's FailingDisk, zeroes; a real disk's page
 * cache still holds the data, or the read fails). Closing it means sending the peer half from
 * the duplicate (struct rm_keep) instead, a connection.c call to splice a pipe to the peer. */
static int finish_streamed(rm_engine *eng, struct rm_origin *o, struct rm_wjob *j, int *rc)
{
    int wrc = j->wrc;

    if (wrc == 0 && j->req.fua)
        wrc = device_flush(&eng->dev);
    *rc = wrc;
    if (wrc < 0) {
        /* not mirrored: the client sees the error; the payload may have partly reached this
         * disk, so its blocks are out of sync */
        unmirrored(eng, &j->req);
        return RM_SUBMIT_DONE;
    }
    return mirror_to_peer(eng, o, &j->req);
}

/* Answer through the origin from the writer thread: the job holds one of its references. */
static void answer_job(struct rm_writeq *q, struct rm_wjob *j)
{
    int rc;

    if (finish_streamed(q->eng, q->origin, j, &rc) == RM_SUBMIT_DONE) {
        q->origin->complete(q->origin, j->req.cookie, rc);
        STAT_SUB(&q->eng->dev, upper_pending, 1);
    }
    q->origin->release(q->origin, 1);
}

static void *writer_main(void *arg)
{
    struct rm_writeq *q = arg;

    for (;;) {
        struct rm_wjob *j;

        pthread_mutex_lock(&q->lock);
        while (!q->count && !q->stop)
            pthread_cond_wait(&q->cond, &q->lock);
        if (!q->count) {
            pthread_mutex_unlock(&q->lock);
            return NULL;
        }
        j = &q->jobs[q->head];
        pthread_mutex_unlock(&q->lock);

        answer_job(q, j);

        pthread_mutex_lock(&q->lock);
        q->head = (q->head + 1) % WRITE_BEHIND;
        q->count--;
        pthread_cond_broadcast(&q->cond);
        pthread_mutex_unlock(&q->lock);
    }
}

void request_writeq_init(struct rm_writeq *q, rm_engine *eng, struct rm_origin *o)
{
    memset(q, 0, sizeof *q);
    q->eng = eng;
    q->origin = o;
    q->pipe[0] = q->pipe[1] = -1;
    device_keep_init(&q->keep);
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->cond, NULL);
}

static int start_writer(struct rm_writeq *q)
{
    if (q->writer_state)
        return q->writer_state > 0;
    q->writer_state = -1;
    if (transport_open_pipe(q->pipe) < 0)
        return 0;
    if (pthread_create(&q->writer, NULL, writer_main, q) != 0)
        return 0;
    q->writer_state = 1;
    return 1;
}

void request_writeq_destroy(struct rm_writeq *q)
{
    if (q->writer_state > 0) {
        pthread_mutex_lock(&q->lock);
        q->stop = 1;
        pthread_cond_broadcast(&q->cond);
        pthread_mutex_unlock(&q->lock);
        pthread_join(q->writer, NULL);   /* it finishes the queued jobs first */
    }
    if (q->pipe[0] >= 0) {
        close(q->pipe[0]);
        close(q->pipe[1]);
    }
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->lock);
    free(q->payload);
    device_keep_close(&q->keep);
}

/* Requests that change the disk outside the write-behind queue wait for it to empty, so an
 * origin's writes are applied in the order it submitted them. */
static void wait_writes(struct rm_writeq *q)
{
    if (!q || q->writer_state <= 0)
        return;
    pthread_mutex_lock(&q->lock);
    while (q->count)
        pthread_cond_wait(&q->cond, &q->lock);
    pthread_mutex_unlock(&q->lock);
}

/* The duplicate's buffer (spilled or recovered payloads) goes when large, as q->payload does. */
static void release_keep_buffer(struct rm_writeq *q)
{
    if (q->keep.cap > KEEP_PAYLOAD) {
        free(q->keep.buf);
        q->keep.buf = NULL;
        q->keep.cap = 0;
    }
}

/* A large write the disk refused as it failed (on-io-error detach): to the peer alone, from the
 * duplicate kept while it streamed, as retry_on_peer does for a write from memory. The origin's
 * earlier writes go first. Without a slot (the link went meanwhile) the client gets the local
 * error. The AL references taken for the stream go with the slot, or here. */
static int retry_spliced_on_peer(rm_engine *eng, struct rm_origin *o, struct rm_writeq *q,
                                 const struct rm_request *req, int wrc, int *rc)
{
    struct rm_request again = *req;
    uint64_t id;
    int ret;

    wait_writes(q);
    id = conn_reserve_slot(&eng->conn, 0, req->offset, req->count);
    if (id == NO_SLOT) {
        *rc = wrc;
        return unmirrored(eng, req);
    }
    device_count_remote_write(&eng->dev);
    again.data = q->keep.buf;
    ret = retry_on_peer(eng, id, o, &again, rc);   /* sent (or failed) by now: buf is free */
    release_keep_buffer(q);
    return ret;
}

/* A large write: streamed to the disk as it arrives (device_splice_write: one copy, made while
 * the client is still sending), then queued for the writer thread, which sends it to the peer
 * from the page cache while the frontend takes the next request. (Measured at 1 MiB QD16,
 * protocol C, eight paired runs: 2046 MiB/s against 1866 when the writer thread also did the
 * local write; the frontend thread had been spinning or asleep most of the time the client
 * sent.) AL references: taken for the whole range before the first byte lands. */
static int submit_spliced(rm_engine *eng, struct rm_origin *o, struct rm_writeq *q, const struct rm_request *req,
                          struct rm_stream *st, int *rc)
{
    uint32_t applied;
    struct rm_wjob *j;
    int r, avail, keep;

    pthread_mutex_lock(&q->lock);
    while (q->count == WRITE_BEHIND)
        pthread_cond_wait(&q->cond, &q->lock);
    j = &q->jobs[(q->head + q->count) % WRITE_BEHIND];   /* free: only we touch it now */
    pthread_mutex_unlock(&q->lock);

    j->req = *req;
    j->req.data = NULL;
    device_al_begin(&eng->dev, req->offset, req->count);
    /* on-io-error detach with a peer: keep a duplicate (tee, no copy) so that the write that
     * meets the disk's first failure is still served, by the peer. Not otherwise: pass_on
     * answers the error, and without a peer there is nowhere else to write. */
    keep = device_fails_over(&eng->dev) && conn_live(&eng->conn) && device_keep_open(&q->keep) == 0;
    r = device_splice_write_keep(&eng->dev, st->tp, q->pipe, st->prefix, st->have, req->offset, req->count, 0,
                                 &j->wrc, &applied, &q->spin, keep ? &q->keep : NULL);
    if (r < 0) {
        /* The client vanished mid-payload. What reached this disk goes to the peer as well (the
         * answer reaches nobody), so the two disks stay the same. */
        if (applied)
            device_al_begin(&eng->dev, req->offset, applied);   /* hot already: a subset of the extents */
        device_al_end(&eng->dev, req->offset, req->count);
        if (applied) {
            j->req.count = applied;
            j->req.fua = 0;
            wait_writes(q);
            finish_streamed(eng, o, j, rc);   /* its answer reaches nobody; the origin still
                                               * waits for the peer's ack before it goes away */
        }
        return r;
    }
    if (j->wrc < 0 && keep && q->keep.whole && device_disk_failed(&eng->dev))
        return retry_spliced_on_peer(eng, o, q, req, j->wrc, rc);
    release_keep_buffer(q);
    /* Inline when nothing more has come from the client (queue depth 1: a hand-off would only
     * add a wake-up); otherwise the writer thread takes it. */
    avail = st->tp->ops->readable(st->tp);
    if (avail == 0) {
        wait_writes(q);
        return finish_streamed(eng, o, j, rc);
    }
    __atomic_fetch_add(&o->inflight, 1, __ATOMIC_RELAXED);   /* the job's reference */
    pthread_mutex_lock(&q->lock);
    q->count++;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    return RM_SUBMIT_LATER;
}

/* A streamed payload that cannot be spliced (small, out of range, disk out of use...): read it
 * whole into the queue's buffer, then submit it as any other. */
static int read_stream(struct rm_writeq *q, struct rm_stream *st, uint32_t count, const void **data)
{
    size_t start = 0;
    int r;

    if (q->payload_cap < count) {
        free(q->payload);
        q->payload = malloc(count);
        q->payload_cap = q->payload ? count : 0;
        if (!q->payload)
            return -ENOMEM;
    }
    r = transport_recv_exact_buffered(st->tp, st->prefix, &start, st->have, q->payload, count);
    *data = q->payload;
    return r;
}

static int submit_request(rm_engine *eng, struct rm_origin *o, struct rm_writeq *q, const struct rm_request *req,
                          struct rm_stream *stream, int *rc)
{
    struct rm_request copy;
    int r, ret;

    device_wait_resumed(&eng->dev);     /* suspend-io while the fence-peer handler runs */
    if (stream && q && req->op == RM_OP_WRITE && req->count >= SPLICE_MIN && !device_disk_failed(&eng->dev) &&
        check_range(eng, req->offset, req->count, 1) == 0 && start_writer(q))
        return submit_spliced(eng, o, q, req, stream, rc);
    wait_writes(q);
    if (stream) {
        if (!q)
            return -EINVAL;
        copy = *req;
        r = read_stream(q, stream, req->count, &copy.data);
        if (r < 0)
            return r;
        req = &copy;
    }
    if (req->op == RM_OP_FLUSH && device_disk_failed(&eng->dev)) {
        ret = submit_remote_only(eng, o, req, rc);
    } else if (req->op == RM_OP_FLUSH) {
        *rc = r = local_op(eng, req, NULL, 0);
        ret = r < 0 ? RM_SUBMIT_DONE : mirror_to_peer(eng, o, req);
    } else if ((r = check_range(eng, req->offset, req->count, 1)) < 0) {
        *rc = (req->op == RM_OP_TRIM && r == -ENOSPC) ? -EINVAL : r;
        ret = RM_SUBMIT_DONE;
    } else {
        device_al_begin(&eng->dev, req->offset, req->count);
        ret = submit_local_and_peer(eng, o, req, rc);
    }
    if (q && q->payload_cap > KEEP_PAYLOAD) {
        free(q->payload);
        q->payload = NULL;
        q->payload_cap = 0;
    }
    return ret;
}

/* stats.upper_pending counts a request from here until it is answered: now (RM_SUBMIT_DONE,
 * or an error), or later by the one origin->complete() (connection.c finish_slot_locked, or
 * answer_job for write-behind), which takes it off there. */
int request_submit(rm_engine *eng, struct rm_origin *o, struct rm_writeq *q, const struct rm_request *req,
                   struct rm_stream *stream, int *rc)
{
    int ret;

    STAT_ADD(&eng->dev, upper_pending, 1);
    ret = submit_request(eng, o, q, req, stream, rc);
    if (ret != RM_SUBMIT_LATER)
        STAT_SUB(&eng->dev, upper_pending, 1);
    return ret;
}

/* ---- reads ---- */

static int read_request(rm_engine *eng, void *buf, uint32_t count, uint64_t offset)
{
    int r = count > RM_MAX_REQUEST ? -EINVAL : check_range(eng, offset, count, 0);

    if (r < 0)
        return r;
    if (!device_disk_failed(&eng->dev)) {
        r = device_pread(&eng->dev, buf, count, offset);
        if (r == 0 || !device_disk_failed(&eng->dev))
            return r;
    }
    /* The disk is out of use (on-io-error), or just failed under this read: the peer serves it. */
    return conn_remote_read(&eng->conn, buf, count, offset);
}

int request_read(rm_engine *eng, void *buf, uint32_t count, uint64_t offset)
{
    int r;

    STAT_ADD(&eng->dev, upper_pending, 1);
    r = read_request(eng, buf, count, offset);
    STAT_SUB(&eng->dev, upper_pending, 1);
    return r;
}

static int read_send(rm_engine *eng, struct rm_transport *t, const void *hdr, size_t hdr_len, uint64_t offset,
                     uint32_t count, int *fatal)
{
    struct iovec iov = { (void *)hdr, hdr_len };
    uint64_t sent = 0;
    int r = count > RM_MAX_REQUEST ? -EINVAL : check_range(eng, offset, count, 0);

    *fatal = 0;
    if (r < 0)
        return r;
    if (device_disk_failed(&eng->dev))
        return -EAGAIN;
    /* Once the header is out, a failing disk can only end the connection; the error is still
     * counted and reported to Python. */
    *fatal = 1;
    r = transport_send_all(t, &iov, 1, MSG_MORE, NULL);
    if (r < 0)
        return r;
    r = device_send_range(&eng->dev, t, offset, count, &sent);
    STAT_ADD(&eng->dev, bytes_read, sent);
    if (r < 0) {
        if (r == -EIO)
            device_report_error(&eng->dev, EIO, offset, count);
        return r;
    }
    STAT_ADD(&eng->dev, reads, 1);
    return 0;
}

int request_read_send(rm_engine *eng, struct rm_transport *t, const void *hdr, size_t hdr_len, uint64_t offset,
                      uint32_t count, int *fatal)
{
    int r;

    STAT_ADD(&eng->dev, upper_pending, 1);
    r = read_send(eng, t, hdr, hdr_len, offset, count, fatal);
    STAT_SUB(&eng->dev, upper_pending, 1);
    return r;
}

/* ---- client registry: lets `down` end every connection at once ---- */

int request_open_client(rm_engine *eng, struct rm_transport *t)
{
    int rc = 0;

    pthread_mutex_lock(&eng->lock);
    if (eng->shutting_down) {
        rc = -ESHUTDOWN;
    } else {
        if (eng->nclients == eng->cap_clients) {
            size_t cap = eng->cap_clients ? eng->cap_clients * 2 : 8;
            struct rm_transport **p = realloc(eng->clients, cap * sizeof *p);
            if (!p) {
                rc = -ENOMEM;
                goto out;
            }
            eng->clients = p;
            eng->cap_clients = cap;
        }
        eng->clients[eng->nclients++] = t;
        STAT_ADD(&eng->dev, connections, 1);
        STAT_ADD(&eng->dev, active_connections, 1);
    }
out:
    pthread_mutex_unlock(&eng->lock);
    return rc;
}

void request_close_client(rm_engine *eng, struct rm_transport *t)
{
    pthread_mutex_lock(&eng->lock);
    for (size_t i = 0; i < eng->nclients; i++) {
        if (eng->clients[i] == t) {
            eng->clients[i] = eng->clients[--eng->nclients];
            STAT_SUB(&eng->dev, active_connections, 1);
            break;
        }
    }
    pthread_mutex_unlock(&eng->lock);
}

int request_shutting_down(rm_engine *eng)
{
    return __atomic_load_n(&eng->shutting_down, __ATOMIC_RELAXED);
}
