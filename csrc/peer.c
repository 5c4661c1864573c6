/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The peer link: every write accepted here also goes to the peer, and completes per protocol.
 *
 *   frontend thread                          receiver thread (one per link)
 *   ---------------                          ------------------------------
 *   local write (pwrite/fallocate)           recv frames, batched
 *   take a pending slot (id)                 DATA/TRIM/ZEROES/FLUSH: apply locally, queue ack
 *   frame -> send buffer (or writev)         RECV_ACK/WRITE_ACK/FLUSH_ACK: complete slot id
 *   A: answer now; B/C: answer later  <----  (origin->complete), NEG_ACK: + mark dirty
 *   flush send buffer before blocking        RS_DATA: write, clear bits, RS_DONE; RS_DONE: clear bits
 *                                            control frames (>= 0x40): queue for Python
 *
 * The local write happens before the frame is queued, and resync reads happen under the send
 * lock, so the peer sees every block's versions in the order this node wrote them: a resync
 * block can never overtake a newer application write to the same block.
 *
 * When the link fails the receiver sweeps every pending slot: its blocks are marked out of
 * sync and the origin gets its answer from the local write alone (a disconnected Primary keeps
 * serving). Later writes go to the bitmap until Python attaches a new link. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mirror.h"
#include "mirror_internal.h"
#include "wire.h"

#define SBUF_SIZE (256 * 1024)
#define SBUF_DIRECT 65536          /* larger payloads skip the send buffer (writev) */
#define RBUF_SIZE (256 * 1024)
#define MAX_RESYNC_CHUNK (8 * 1024 * 1024)
#define MAX_TOUCHED 64

void peer_init(struct rm_peer *p)
{
    memset(p, 0, sizeof *p);
    p->fd = -1;
    pthread_mutex_init(&p->send_lock, NULL);
    pthread_mutex_init(&p->pending_lock, NULL);
    pthread_cond_init(&p->slot_free, NULL);
    pthread_mutex_init(&p->control_lock, NULL);
    p->sbuf = malloc(SBUF_SIZE);
    p->slots = calloc(PENDING_SLOTS, sizeof *p->slots);
    p->next_id = 1;
    pthread_mutex_init(&p->read_lock, NULL);
    pthread_cond_init(&p->read_done, NULL);
    p->next_read_id = 1;
}

static void drop_control_frames(struct rm_peer *p)
{
    pthread_mutex_lock(&p->control_lock);
    while (p->control_count) {
        free(p->control[p->control_head]);
        p->control_head = (p->control_head + 1) % 256;
        p->control_count--;
    }
    pthread_mutex_unlock(&p->control_lock);
}

void peer_destroy(struct rm_peer *p)
{
    drop_control_frames(p);
    pthread_mutex_destroy(&p->send_lock);
    pthread_mutex_destroy(&p->pending_lock);
    pthread_cond_destroy(&p->slot_free);
    pthread_mutex_destroy(&p->control_lock);
    pthread_mutex_destroy(&p->read_lock);
    pthread_cond_destroy(&p->read_done);
    free(p->sbuf);
    free(p->slots);
}

static int peer_live(struct rm_peer *p)
{
    return __atomic_load_n(&p->attached, __ATOMIC_ACQUIRE) && !__atomic_load_n(&p->dead, __ATOMIC_ACQUIRE);
}

int engine_peer_live(rm_engine *eng)
{
    return peer_live(&eng->peer);
}

/* ---- sending (send_lock held) ---- */

static int send_all_locked(rm_engine *eng, const struct iovec *iov_in, int iovcnt, int flags)
{
    struct rm_peer *p = &eng->peer;
    struct iovec iov[2];
    int i;

    if (p->send_failed || p->fd < 0)
        return -ENOTCONN;
    memcpy(iov, iov_in, (size_t)iovcnt * sizeof *iov);
    for (i = 0; i < iovcnt;) {
        struct msghdr msg = { .msg_iov = iov + i, .msg_iovlen = (size_t)(iovcnt - i) };
        ssize_t n = sendmsg(p->fd, &msg, MSG_NOSIGNAL | flags);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            p->send_failed = 1;
            shutdown(p->fd, SHUT_RDWR);  /* the receiver notices and sweeps */
            return -errno;
        }
        STAT_ADD(eng, peer_bytes_sent, (uint64_t)n);
        while (i < iovcnt && (size_t)n >= iov[i].iov_len) {
            n -= (ssize_t)iov[i].iov_len;
            i++;
        }
        if (i < iovcnt) {
            iov[i].iov_base = (char *)iov[i].iov_base + n;
            iov[i].iov_len -= (size_t)n;
        }
    }
    return 0;
}

/* flags: MSG_MORE when a payload follows at once (the header then shares its TCP segment). */
static int sbuf_send_locked(rm_engine *eng, int flags)
{
    struct rm_peer *p = &eng->peer;
    struct iovec iov = { p->sbuf, p->sbuf_len };
    int rc;

    if (p->sbuf_len == 0)
        return 0;
    rc = send_all_locked(eng, &iov, 1, flags);
    p->sbuf_len = 0;
    return rc;
}

/* Append a header alone; its payload follows by other means (sendfile). */
static int queue_header_locked(rm_engine *eng, const struct rpl_header *h)
{
    struct rm_peer *p = &eng->peer;
    int rc;

    if (p->send_failed || p->fd < 0)
        return -ENOTCONN;
    if (p->sbuf_len + RPL_HEADER_SIZE > SBUF_SIZE && (rc = sbuf_send_locked(eng, 0)) < 0)
        return rc;
    rpl_pack(p->sbuf + p->sbuf_len, h);
    p->sbuf_len += RPL_HEADER_SIZE;
    return 0;
}

static int send_frame_locked(rm_engine *eng, const struct rpl_header *h, const void *payload)
{
    struct rm_peer *p = &eng->peer;
    size_t need = RPL_HEADER_SIZE + h->length;
    unsigned char hdr[RPL_HEADER_SIZE];
    int rc;

    if (p->send_failed || p->fd < 0)
        return -ENOTCONN;
    if (h->length <= SBUF_DIRECT) {
        if (p->sbuf_len + need > SBUF_SIZE && (rc = sbuf_send_locked(eng, 0)) < 0)
            return rc;
        rpl_pack(p->sbuf + p->sbuf_len, h);
        if (h->length)
            memcpy(p->sbuf + p->sbuf_len + RPL_HEADER_SIZE, payload, h->length);
        p->sbuf_len += need;
        return 0;
    }
    if ((rc = sbuf_send_locked(eng, 0)) < 0)
        return rc;
    rpl_pack(hdr, h);
    struct iovec iov[2] = { { hdr, RPL_HEADER_SIZE }, { (void *)payload, h->length } };
    return send_all_locked(eng, iov, 2, 0);
}

void engine_flush_peer(rm_engine *eng)
{
    struct rm_peer *p = &eng->peer;

    if (!__atomic_load_n(&p->attached, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&p->send_lock);
    sbuf_send_locked(eng, 0);
    pthread_mutex_unlock(&p->send_lock);
}

/* send_lock held: a frame whose payload is the device range [h->offset, + h->length), sent
 * straight from the backing fd (sendfile: no copy through user space). The batched frames and
 * this header go out with MSG_MORE, so they share the payload's first TCP segment. */
static int send_range_frame_locked(rm_engine *eng, const struct rpl_header *h)
{
    struct rm_peer *p = &eng->peer;
    uint64_t sent;
    int rc;

    if ((rc = queue_header_locked(eng, h)) < 0 || (rc = sbuf_send_locked(eng, MSG_MORE)) < 0)
        return rc;
    rc = sendfile_range(eng, p->fd, h->offset, h->length, &sent);
    STAT_ADD(eng, peer_bytes_sent, sent);
    if (rc < 0) {
        p->send_failed = 1;
        shutdown(p->fd, SHUT_RDWR);
    }
    return rc;
}

static int send_frame(rm_engine *eng, const struct rpl_header *h, const void *payload, int flush)
{
    struct rm_peer *p = &eng->peer;
    int rc;

    pthread_mutex_lock(&p->send_lock);
    rc = send_frame_locked(eng, h, payload);
    if (rc == 0 && flush)
        rc = sbuf_send_locked(eng, 0);
    pthread_mutex_unlock(&p->send_lock);
    return rc;
}

/* ---- pending slots ---- */

static void update_oldest_locked(rm_engine *eng)
{
    struct rm_peer *p = &eng->peer;
    uint64_t oldest = 0;

    if (p->npending) {
        /* Acks come back in order, so the oldest busy slot is near the front. */
        for (uint64_t id = p->next_id - p->npending; id < p->next_id; id++) {
            struct rm_pending *s = &p->slots[id % PENDING_SLOTS];
            if (s->busy && s->id == id) {
                oldest = s->sent_ns;
                break;
            }
        }
    }
    STAT_SET(eng, peer_oldest_pending_ns, oldest);
    STAT_SET(eng, peer_pending, p->npending);
}

/* Finish one slot (pending_lock held): answer its origin if still owed, free the slot. With a
 * `touched` batch (the receiver thread) the origin's reference is released by flush_touched
 * once the batch is done, so its answers go out in one send; without one, or when the batch
 * is full, at once. */
static void finish_slot_locked(rm_engine *eng, struct rm_pending *s, int rc, struct rm_origin **touched, int *ntouched)
{
    struct rm_peer *p = &eng->peer;
    struct rm_origin *o = s->origin;

    if (!s->replied && o) {
        o->complete(o, s->cookie, rc);
        if (touched && o->batched) {
            o->batched++;
        } else if (touched && *ntouched < MAX_TOUCHED) {
            o->batched = 1;
            touched[(*ntouched)++] = o;
        } else {
            o->release(o, 1);   /* o may be gone from here on */
        }
    }
    if (!s->is_flush)
        engine_al_end(eng, s->offset, s->length);   /* acked, or marked out of sync by the caller */
    s->busy = 0;
    s->origin = NULL;
    p->npending--;
    pthread_cond_broadcast(&p->slot_free);
}

static void flush_touched(struct rm_origin **touched, int *ntouched)
{
    for (int i = 0; i < *ntouched; i++) {
        struct rm_origin *o = touched[i];
        int n = o->batched;

        o->batched = 0;
        o->release(o, n);       /* the last reference: o may be gone from here on */
    }
    *ntouched = 0;
}

static int local_op(rm_engine *eng, enum rm_op op, const void *data, uint32_t count, uint64_t offset,
                    int fua, int may_trim)
{
    switch (op) {
    case RM_OP_WRITE: return local_pwrite(eng, data, count, offset, fua);
    case RM_OP_TRIM: return local_trim(eng, count, offset, fua);
    case RM_OP_ZERO: return local_zero(eng, count, offset, may_trim, fua);
    default: STAT_ADD(eng, flushes, 1); return local_flush(eng);
    }
}

static void frame_for(struct rpl_header *h, uint64_t id, enum rm_op op, uint32_t count, uint64_t offset,
                      int fua, int may_trim)
{
    *h = (struct rpl_header){ .id = id, .offset = offset };
    switch (op) {
    case RM_OP_WRITE: h->type = RPL_DATA; h->length = count; break;
    case RM_OP_TRIM: h->type = RPL_TRIM; h->aux = count; break;
    case RM_OP_ZERO: h->type = RPL_ZEROES; h->aux = count; h->flags = may_trim ? 0 : RPL_FLAG_NO_HOLE; break;
    default: h->type = RPL_FLUSH; h->offset = 0; break;
    }
    if (fua)
        h->flags |= RPL_FLAG_FUA;
}

static int unmirrored(rm_engine *eng, enum rm_op op, uint64_t offset, uint32_t count);
static int submit_remote_only(rm_engine *eng, struct rm_origin *o, const unsigned char cookie[8],
                              enum rm_op op, const void *data, uint32_t count, uint64_t offset, int fua,
                              int may_trim, int *rc);
static int retry_on_peer(rm_engine *eng, uint64_t id, struct rm_origin *o, const unsigned char cookie[8],
                         enum rm_op op, const void *data, uint32_t count, uint64_t offset, int fua,
                         int may_trim, int *rc);

#define NO_SLOT UINT64_MAX

/* A slot for a request not yet on the wire, without an origin: a sweep or an ack that
 * finishes it before submit_finish attaches one leaves the answer to the submitter. Returns
 * its id, or NO_SLOT when the link is down. */
static uint64_t reserve_slot(rm_engine *eng, int is_flush, uint64_t offset, uint32_t count)
{
    struct rm_peer *p = &eng->peer;
    struct rm_pending *s;
    uint64_t id = NO_SLOT;

    pthread_mutex_lock(&p->pending_lock);
    while (peer_live(p) && p->slots[p->next_id % PENDING_SLOTS].busy)
        pthread_cond_wait(&p->slot_free, &p->pending_lock);
    if (peer_live(p)) {
        id = p->next_id++;
        s = &p->slots[id % PENDING_SLOTS];
        *s = (struct rm_pending){ .busy = 1, .replied = 1, .is_flush = is_flush, .id = id, .offset = offset,
                                  .length = count, .sent_ns = now_ns() };
        if (++p->npending == 1)
            STAT_SET(eng, peer_oldest_pending_ns, s->sent_ns);
        STAT_SET(eng, peer_pending, p->npending);
    }
    pthread_mutex_unlock(&p->pending_lock);
    return id;
}

/* After the send: the ack answers the client (RM_SUBMIT_LATER) if the slot is still ours, the
 * request fully succeeded here and its protocol waits for the peer (!replied_now); otherwise
 * the caller answers now with *rc. A request that never reached the wire gives its slot back
 * and is out of sync. */
static int submit_finish(rm_engine *eng, uint64_t id, struct rm_origin *o, const unsigned char cookie[8],
                         enum rm_op op, uint64_t offset, uint32_t count, int sent, int rc, int replied_now)
{
    struct rm_peer *p = &eng->peer;
    struct rm_pending *s = &p->slots[id % PENDING_SLOTS];
    int later = 0, took = 0;

    pthread_mutex_lock(&p->pending_lock);
    if (s->busy && s->id == id) {
        if (sent == 0 && rc == 0 && !replied_now) {
            s->replied = 0;
            s->origin = o;
            memcpy(s->cookie, cookie, 8);
            __atomic_fetch_add(&o->inflight, 1, __ATOMIC_RELAXED);
            later = 1;
        } else if (sent < 0) {
            s->busy = 0;
            p->npending--;
            pthread_cond_broadcast(&p->slot_free);
            update_oldest_locked(eng);
            took = 1;
        }
    }
    pthread_mutex_unlock(&p->pending_lock);
    if (took)
        unmirrored(eng, op, offset, count);
    if (sent == 0 && op != RM_OP_FLUSH)
        STAT_ADD(eng, peer_writes_sent, 1);
    return later ? RM_SUBMIT_LATER : RM_SUBMIT_DONE;
}

int engine_submit(rm_engine *eng, struct rm_origin *o, const unsigned char cookie[8], enum rm_op op,
                  const void *data, uint32_t count, uint64_t offset, int fua, int may_trim, int *rc)
{
    struct rm_peer *p = &eng->peer;
    struct rpl_header h;
    uint64_t id;
    int r, sent;

    if (op == RM_OP_FLUSH && engine_disk_failed(eng))
        return submit_remote_only(eng, o, cookie, op, NULL, 0, 0, 0, 0, rc);
    if (op == RM_OP_FLUSH) {
        *rc = r = local_op(eng, op, NULL, 0, 0, 0, 0);
        return r < 0 ? RM_SUBMIT_DONE : engine_mirror(eng, o, cookie, op, NULL, 0, 0, 0, 0);
    }
    r = engine_check_range(eng, offset, count, 1);
    if (r < 0) {
        *rc = (op == RM_OP_TRIM && r == -ENOSPC) ? -EINVAL : r;
        return RM_SUBMIT_DONE;
    }
    engine_al_begin(eng, offset, count);
    if (engine_enter_remote_only(eng))
        return submit_remote_only(eng, o, cookie, op, data, count, offset, fua, may_trim, rc);
    id = reserve_slot(eng, 0, offset, count);
    if (id == NO_SLOT) {                  /* no link: the local write alone, out of sync */
        *rc = r = local_op(eng, op, data, count, offset, fua, may_trim);
        if (r < 0) {
            engine_mark_dirty(eng, offset, count);   /* it may have partly reached the disk */
            engine_al_end(eng, offset, count);
            return RM_SUBMIT_DONE;        /* the client sees the error */
        }
        return unmirrored(eng, op, offset, count);
    }
    /* The local write and the frame's place on the wire happen together under send_lock, so
     * the peer applies overlapping writes from different connections in the order they reached
     * this disk, as DRBD serializes conflicting requests. (Large writes need not: their frame
     * is read from the disk at send time.) FUA's flush waits until after the lock. */
    frame_for(&h, id, op, count, offset, fua, may_trim);
    pthread_mutex_lock(&p->send_lock);
    r = local_op(eng, op, data, count, offset, 0, may_trim);
    if (r < 0 && engine_disk_failed(eng)) {
        /* The disk just failed (FAIL_OVER): this write goes to the peer alone. */
        pthread_mutex_unlock(&p->send_lock);
        pthread_mutex_lock(&eng->fail_lock);
        eng->remote_writes++;
        pthread_mutex_unlock(&eng->fail_lock);
        return retry_on_peer(eng, id, o, cookie, op, data, count, offset, fua, may_trim, rc);
    }
    sent = r < 0 ? r : send_frame_locked(eng, &h, data);
    pthread_mutex_unlock(&p->send_lock);
    if (r == 0 && fua)
        r = local_flush(eng);
    *rc = r;
    return submit_finish(eng, id, o, cookie, op, offset, count, sent, r, p->protocol == RM_PROTOCOL_A);
}

/* A request that will not reach the peer: its blocks are out of sync (marked before its AL
 * references go, so an eviction stores them), and it is done. */
static int unmirrored(rm_engine *eng, enum rm_op op, uint64_t offset, uint32_t count)
{
    if (op != RM_OP_FLUSH) {
        engine_mark_dirty(eng, offset, count);
        engine_al_end(eng, offset, count);
    }
    return RM_SUBMIT_DONE;
}

/* The peer half of a request whose local half succeeded. A WRITE with data == NULL takes its
 * payload from the disk it was just written to (sendfile: no copy through user space). A
 * disk-changing request holds AL references (engine_al_begin) that are given back here when it
 * never reaches the peer, else when its slot finishes. */
int engine_mirror(rm_engine *eng, struct rm_origin *o, const unsigned char cookie[8], enum rm_op op,
                  const void *data, uint32_t count, uint64_t offset, int fua, int may_trim)
{
    struct rm_peer *p = &eng->peer;
    struct rpl_header h;
    uint64_t id;
    int sent;

    id = reserve_slot(eng, op == RM_OP_FLUSH, offset, count);
    if (id == NO_SLOT)
        return unmirrored(eng, op, offset, count);
    frame_for(&h, id, op, count, offset, fua, may_trim);
    if (op == RM_OP_WRITE && data == NULL) {
        pthread_mutex_lock(&p->send_lock);
        sent = send_range_frame_locked(eng, &h);
        pthread_mutex_unlock(&p->send_lock);
    } else {
        sent = send_frame(eng, &h, data, 0);
    }
    /* Protocol A answers once the frame is handed to the socket layer; a flush waits for the
     * peer's stable storage only under protocol C. */
    return submit_finish(eng, id, o, cookie, op, offset, count, sent, 0,
                         p->protocol == RM_PROTOCOL_A || (op == RM_OP_FLUSH && p->protocol != RM_PROTOCOL_C));
}

/* ---- the receiver thread ---- */

struct receiver {
    rm_engine *eng;
    unsigned char *buf;
    size_t start, end;
    unsigned char *payload;
    size_t payload_cap;
    struct rm_origin *touched[MAX_TOUCHED];
    int ntouched;
    int pipe[2];            /* for splice: socket -> pipe -> backing fd, one copy instead of two */
    int spliced_rc;         /* result of the local write done by splice_payload */
    int header_only;        /* after a spliced payload: read the next header alone, so a large
                             * payload that follows stays in the socket for splice */
    struct rm_spin spin;    /* mid-payload waits (engine_splice_write) */
};

/* Large DATA/RS_DATA payloads go from the socket to the disk by splice (engine_splice_write). */
static int splice_payload(struct receiver *r, const struct rpl_header *h, int fua)
{
    size_t have = r->end - r->start;
    int rc = engine_splice_write(r->eng, r->eng->peer.fd, r->pipe, r->buf + r->start, (uint32_t)have,
                                 h->offset, h->length, fua, &r->spliced_rc, NULL, &r->spin);

    r->start = r->end;
    STAT_SET(r->eng, peer_last_rx_ns, now_ns());
    return rc;
}

static int recv_exact(struct receiver *r, unsigned char *dst, size_t len)
{
    return recv_exact_buffered(r->eng->peer.fd, r->buf, &r->start, r->end, dst, len);
}

static void queue_ack(rm_engine *eng, uint16_t type, const struct rpl_header *req, uint32_t aux)
{
    struct rpl_header h = { .type = type, .id = req->id, .offset = req->offset, .aux = aux };
    struct rm_peer *p = &eng->peer;

    pthread_mutex_lock(&p->send_lock);
    send_frame_locked(eng, &h, NULL);
    pthread_mutex_unlock(&p->send_lock);
}

static void complete_id(struct receiver *r, uint64_t id, int mark_dirty)
{
    rm_engine *eng = r->eng;
    struct rm_peer *p = &eng->peer;
    struct rm_pending *s;

    pthread_mutex_lock(&p->pending_lock);
    s = &p->slots[id % PENDING_SLOTS];
    if (s->busy && s->id == id) {
        if (mark_dirty && !s->is_flush)
            engine_mark_dirty(eng, s->offset, s->length);
        if (mark_dirty && s->not_local)
            s->not_local = -1;      /* failed: retry_on_peer reads it if it answers itself */
        finish_slot_locked(eng, s, s->not_local < 0 ? -EIO : 0, r->touched, &r->ntouched);
        update_oldest_locked(eng);
    }
    pthread_mutex_unlock(&p->pending_lock);
}

static int in_range(rm_engine *eng, uint64_t offset, uint64_t length)
{
    return offset <= eng->size && length <= eng->size - offset;
}

static void serve_remote_read(rm_engine *eng, const struct rpl_header *req);
static void complete_remote_read(rm_engine *eng, const struct rpl_header *h, const unsigned char *payload);
static void fail_remote_reads(rm_engine *eng);

/* Apply one frame. Returns 0, or a negative errno that ends the link (*proto set when the
 * peer broke the protocol rather than the socket failing). */
static int handle_frame(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto)
{
    rm_engine *eng = r->eng;
    struct rm_peer *p = &eng->peer;
    int fua = h->flags & RPL_FLAG_FUA, rc;

    switch (h->type) {
    case RPL_DATA:
    case RPL_TRIM:
    case RPL_ZEROES:
    case RPL_FLUSH:
        /* Only a Secondary takes writes from its peer: two writers would diverge. */
        if (!__atomic_load_n(&eng->read_only, __ATOMIC_ACQUIRE) ||
            (h->type != RPL_FLUSH && !in_range(eng, h->offset, h->type == RPL_DATA ? h->length : h->aux))) {
            *proto = 1;
            return -EPROTO;
        }
        if (p->protocol == RM_PROTOCOL_B && h->type != RPL_FLUSH) {
            queue_ack(eng, RPL_RECV_ACK, h, 0);
            /* "Received" is the whole point of B: say so before the write, unless more frames
             * are already here (then the batch's acks go out together). */
            if (r->end - r->start < RPL_HEADER_SIZE)
                engine_flush_peer(eng);
        }
        if (engine_disk_failed(eng))
            rc = h->type == RPL_FLUSH ? 0 : -EIO;   /* out of use: the Primary marks it */
        else if (h->type == RPL_DATA)
            rc = payload ? local_pwrite(eng, payload, h->length, h->offset, fua) : r->spliced_rc;
        else if (h->type == RPL_TRIM)
            rc = local_trim(eng, h->aux, h->offset, fua);
        else if (h->type == RPL_ZEROES)
            rc = local_zero(eng, h->aux, h->offset, !(h->flags & RPL_FLAG_NO_HOLE), fua);
        else
            rc = local_flush(eng);
        STAT_ADD(eng, peer_frames_applied, 1);
        if (rc == 0 && (h->flags & RPL_FLAG_NOT_LOCAL) && h->type != RPL_FLUSH)
            engine_mark_dirty(eng, h->offset, h->type == RPL_DATA ? h->length : h->aux);
        if (rc < 0)
            queue_ack(eng, RPL_NEG_ACK, h, (uint32_t)-rc);
        else if (h->type == RPL_FLUSH)
            queue_ack(eng, RPL_FLUSH_ACK, h, 0);
        else if (p->protocol != RM_PROTOCOL_B)
            queue_ack(eng, RPL_WRITE_ACK, h, 0);
        return 0;
    case RPL_RECV_ACK:
    case RPL_WRITE_ACK:
    case RPL_FLUSH_ACK:
        complete_id(r, h->id, 0);
        return 0;
    case RPL_NEG_ACK:
        complete_id(r, h->id, 1);
        return 0;
    case RPL_READ_REQUEST:
        if (h->length || h->aux > RM_MAX_REQUEST || !in_range(eng, h->offset, h->aux)) {
            *proto = 1;
            return -EPROTO;
        }
        serve_remote_read(eng, h);
        return 0;
    case RPL_READ_REPLY:
        complete_remote_read(eng, h, payload);
        return 0;
    case RPL_PING:
        queue_ack(eng, RPL_PING_ACK, h, 0);
        return 0;
    case RPL_PING_ACK:
        return 0;
    case RPL_RS_DATA:
        if (!in_range(eng, h->offset, h->length)) {
            *proto = 1;
            return -EPROTO;
        }
        rc = payload ? local_pwrite(eng, payload, h->length, h->offset, 0) : r->spliced_rc;
        if (rc == 0) {
            engine_clear_dirty(eng, h->offset, h->length);
            STAT_ADD(eng, resync_bytes_received, h->length);
            queue_ack(eng, RPL_RS_DONE, h, h->length);
        }
        return 0;
    case RPL_RS_DONE:
        if (!in_range(eng, h->offset, h->aux)) {
            *proto = 1;
            return -EPROTO;
        }
        engine_clear_dirty(eng, h->offset, h->aux);
        STAT_ADD(eng, resync_bytes_acked, h->aux);
        return 0;
    default:
        if (h->type < RPL_CONTROL_MIN || h->length > RPL_MAX_CONTROL) {
            *proto = 1;
            return -EPROTO;
        }
        pthread_mutex_lock(&p->control_lock);
        if (p->control_count == 256) {
            pthread_mutex_unlock(&p->control_lock);
            *proto = 1;
            return -ENOBUFS;   /* Python stopped reading: drop the link rather than block */
        }
        unsigned char *frame = malloc(RPL_HEADER_SIZE + h->length);
        if (!frame) {
            pthread_mutex_unlock(&p->control_lock);
            return -ENOMEM;
        }
        rpl_pack(frame, h);
        memcpy(frame + RPL_HEADER_SIZE, payload, h->length);
        unsigned slot = (p->control_head + p->control_count) % 256;
        p->control[slot] = frame;
        p->control_len[slot] = RPL_HEADER_SIZE + h->length;
        p->control_count++;
        pthread_mutex_unlock(&p->control_lock);
        engine_post_event(eng, RM_EV_PEER_CONTROL, 0, h->type, h->length);
        return 0;
    }
}

static int receive_loop(struct receiver *r, int *proto, uint64_t *bad_type)
{
    rm_engine *eng = r->eng;
    struct rm_peer *p = &eng->peer;

    for (;;) {
        struct rpl_header h;
        const unsigned char *payload;
        int rc;

        if (r->end - r->start < RPL_HEADER_SIZE) {
            /* Input drained: send the acks and client answers this batch produced. */
            engine_flush_peer(eng);
            flush_touched(r->touched, &r->ntouched);
            if (r->start) {
                memmove(r->buf, r->buf + r->start, r->end - r->start);
                r->end -= r->start;
                r->start = 0;
            }
            size_t want = r->header_only ? RPL_HEADER_SIZE - r->end : RBUF_SIZE - r->end;
            ssize_t n = recv(p->fd, r->buf + r->end, want, 0);
            if (n == 0)
                return r->end ? -ECONNRESET : 0;
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -errno;
            }
            r->end += (size_t)n;
            STAT_SET(eng, peer_last_rx_ns, now_ns());
            continue;
        }
        if (rpl_unpack(r->buf + r->start, &h) < 0) {
            *proto = 1;
            *bad_type = 0;
            return -EPROTO;
        }
        if (h.length > RPL_MAX_PAYLOAD) {
            *proto = 1;
            *bad_type = h.type;
            return -EMSGSIZE;
        }
        r->start += RPL_HEADER_SIZE;
        if (r->end - r->start >= h.length) {
            payload = r->buf + r->start;
            r->start += h.length;
        } else if (r->pipe[0] >= 0 && h.length >= SPLICE_MIN && (h.type == RPL_DATA || h.type == RPL_RS_DATA) &&
                   __atomic_load_n(&eng->read_only, __ATOMIC_ACQUIRE) && in_range(eng, h.offset, h.length) &&
                   !engine_disk_failed(eng)) {
            if ((rc = splice_payload(r, &h, h.flags & RPL_FLAG_FUA)) < 0)
                return rc;
            payload = NULL;
            r->header_only = 1;
        } else {
            if (r->payload_cap < h.length) {
                free(r->payload);
                r->payload = malloc(h.length);
                r->payload_cap = r->payload ? h.length : 0;
                if (!r->payload)
                    return -ENOMEM;
            }
            if ((rc = recv_exact(r, r->payload, h.length)) < 0)
                return rc;
            STAT_SET(eng, peer_last_rx_ns, now_ns());
            payload = r->payload;
        }
        if (payload)
            r->header_only = 0;
        rc = handle_frame(r, &h, payload, proto);
        if (rc < 0) {
            *bad_type = h.type;
            return rc;
        }
        if (r->payload_cap > 4 * 1024 * 1024) {
            free(r->payload);
            r->payload = NULL;
            r->payload_cap = 0;
        }
    }
}

static void *receiver_main(void *arg)
{
    rm_engine *eng = arg;
    struct rm_peer *p = &eng->peer;
    struct receiver r = { .eng = eng };
    uint64_t bad_type = 0;
    int proto = 0, rc;

    r.buf = malloc(RBUF_SIZE);
    if (engine_open_pipe(r.pipe) < 0)
        r.pipe[0] = r.pipe[1] = -1;
    rc = r.buf ? receive_loop(&r, &proto, &bad_type) : -ENOMEM;
    if (r.pipe[0] >= 0) {
        close(r.pipe[0]);
        close(r.pipe[1]);
    }

    /* Sweep: from here on writes go to the bitmap; everything unacknowledged is out of sync. */
    pthread_mutex_lock(&p->pending_lock);
    __atomic_store_n(&p->dead, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < PENDING_SLOTS; i++) {
        struct rm_pending *s = &p->slots[i];
        if (!s->busy)
            continue;
        if (!s->is_flush)
            engine_mark_dirty(eng, s->offset, s->length);
        if (s->not_local)
            s->not_local = -1;
        finish_slot_locked(eng, s, s->not_local ? -EIO : 0, r.touched, &r.ntouched);
        if (r.ntouched == MAX_TOUCHED)
            flush_touched(r.touched, &r.ntouched);
    }
    update_oldest_locked(eng);
    pthread_mutex_unlock(&p->pending_lock);
    flush_touched(r.touched, &r.ntouched);
    fail_remote_reads(eng);
    shutdown(p->fd, SHUT_RDWR);
    STAT_SET(eng, peer_connected, 0);
    engine_post_event(eng, proto ? RM_EV_PEER_PROTOCOL : RM_EV_PEER_LOST, rc < 0 ? -rc : 0,
                      proto ? bad_type : 0, 0);
    free(r.buf);
    free(r.payload);
    return NULL;
}

/* ---- the contract's entry points ---- */

int rm_peer_attach(rm_engine *eng, int fd, int protocol)
{
    struct rm_peer *p = &eng->peer;
    int rc;

    if (protocol < RM_PROTOCOL_A || protocol > RM_PROTOCOL_C)
        return -EINVAL;
    if (__atomic_load_n(&p->attached, __ATOMIC_ACQUIRE))
        return -EBUSY;
    pthread_mutex_lock(&p->send_lock);
    p->fd = fd;
    p->protocol = protocol;
    p->send_failed = 0;
    p->sbuf_len = 0;
    pthread_mutex_unlock(&p->send_lock);
    __atomic_store_n(&p->dead, 0, __ATOMIC_RELEASE);
    STAT_SET(eng, peer_last_rx_ns, now_ns());
    STAT_SET(eng, peer_connected, 1);
    __atomic_store_n(&p->attached, 1, __ATOMIC_RELEASE);
    rc = pthread_create(&p->receiver, NULL, receiver_main, eng);
    if (rc) {
        __atomic_store_n(&p->attached, 0, __ATOMIC_RELEASE);
        STAT_SET(eng, peer_connected, 0);
        p->fd = -1;
        return -rc;
    }
    return 0;
}

int rm_peer_detach(rm_engine *eng)
{
    struct rm_peer *p = &eng->peer;

    if (!__atomic_load_n(&p->attached, __ATOMIC_ACQUIRE))
        return 0;
    shutdown(p->fd, SHUT_RDWR);   /* wakes the receiver; it sweeps and exits */
    pthread_join(p->receiver, NULL);
    pthread_mutex_lock(&p->send_lock);
    p->fd = -1;
    p->sbuf_len = 0;
    pthread_mutex_unlock(&p->send_lock);
    __atomic_store_n(&p->attached, 0, __ATOMIC_RELEASE);
    drop_control_frames(p);
    return 0;
}

int rm_peer_ping(rm_engine *eng)
{
    struct rm_peer *p = &eng->peer;
    struct rpl_header h = { .type = RPL_PING };
    int rc;

    if (!peer_live(p))
        return -ENOTCONN;
    /* Never wait behind another send: on a dead link a resync chunk or a large write blocks in
     * sendmsg with send_lock held until TCP gives up, and the caller (Python's monitor) must stay
     * free to notice the silence and detach, which unblocks that send. */
    if (pthread_mutex_trylock(&p->send_lock) != 0)
        return -EBUSY;
    rc = send_frame_locked(eng, &h, NULL);
    if (rc == 0)
        rc = sbuf_send_locked(eng, 0);
    pthread_mutex_unlock(&p->send_lock);
    return rc;
}

int rm_resync_send(rm_engine *eng, uint64_t offset, uint32_t length)
{
    struct rm_peer *p = &eng->peer;
    int rc;

    if (length == 0 || length > MAX_RESYNC_CHUNK || !in_range(eng, offset, length))
        return -EINVAL;
    if (!peer_live(p))
        return -ENOTCONN;
    /* Read under the send lock: the block version we send cannot be older than one already
     * queued by a concurrent application write (see the file comment). sendfile() moves the
     * blocks from the page cache to the socket without a copy through user space. */
    pthread_mutex_lock(&p->send_lock);
    rc = send_range_frame_locked(eng, &(struct rpl_header){ .type = RPL_RS_DATA, .id = offset,
                                                           .offset = offset, .length = length });
    pthread_mutex_unlock(&p->send_lock);
    if (rc == 0)
        STAT_ADD(eng, resync_bytes_sent, length);
    return rc;
}

int rm_peer_send_control(rm_engine *eng, const void *frame, uint32_t length)
{
    struct rpl_header h;

    if (length < RPL_HEADER_SIZE || rpl_unpack(frame, &h) < 0 || h.type < RPL_CONTROL_MIN ||
        h.length != length - RPL_HEADER_SIZE || h.length > RPL_MAX_CONTROL)
        return -EINVAL;
    if (!peer_live(&eng->peer))
        return -ENOTCONN;
    return send_frame(eng, &h, (const unsigned char *)frame + RPL_HEADER_SIZE, 1);
}

int rm_peer_recv_control(rm_engine *eng, void *buf, uint32_t cap)
{
    struct rm_peer *p = &eng->peer;
    int len = 0;

    pthread_mutex_lock(&p->control_lock);
    if (p->control_count) {
        unsigned slot = p->control_head;
        if (p->control_len[slot] > cap) {
            len = -ENOSPC;
        } else {
            len = (int)p->control_len[slot];
            memcpy(buf, p->control[slot], p->control_len[slot]);
            free(p->control[slot]);
            p->control_head = (slot + 1) % 256;
            p->control_count--;
        }
    }
    pthread_mutex_unlock(&p->control_lock);
    return len;
}

/* ---- a failed disk (mirror.h, on-io-error): requests served by the peer ---- */

/* The request goes to the peer alone, flagged NOT_LOCAL (the peer marks its blocks out of sync
 * for us), and succeeds only when the peer wrote it: a NEG_ACK or a lost link answer EIO, since
 * no disk has it then. Without a peer there is nowhere to write: EIO (DRBD's
 * on-no-data-accessible io-error). The AL references taken by the caller are given back with
 * the slot, as for any mirrored write. */
static int submit_remote_only(rm_engine *eng, struct rm_origin *o, const unsigned char cookie[8],
                              enum rm_op op, const void *data, uint32_t count, uint64_t offset, int fua,
                              int may_trim, int *rc)
{
    uint64_t id = reserve_slot(eng, op == RM_OP_FLUSH, offset, count);

    if (id == NO_SLOT) {
        if (op != RM_OP_FLUSH) {
            engine_mark_dirty(eng, offset, count);
            engine_al_end(eng, offset, count);
        }
        *rc = -EIO;
        return RM_SUBMIT_DONE;
    }
    return retry_on_peer(eng, id, o, cookie, op, data, count, offset, fua, may_trim, rc);
}

/* Slot `id` is reserved and not on the wire: send the request as NOT_LOCAL. Our own bitmap also
 * records the blocks (a write that failed here may have partly reached this disk). */
static int retry_on_peer(rm_engine *eng, uint64_t id, struct rm_origin *o, const unsigned char cookie[8],
                         enum rm_op op, const void *data, uint32_t count, uint64_t offset, int fua,
                         int may_trim, int *rc)
{
    struct rm_peer *p = &eng->peer;
    struct rpl_header h;
    int sent, ret;

    pthread_mutex_lock(&p->pending_lock);
    p->slots[id % PENDING_SLOTS].not_local = 1;
    pthread_mutex_unlock(&p->pending_lock);
    frame_for(&h, id, op, count, offset, fua, may_trim);
    if (op != RM_OP_FLUSH) {
        h.flags |= RPL_FLAG_NOT_LOCAL;
        engine_mark_dirty(eng, offset, count);
    }
    sent = send_frame(eng, &h, data, 0);
    /* Protocol A answers at the send; otherwise the peer's ack (a flush: C's, as usual). */
    ret = submit_finish(eng, id, o, cookie, op, offset, count, sent, 0,
                        (p->protocol == RM_PROTOCOL_A && op != RM_OP_FLUSH) ||
                        (op == RM_OP_FLUSH && p->protocol != RM_PROTOCOL_C));
    *rc = sent < 0 ? -EIO : 0;
    if (ret == RM_SUBMIT_DONE && sent == 0) {
        /* answered here: the peer may have refused it (NEG_ACK, link lost) before the origin
         * was attached; a freed slot keeps its fields until it is reserved again (new id) */
        pthread_mutex_lock(&p->pending_lock);
        struct rm_pending *s = &p->slots[id % PENDING_SLOTS];
        if (!s->busy && s->id == id && s->not_local < 0)
            *rc = -EIO;
        pthread_mutex_unlock(&p->pending_lock);
    }
    return ret;
}

/* Receiver thread: the Diskless peer reads [offset, + aux) from our disk. */
static void serve_remote_read(rm_engine *eng, const struct rpl_header *req)
{
    struct rm_peer *p = &eng->peer;
    struct rpl_header h = { .type = RPL_READ_REPLY, .id = req->id, .offset = req->offset };

    pthread_mutex_lock(&p->send_lock);
    if (engine_disk_failed(eng) || req->aux == 0) {
        h.aux = req->aux ? EIO : 0;
        send_frame_locked(eng, &h, NULL);
    } else {
        h.length = req->aux;
        if (send_range_frame_locked(eng, &h) == 0) {
            STAT_ADD(eng, reads, 1);
            STAT_ADD(eng, bytes_read, req->aux);
        }
    }
    pthread_mutex_unlock(&p->send_lock);
}

static void complete_remote_read(rm_engine *eng, const struct rpl_header *h, const unsigned char *payload)
{
    struct rm_peer *p = &eng->peer;
    struct rm_read_wait **pw, *w = NULL;

    pthread_mutex_lock(&p->read_lock);
    for (pw = &p->reads; *pw; pw = &(*pw)->next) {
        if ((*pw)->id == h->id) {
            w = *pw;
            *pw = w->next;
            break;
        }
    }
    if (w) {
        if (h->aux)
            w->rc = -(int)h->aux;
        else if (h->length != w->len)
            w->rc = -EIO;
        else
            memcpy(w->buf, payload, w->len);
        w->done = 1;
        pthread_cond_broadcast(&p->read_done);
    }
    pthread_mutex_unlock(&p->read_lock);
}

/* The link is gone (dead is set, so no new read registers): every waiting read fails. */
static void fail_remote_reads(rm_engine *eng)
{
    struct rm_peer *p = &eng->peer;

    pthread_mutex_lock(&p->read_lock);
    while (p->reads) {
        p->reads->rc = -EIO;
        p->reads->done = 1;
        p->reads = p->reads->next;
    }
    pthread_cond_broadcast(&p->read_done);
    pthread_mutex_unlock(&p->read_lock);
}

int engine_remote_read(rm_engine *eng, void *buf, uint32_t count, uint64_t offset)
{
    struct rm_peer *p = &eng->peer;
    struct rm_read_wait w = { .buf = buf, .len = count };
    struct rpl_header h = { .type = RPL_READ_REQUEST, .offset = offset, .aux = count };

    if (count == 0)
        return 0;
    pthread_mutex_lock(&p->read_lock);
    if (!peer_live(p)) {
        pthread_mutex_unlock(&p->read_lock);
        return -EIO;
    }
    w.id = h.id = p->next_read_id++;
    w.next = p->reads;
    p->reads = &w;
    pthread_mutex_unlock(&p->read_lock);
    if (send_frame(eng, &h, NULL, 1) < 0)
        complete_remote_read(eng, &(struct rpl_header){ .id = w.id, .aux = EIO }, NULL);
    pthread_mutex_lock(&p->read_lock);
    while (!w.done)
        pthread_cond_wait(&p->read_done, &p->read_lock);
    pthread_mutex_unlock(&p->read_lock);
    if (w.rc == 0) {
        STAT_ADD(eng, reads, 1);
        STAT_ADD(eng, bytes_read, count);
    }
    return w.rc;
}
