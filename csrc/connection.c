/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The connection: every write accepted here also goes to the peer, and completes per protocol.
 *
 *   request layer (frontend threads)         receiver thread (one per link)
 *   --------------------------------         ------------------------------
 *   local write (pwrite/fallocate)           recv frames, batched
 *   take a pending slot (id)                 DATA/TRIM/ZEROES/FLUSH: apply locally, queue ack
 *   frame -> send buffer (or writev)         RECV_ACK/WRITE_ACK/FLUSH_ACK: complete slot id
 *   A: answer now; B/C: answer later  <----  (origin->complete queues, release wakes), NEG_ACK:
 *   flush send buffer before sleeping        + mark dirty; RS_DATA: write, clear bits, RS_DONE;
 *                                            RS_DONE: clear bits; control (>= 0x40): for Python
 *
 * The local write happens before the frame is queued (request.c holds send_lock across both),
 * and resync reads happen under the send lock, so the peer sees every block's versions in the
 * order this node wrote them: a resync block can never overtake a newer application write to
 * the same block.
 *
 * When the link fails the receiver sweeps every pending slot: its blocks are marked out of
 * sync and the origin gets its answer from the local write alone (a disconnected Primary keeps
 * serving). Later writes go to the bitmap until Python attaches a new link.
 *
 * The receiver never does I/O on a frontend's socket: an origin's complete() appends to that
 * origin's own reply queue, and release() wakes its thread (request.h, thread table).
 *
 * Online verify (conn_verify_send): the VerifyS reads a range and sends its 4 KiB blocks'
 * digests (OV_REQUEST) under the send lock, so the request sits in the stream after every write
 * it read and before every later one; the peer's receiver applies frames in stream order, so it
 * reads the same versions, compares, marks the differing blocks and answers OV_REPLY with a bit
 * per block, and the VerifyS marks them too. Two writes can still race a comparison: a large
 * write whose local half is done but whose frame is not yet sent (its payload is read from the
 * disk at send time, outside the lock), and, with the Secondary as VerifyS, the Primary's own
 * new writes. Both can only make an equal block look different: a false "differs" costs that
 * block's resync, never a missed difference.
 * data-integrity-alg: every DATA/RS_DATA frame is preceded by a DIGEST frame of its payload;
 * the receiver takes such payloads into memory (no splice), checks them before applying, and
 * on a mismatch drops the link without writing or acking: the sender's sweep marks the block. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "connection.h"
#include "digest.h"
#include "tls.h"

#define SBUF_SIZE (256 * 1024)
#define SBUF_DIRECT 65536          /* larger payloads skip the send buffer (writev) */
#define RBUF_SIZE (256 * 1024)
#define MAX_TOUCHED 64

int conn_init(struct rm_connection *c, struct rm_device *dev)
{
    memset(c, 0, sizeof *c);
    c->dev = dev;
    c->tp.fd = -1;
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_mutex_init(&c->pending_lock, NULL);
    pthread_cond_init(&c->slot_free, NULL);
    pthread_mutex_init(&c->control_lock, NULL);
    c->sbuf = malloc(SBUF_SIZE);
    c->slots = calloc(PENDING_SLOTS, sizeof *c->slots);
    c->nslots = PENDING_SLOTS;
    c->next_id = 1;
    pthread_mutex_init(&c->read_lock, NULL);
    pthread_cond_init(&c->read_done, NULL);
    c->next_read_id = 1;
    return c->sbuf && c->slots ? 0 : -ENOMEM;
}

static void drop_control_frames(struct rm_connection *c)
{
    pthread_mutex_lock(&c->control_lock);
    while (c->control_count) {
        free(c->control[c->control_head]);
        c->control_head = (c->control_head + 1) % 256;
        c->control_count--;
    }
    pthread_mutex_unlock(&c->control_lock);
}

void conn_destroy(struct rm_connection *c)
{
    conn_detach(c);
    drop_control_frames(c);
    pthread_mutex_destroy(&c->send_lock);
    pthread_mutex_destroy(&c->pending_lock);
    pthread_cond_destroy(&c->slot_free);
    pthread_mutex_destroy(&c->control_lock);
    pthread_mutex_destroy(&c->read_lock);
    pthread_cond_destroy(&c->read_done);
    free(c->sbuf);
    free(c->rbuf);
    free(c->slots);
}

int conn_live(struct rm_connection *c)
{
    return __atomic_load_n(&c->attached, __ATOMIC_ACQUIRE) && !__atomic_load_n(&c->dead, __ATOMIC_ACQUIRE);
}

int conn_protocol(struct rm_connection *c)
{
    return c->protocol;
}

/* ---- sending (send_lock held) ---- */

void conn_send_lock(struct rm_connection *c)
{
    pthread_mutex_lock(&c->send_lock);
}

void conn_send_unlock(struct rm_connection *c)
{
    pthread_mutex_unlock(&c->send_lock);
}

static void send_failed_locked(struct rm_connection *c)
{
    c->send_failed = 1;
    c->tp.ops->shutdown(&c->tp, SHUT_RDWR);  /* the receiver notices and sweeps */
}

static int send_all_locked(struct rm_connection *c, const struct iovec *iov, int iovcnt, int flags)
{
    uint64_t sent = 0;
    int rc;

    if (c->send_failed || c->tp.fd < 0)
        return -ENOTCONN;
    rc = transport_send_all(&c->tp, iov, iovcnt, flags, &sent);
    STAT_ADD(c->dev, peer_bytes_sent, sent);
    if (rc < 0)
        send_failed_locked(c);
    return rc;
}

/* flags: MSG_MORE when a payload follows at once (the header then shares its TCP segment). */
static int sbuf_send_locked(struct rm_connection *c, int flags)
{
    struct iovec iov = { c->sbuf, c->sbuf_len };
    int rc;

    if (c->sbuf_len == 0)
        return 0;
    rc = send_all_locked(c, &iov, 1, flags);
    c->sbuf_len = 0;
    return rc;
}

/* Append a header alone; its payload follows by other means (sendfile). */
static int queue_header_locked(struct rm_connection *c, const struct rpl_header *h)
{
    int rc;

    if (c->send_failed || c->tp.fd < 0)
        return -ENOTCONN;
    if (c->sbuf_len + RPL_HEADER_SIZE > SBUF_SIZE && (rc = sbuf_send_locked(c, 0)) < 0)
        return rc;
    rpl_pack(c->sbuf + c->sbuf_len, h);
    c->sbuf_len += RPL_HEADER_SIZE;
    return 0;
}

/* data-integrity-alg crc32c digests large payloads a piece at a time, each piece right after
 * it was read or received, while it is still in the CPU's cache: on 1 MiB writes that halves
 * what the digest costs against a second pass over the whole buffer. */
#define DIGEST_PIECE (256 * 1024)

static void put_crc32c(unsigned char *d, uint32_t crc)
{
    crc = ~crc;
    for (int i = 0; i < 4; i++)
        d[i] = (unsigned char)(crc >> (8 * i));      /* the kernel's crc32c byte order */
}

static int send_digest_frame_locked(struct rm_connection *c, const struct rpl_header *h, const unsigned char *d,
                                    int n)
{
    struct rpl_header dh = { .type = RPL_DIGEST, .id = h->id, .offset = h->offset, .length = (uint32_t)n,
                             .aux = h->length };

    return conn_send_frame_locked(c, &dh, d);
}

static int send_digest_locked(struct rm_connection *c, const struct rpl_header *h, const void *payload)
{
    unsigned char d[DIGEST_MAX];
    int n = digest_compute(c->integrity_alg, payload, h->length, d);

    return n < 0 ? n : send_digest_frame_locked(c, h, d, n);
}

static int is_digested(const struct rm_connection *c, const struct rpl_header *h)
{
    return c->integrity_alg && (h->type == RPL_DATA || h->type == RPL_RS_DATA) && h->length;
}

/* send_lock held: room for `count` bytes in c->rbuf. */
static int rbuf_reserve_locked(struct rm_connection *c, uint32_t count)
{
    if (c->rbuf_cap < count) {
        free(c->rbuf);
        c->rbuf = malloc(count);
        c->rbuf_cap = c->rbuf ? count : 0;
        if (!c->rbuf)
            return -ENOMEM;
    }
    return 0;
}

/* send_lock held: [offset, + count) of the device into c->rbuf. */
static int read_range_locked(struct rm_connection *c, uint64_t offset, uint32_t count)
{
    int rc = rbuf_reserve_locked(c, count);

    return rc < 0 ? rc : device_read_internal(c->dev, c->rbuf, count, offset);
}

static int send_frame_locked(struct rm_connection *c, const struct rpl_header *h, const void *payload);

int conn_send_frame_locked(struct rm_connection *c, const struct rpl_header *h, const void *payload)
{
    int rc;

    if (c->send_failed || c->tp.fd < 0)
        return -ENOTCONN;
    if (is_digested(c, h) && (rc = send_digest_locked(c, h, payload)) < 0)
        return rc;
    return send_frame_locked(c, h, payload);
}

/* The frame alone (its DIGEST, if any, already sent). */
static int send_frame_locked(struct rm_connection *c, const struct rpl_header *h, const void *payload)
{
    size_t need = RPL_HEADER_SIZE + h->length;
    unsigned char hdr[RPL_HEADER_SIZE];
    int rc;

    if (c->send_failed || c->tp.fd < 0)
        return -ENOTCONN;
    if (h->length <= SBUF_DIRECT) {
        if (c->sbuf_len + need > SBUF_SIZE && (rc = sbuf_send_locked(c, 0)) < 0)
            return rc;
        rpl_pack(c->sbuf + c->sbuf_len, h);
        if (h->length)
            memcpy(c->sbuf + c->sbuf_len + RPL_HEADER_SIZE, payload, h->length);
        c->sbuf_len += need;
        return 0;
    }
    if ((rc = sbuf_send_locked(c, 0)) < 0)
        return rc;
    rpl_pack(hdr, h);
    struct iovec iov[2] = { { hdr, RPL_HEADER_SIZE }, { (void *)payload, h->length } };
    return send_all_locked(c, iov, 2, 0);
}

void conn_flush(struct rm_connection *c)
{
    if (!__atomic_load_n(&c->attached, __ATOMIC_ACQUIRE))
        return;
    pthread_mutex_lock(&c->send_lock);
    sbuf_send_locked(c, 0);
    pthread_mutex_unlock(&c->send_lock);
}

/* send_lock held: a frame whose payload is the device range [h->offset, + h->length), sent
 * straight from the backing fd (sendfile: no copy through user space). The batched frames and
 * this header go out with MSG_MORE, so they share the payload's first TCP segment. */
int conn_send_range_frame_locked(struct rm_connection *c, const struct rpl_header *h)
{
    uint64_t sent;
    int rc;

    if (is_digested(c, h)) {
        const unsigned char *view = device_view(c->dev, h->offset, h->length);
        if (c->send_failed || c->tp.fd < 0)
            return -ENOTCONN;
        /* Digest the page cache in place and sendfile it as usual. A write to the same blocks
         * racing this one (a large write's local half runs outside this lock) could change
         * them in between; the peer then reports a digest failure (DRBD: "buffer modified by
         * upper layers during write"): a reconnect and that block's resync, never a wrong
         * block kept. */
        if (view) {
            unsigned char d[DIGEST_MAX];
            int n = digest_compute(c->integrity_alg, view, h->length, d);
            if (n < 0)
                return n;
            if ((rc = send_digest_frame_locked(c, h, d, n)) < 0)
                return rc;
            goto sendfile;
        }
        /* No view (a block device, a short file): read a copy, digest it, send it. */
        if (c->integrity_alg == RM_DIGEST_CRC32C) {
            unsigned char d[4];
            uint32_t crc = 0xffffffffu;
            if ((rc = rbuf_reserve_locked(c, h->length)) < 0)
                return rc;
            for (uint32_t off = 0; off < h->length; off += DIGEST_PIECE) {
                uint32_t n = h->length - off < DIGEST_PIECE ? h->length - off : DIGEST_PIECE;
                if ((rc = device_read_internal(c->dev, c->rbuf + off, n, h->offset + off)) < 0)
                    return rc;
                crc = crc32c_update(crc, c->rbuf + off, n);
            }
            put_crc32c(d, crc);
            if ((rc = send_digest_frame_locked(c, h, d, 4)) < 0 || (rc = send_frame_locked(c, h, c->rbuf)) < 0)
                return rc;
        } else if ((rc = read_range_locked(c, h->offset, h->length)) < 0 ||
                   (rc = conn_send_frame_locked(c, h, c->rbuf)) < 0) {
            return rc;
        }
        return sbuf_send_locked(c, 0);      /* on its way now, as a sendfile'd frame would be */
    }
sendfile:
    if ((rc = queue_header_locked(c, h)) < 0 || (rc = sbuf_send_locked(c, MSG_MORE)) < 0)
        return rc;
    rc = device_send_range(c->dev, &c->tp, h->offset, h->length, &sent);
    STAT_ADD(c->dev, peer_bytes_sent, sent);
    if (rc < 0)
        send_failed_locked(c);
    return rc;
}

int conn_send_frame(struct rm_connection *c, const struct rpl_header *h, const void *payload, int flush)
{
    int rc;

    pthread_mutex_lock(&c->send_lock);
    rc = conn_send_frame_locked(c, h, payload);
    if (rc == 0 && flush)
        rc = sbuf_send_locked(c, 0);
    pthread_mutex_unlock(&c->send_lock);
    return rc;
}

/* ---- pending slots ---- */

static void update_oldest_locked(struct rm_connection *c)
{
    uint64_t oldest = 0;

    if (c->npending) {
        /* Acks come back in order, so the oldest busy slot is near the front. */
        for (uint64_t id = c->next_id - c->npending; id < c->next_id; id++) {
            struct rm_pending *s = &c->slots[id % c->nslots];
            if (s->busy && s->id == id) {
                oldest = s->sent_ns;
                break;
            }
        }
    }
    STAT_SET(c->dev, peer_oldest_pending_ns, oldest);
    STAT_SET(c->dev, peer_pending, c->npending);
}

/* Finish one slot (pending_lock held): answer its origin if still owed, free the slot. With a
 * `touched` batch (the receiver thread) the origin's reference is released by flush_touched
 * once the batch is done, so its owner is woken once per batch; without one, or when the batch
 * is full, at once. */
static void finish_slot_locked(struct rm_connection *c, struct rm_pending *s, int rc, struct rm_origin **touched,
                               int *ntouched)
{
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
        device_al_end(c->dev, s->offset, s->length);   /* acked, or marked out of sync by the caller */
    s->busy = 0;
    s->origin = NULL;
    c->npending--;
    pthread_cond_broadcast(&c->slot_free);
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

int conn_set_max_buffers(struct rm_connection *c, uint32_t n)
{
    struct rm_pending *slots;
    int rc = 0;

    if (n < 32 || n > MAX_PENDING_SLOTS)
        return -EINVAL;
    pthread_mutex_lock(&c->pending_lock);
    if (n == c->nslots) {
        pthread_mutex_unlock(&c->pending_lock);
        return 0;
    }
    if (c->npending || conn_live(c)) {
        rc = -EBUSY;            /* only between links: the ring is indexed by id % nslots */
    } else if (!(slots = calloc(n, sizeof *slots))) {
        rc = -ENOMEM;
    } else {
        free(c->slots);
        c->slots = slots;
        c->nslots = n;
    }
    pthread_mutex_unlock(&c->pending_lock);
    return rc;
}

uint64_t conn_reserve_slot(struct rm_connection *c, int is_flush, uint64_t offset, uint32_t count)
{
    struct rm_pending *s;
    uint64_t id = NO_SLOT;

    pthread_mutex_lock(&c->pending_lock);
    while (conn_live(c) && c->slots[c->next_id % c->nslots].busy)
        pthread_cond_wait(&c->slot_free, &c->pending_lock);
    if (conn_live(c)) {
        id = c->next_id++;
        s = &c->slots[id % c->nslots];
        *s = (struct rm_pending){ .busy = 1, .replied = 1, .is_flush = is_flush, .id = id, .offset = offset,
                                  .length = count, .sent_ns = now_ns() };
        if (++c->npending == 1)
            STAT_SET(c->dev, peer_oldest_pending_ns, s->sent_ns);
        STAT_SET(c->dev, peer_pending, c->npending);
    }
    pthread_mutex_unlock(&c->pending_lock);
    return id;
}

void conn_mark_not_local(struct rm_connection *c, uint64_t id)
{
    pthread_mutex_lock(&c->pending_lock);
    c->slots[id % c->nslots].not_local = 1;
    pthread_mutex_unlock(&c->pending_lock);
}

int conn_bind_slot(struct rm_connection *c, uint64_t id, struct rm_origin *o, const unsigned char cookie[8],
                   int sent, int wait_ack)
{
    struct rm_pending *s = &c->slots[id % c->nslots];
    int ret = SLOT_ANSWER_NOW;

    pthread_mutex_lock(&c->pending_lock);
    if (s->busy && s->id == id) {
        if (sent == 0 && wait_ack) {
            s->replied = 0;
            s->origin = o;
            memcpy(s->cookie, cookie, 8);
            __atomic_fetch_add(&o->inflight, 1, __ATOMIC_RELAXED);
            ret = SLOT_BOUND;
        } else if (sent < 0) {
            s->busy = 0;
            c->npending--;
            pthread_cond_broadcast(&c->slot_free);
            update_oldest_locked(c);
            ret = SLOT_RETURNED;
        }
    }
    pthread_mutex_unlock(&c->pending_lock);
    return ret;
}

/* A freed slot keeps its fields until it is reserved again (with a new id). */
int conn_slot_failed_remote(struct rm_connection *c, uint64_t id)
{
    struct rm_pending *s = &c->slots[id % c->nslots];
    int failed;

    pthread_mutex_lock(&c->pending_lock);
    failed = !s->busy && s->id == id && s->not_local < 0;
    pthread_mutex_unlock(&c->pending_lock);
    return failed;
}

/* ---- the receiver thread ---- */

struct receiver {
    struct rm_connection *c;
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
    struct rm_spin spin;    /* mid-payload waits (device_splice_write) */
    unsigned char digest[DIGEST_MAX];   /* data-integrity-alg: the last DIGEST frame */
    uint32_t digest_len;
    uint64_t digest_id;
    int have_digest;
    int have_crc;           /* crc32c of the payload just received, computed piece by piece */
    unsigned char crc[4];
    unsigned char *scratch; /* VerifyT: our copy of the range an OV_REQUEST covers */
    size_t scratch_cap;
};

/* Large DATA/RS_DATA payloads go from the socket to the disk by splice (device_splice_write). */
static int splice_payload(struct receiver *r, const struct rpl_header *h, int fua)
{
    size_t have = r->end - r->start;
    int rc = device_splice_write(r->c->dev, &r->c->tp, r->pipe, r->buf + r->start, (uint32_t)have,
                                 h->offset, h->length, fua, &r->spliced_rc, NULL, &r->spin);

    r->start = r->end;
    STAT_SET(r->c->dev, peer_last_rx_ns, now_ns());
    return rc;
}

static int recv_exact(struct receiver *r, unsigned char *dst, size_t len)
{
    return transport_recv_exact_buffered(&r->c->tp, r->buf, &r->start, r->end, dst, len);
}

/* data-integrity-alg crc32c: receive a payload a piece at a time, digesting each piece while
 * it is in cache (check_integrity then uses r->crc). */
static int recv_crc32c(struct receiver *r, unsigned char *dst, uint32_t len)
{
    uint32_t crc = 0xffffffffu;
    int rc;

    for (uint32_t off = 0; off < len; off += DIGEST_PIECE) {
        uint32_t n = len - off < DIGEST_PIECE ? len - off : DIGEST_PIECE;
        if ((rc = recv_exact(r, dst + off, n)) < 0)
            return rc;
        crc = crc32c_update(crc, dst + off, n);
    }
    put_crc32c(r->crc, crc);
    r->have_crc = 1;
    return 0;
}

static void queue_ack(struct rm_connection *c, uint16_t type, const struct rpl_header *req, uint32_t aux)
{
    struct rpl_header h = { .type = type, .id = req->id, .offset = req->offset, .aux = aux };

    pthread_mutex_lock(&c->send_lock);
    conn_send_frame_locked(c, &h, NULL);
    pthread_mutex_unlock(&c->send_lock);
}

static void complete_id(struct receiver *r, uint64_t id, int mark_dirty)
{
    struct rm_connection *c = r->c;
    struct rm_pending *s;

    pthread_mutex_lock(&c->pending_lock);
    s = &c->slots[id % c->nslots];
    if (s->busy && s->id == id) {
        if (mark_dirty && !s->is_flush)
            device_mark_dirty(c->dev, s->offset, s->length);
        if (mark_dirty && s->not_local)
            s->not_local = -1;      /* failed: retry_on_peer reads it if it answers itself */
        finish_slot_locked(c, s, s->not_local < 0 ? -EIO : 0, r->touched, &r->ntouched);
        update_oldest_locked(c);
    }
    pthread_mutex_unlock(&c->pending_lock);
}

static int in_range(struct rm_connection *c, uint64_t offset, uint64_t length)
{
    return device_in_range(c->dev, offset, length);
}

/* data-integrity-alg: the DIGEST frame just before must match this DATA/RS_DATA payload. */
static int check_integrity(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto)
{
    struct rm_connection *c = r->c;
    unsigned char d[DIGEST_MAX];
    int n;

    if (!r->have_digest || r->digest_id != h->id || !payload) {
        *proto = 1;
        return -EPROTO;
    }
    r->have_digest = 0;
    if (r->have_crc) {
        memcpy(d, r->crc, 4);
        n = 4;
        r->have_crc = 0;
    } else {
        n = digest_compute(c->integrity_alg, payload, h->length, d);
    }
    if (n < 0 || (uint32_t)n != r->digest_len || memcmp(d, r->digest, r->digest_len) != 0) {
        STAT_ADD(c->dev, integrity_failures, 1);
        device_post_event(c->dev, RM_EV_INTEGRITY, EBADMSG, h->offset, h->length);
        return -EBADMSG;
    }
    return 0;
}

static uint32_t blocks_of(uint32_t length)
{
    return (length + RM_BLOCK_SIZE - 1) / RM_BLOCK_SIZE;
}

/* The next run of set bits in `bits` (one per 4 KiB block of [offset, + length)) at or after
 * block *next: its byte range in *start and *len, its block count as the result (0 when
 * there is none), and *next moves past it. */
static uint32_t next_run(const unsigned char *bits, uint64_t offset, uint32_t length, uint32_t *next,
                         uint64_t *start, uint64_t *len)
{
    uint32_t nblocks = blocks_of(length), i = *next, j;
    uint64_t end;

    while (i < nblocks && !(bits[i / 8] & (1u << (i % 8))))
        i++;
    for (j = i; j < nblocks && (bits[j / 8] & (1u << (j % 8))); j++)
        ;
    *next = j;
    if (i == j)
        return 0;
    *start = offset + (uint64_t)i * RM_BLOCK_SIZE;
    end = offset + (uint64_t)j * RM_BLOCK_SIZE;
    *len = (end > offset + length ? offset + length : end) - *start;
    return j - i;
}

/* Verify found the blocks whose bits are set in `bits` different: mark them out of sync and
 * tell Python, one event per run. */
static void mark_verify_runs(struct rm_connection *c, uint64_t offset, uint32_t length, const unsigned char *bits)
{
    uint32_t next = 0, n;
    uint64_t start, len;

    while ((n = next_run(bits, offset, length, &next, &start, &len))) {
        device_mark_dirty(c->dev, start, len);
        STAT_ADD(c->dev, verify_oos_blocks, n);
        device_post_event(c->dev, RM_EV_VERIFY_OOS, 0, start, len);
    }
}

/* VerifyT and csums SyncTarget: read [offset, + length) here and set the bit in `equal` of each
 * 4 KiB block whose `alg` digest is the peer's (digests: one per block). A range we cannot
 * read has no equal block (the peer's copy is what a resync would give us). Returns how many
 * are equal, or -ENOMEM. */
static int blocks_equal_to_peer(struct receiver *r, int alg, uint64_t offset, uint32_t length,
                                const unsigned char *digests, unsigned char *equal)
{
    struct rm_connection *c = r->c;
    int dsize = digest_size(alg), count = 0, rc;
    uint32_t nblocks = blocks_of(length);
    unsigned char d[DIGEST_MAX];

    if (r->scratch_cap < length) {
        free(r->scratch);
        r->scratch = malloc(length);
        r->scratch_cap = r->scratch ? length : 0;
        if (!r->scratch)
            return -ENOMEM;
    }
    rc = device_disk_failed(c->dev) ? -EIO : device_read_internal(c->dev, r->scratch, length, offset);
    for (uint32_t i = 0; rc == 0 && i < nblocks; i++) {
        uint32_t off = i * RM_BLOCK_SIZE, n = length - off < RM_BLOCK_SIZE ? length - off : RM_BLOCK_SIZE;
        if (digest_compute(alg, r->scratch + off, n, d) == dsize &&
            memcmp(d, digests + (size_t)i * (size_t)dsize, (size_t)dsize) == 0) {
            equal[i / 8] |= (unsigned char)(1u << (i % 8));
            count++;
        }
    }
    return count;
}

/* VerifyT: compare our blocks with the peer's digests, mark and answer. A range we cannot read
 * counts as different (the peer's copy is what a resync would give us). */
static int verify_compare(struct receiver *r, const struct rpl_header *h, const unsigned char *payload)
{
    struct rm_connection *c = r->c;
    uint32_t len = h->aux, nblocks = blocks_of(len);
    unsigned char bits[RM_MAX_VERIFY_CHUNK / RM_BLOCK_SIZE / 8] = { 0 };
    int equal = blocks_equal_to_peer(r, h->flags, h->offset, len, payload, bits), differ;

    if (equal < 0)
        return equal;
    differ = (uint32_t)equal < nblocks;
    for (uint32_t i = 0; i < nblocks; i++)         /* the equal bits, turned into the different */
        bits[i / 8] ^= (unsigned char)(1u << (i % 8));
    if (differ)
        mark_verify_runs(c, h->offset, len, bits);
    STAT_ADD(c->dev, verify_bytes_checked, len);
    struct rpl_header rh = { .type = RPL_OV_REPLY, .id = h->id, .offset = h->offset, .aux = len,
                             .length = differ ? (nblocks + 7) / 8 : 0 };
    pthread_mutex_lock(&c->send_lock);
    conn_send_frame_locked(c, &rh, bits);
    pthread_mutex_unlock(&c->send_lock);
    return 0;
}

static void serve_remote_read(struct rm_connection *c, const struct rpl_header *req);
static void complete_remote_read(struct rm_connection *c, const struct rpl_header *h, const unsigned char *payload);
static void fail_remote_reads(struct rm_connection *c);

/* Apply one frame. Returns 0, or a negative errno that ends the link (*proto set when the
 * peer broke the protocol rather than the socket failing). */
static int csum_request(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto);
static int csum_reply(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto);

static int handle_frame(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto)
{
    struct rm_connection *c = r->c;
    int fua = h->flags & RPL_FLAG_FUA, rc;

    switch (h->type) {
    case RPL_DATA:
    case RPL_TRIM:
    case RPL_ZEROES:
    case RPL_FLUSH:
        /* Only a Secondary takes writes from its peer: two writers would diverge. */
        if (!device_is_read_only(c->dev) ||
            (h->type != RPL_FLUSH && !in_range(c, h->offset, h->type == RPL_DATA ? h->length : h->aux))) {
            *proto = 1;
            return -EPROTO;
        }
        if (is_digested(c, h) && (rc = check_integrity(r, h, payload, proto)) < 0)
            return rc;
        if (c->protocol == RM_PROTOCOL_B && h->type != RPL_FLUSH) {
            queue_ack(c, RPL_RECV_ACK, h, 0);
            /* "Received" is the whole point of B: say so before the write, unless more frames
             * are already here (then the batch's acks go out together). */
            if (r->end - r->start < RPL_HEADER_SIZE)
                conn_flush(c);
        }
        if (device_disk_failed(c->dev))
            rc = h->type == RPL_FLUSH ? 0 : -EIO;   /* out of use: the Primary marks it */
        else if (h->type == RPL_DATA)
            rc = payload ? device_pwrite(c->dev, payload, h->length, h->offset, fua) : r->spliced_rc;
        else if (h->type == RPL_TRIM)
            rc = device_trim(c->dev, h->aux, h->offset, fua);
        else if (h->type == RPL_ZEROES)
            rc = device_zero(c->dev, h->aux, h->offset, !(h->flags & RPL_FLAG_NO_HOLE), fua);
        else
            rc = device_flush(c->dev);
        STAT_ADD(c->dev, peer_frames_applied, 1);
        if (rc == 0 && (h->flags & RPL_FLAG_NOT_LOCAL) && h->type != RPL_FLUSH)
            device_mark_dirty(c->dev, h->offset, h->type == RPL_DATA ? h->length : h->aux);
        if (rc < 0)
            queue_ack(c, RPL_NEG_ACK, h, (uint32_t)-rc);
        else if (h->type == RPL_FLUSH)
            queue_ack(c, RPL_FLUSH_ACK, h, 0);
        else if (c->protocol != RM_PROTOCOL_B)
            queue_ack(c, RPL_WRITE_ACK, h, 0);
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
        if (h->length || h->aux > RM_MAX_REQUEST || !in_range(c, h->offset, h->aux)) {
            *proto = 1;
            return -EPROTO;
        }
        serve_remote_read(c, h);
        return 0;
    case RPL_READ_REPLY:
        complete_remote_read(c, h, payload);
        return 0;
    case RPL_PING:
        queue_ack(c, RPL_PING_ACK, h, 0);
        return 0;
    case RPL_PING_ACK:
        return 0;
    case RPL_RS_DATA:
        if (!in_range(c, h->offset, h->length)) {
            *proto = 1;
            return -EPROTO;
        }
        if (is_digested(c, h) && (rc = check_integrity(r, h, payload, proto)) < 0)
            return rc;
        rc = payload ? device_pwrite(c->dev, payload, h->length, h->offset, 0) : r->spliced_rc;
        if (rc == 0) {
            device_clear_dirty(c->dev, h->offset, h->length);
            STAT_ADD(c->dev, resync_bytes_received, h->length);
            queue_ack(c, RPL_RS_DONE, h, h->length);
        }
        return 0;
    case RPL_RS_DONE:
        if (!in_range(c, h->offset, h->aux)) {
            *proto = 1;
            return -EPROTO;
        }
        device_clear_dirty(c->dev, h->offset, h->aux);
        STAT_ADD(c->dev, resync_bytes_acked, h->aux);
        return 0;
    case RPL_DIGEST:
        if (!c->integrity_alg || h->length != (uint32_t)digest_size(c->integrity_alg)) {
            *proto = 1;
            return -EPROTO;
        }
        memcpy(r->digest, payload, h->length);
        r->digest_len = h->length;
        r->digest_id = h->id;
        r->have_digest = 1;
        return 0;
    case RPL_OV_REQUEST: {
        int dsize = digest_size(h->flags);
        if (dsize <= 0 || h->aux == 0 || h->aux > RM_MAX_VERIFY_CHUNK || !in_range(c, h->offset, h->aux) ||
            h->length != blocks_of(h->aux) * (uint32_t)dsize) {
            *proto = 1;
            return -EPROTO;
        }
        return verify_compare(r, h, payload);
    }
    case RPL_OV_REPLY:
        if (h->aux == 0 || h->aux > RM_MAX_VERIFY_CHUNK || !in_range(c, h->offset, h->aux) ||
            (h->length && h->length != (blocks_of(h->aux) + 7) / 8)) {
            *proto = 1;
            return -EPROTO;
        }
        if (h->length)
            mark_verify_runs(c, h->offset, h->aux, payload);
        STAT_ADD(c->dev, verify_bytes_done, h->aux);
        return 0;
    case RPL_RS_CSUM:
        return csum_request(r, h, payload, proto);
    case RPL_RS_CSUM_REPLY:
        return csum_reply(r, h, payload, proto);
    default:
        if (h->type < RPL_CONTROL_MIN || h->length > RPL_MAX_CONTROL) {
            *proto = 1;
            return -EPROTO;
        }
        pthread_mutex_lock(&c->control_lock);
        if (c->control_count == 256) {
            pthread_mutex_unlock(&c->control_lock);
            *proto = 1;
            return -ENOBUFS;   /* Python stopped reading: drop the link rather than block */
        }
        unsigned char *frame = malloc(RPL_HEADER_SIZE + h->length);
        if (!frame) {
            pthread_mutex_unlock(&c->control_lock);
            return -ENOMEM;
        }
        rpl_pack(frame, h);
        memcpy(frame + RPL_HEADER_SIZE, payload, h->length);
        unsigned slot = (c->control_head + c->control_count) % 256;
        c->control[slot] = frame;
        c->control_len[slot] = RPL_HEADER_SIZE + h->length;
        c->control_count++;
        pthread_mutex_unlock(&c->control_lock);
        device_post_event(c->dev, RM_EV_PEER_CONTROL, 0, h->type, h->length);
        return 0;
    }
}

static int receive_loop(struct receiver *r, int *proto, uint64_t *bad_type)
{
    struct rm_connection *c = r->c;

    for (;;) {
        struct rpl_header h;
        const unsigned char *payload;
        int rc;

        if (r->end - r->start < RPL_HEADER_SIZE) {
            /* Input drained: send the acks and client answers this batch produced. */
            conn_flush(c);
            flush_touched(r->touched, &r->ntouched);
            if (r->start) {
                memmove(r->buf, r->buf + r->start, r->end - r->start);
                r->end -= r->start;
                r->start = 0;
            }
            size_t want = r->header_only ? RPL_HEADER_SIZE - r->end : RBUF_SIZE - r->end;
            ssize_t n = c->tp.ops->recv(&c->tp, r->buf + r->end, want, 0);
            if (n == 0)
                return r->end ? -ECONNRESET : 0;
            if (n == -EINTR)
                continue;
            if (n < 0)
                return (int)n;
            r->end += (size_t)n;
            STAT_SET(c->dev, peer_last_rx_ns, now_ns());
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
                   device_is_read_only(c->dev) && in_range(c, h.offset, h.length) &&
                   !device_disk_failed(c->dev) && !c->integrity_alg) {
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
            if (c->integrity_alg == RM_DIGEST_CRC32C && is_digested(c, &h)) {
                if ((rc = recv_crc32c(r, r->payload, h.length)) < 0)
                    return rc;
            } else if ((rc = recv_exact(r, r->payload, h.length)) < 0) {
                return rc;
            }
            STAT_SET(c->dev, peer_last_rx_ns, now_ns());
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
    struct rm_connection *c = arg;
    struct receiver r = { .c = c };
    uint64_t bad_type = 0;
    int proto = 0, rc;

    r.buf = malloc(RBUF_SIZE);
    if (transport_open_pipe(r.pipe) < 0)
        r.pipe[0] = r.pipe[1] = -1;
    rc = r.buf ? receive_loop(&r, &proto, &bad_type) : -ENOMEM;
    if (r.pipe[0] >= 0) {
        close(r.pipe[0]);
        close(r.pipe[1]);
    }

    /* Sweep: from here on writes go to the bitmap; everything unacknowledged is out of sync. */
    pthread_mutex_lock(&c->pending_lock);
    __atomic_store_n(&c->dead, 1, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < c->nslots; i++) {
        struct rm_pending *s = &c->slots[i];
        if (!s->busy)
            continue;
        if (!s->is_flush)
            device_mark_dirty(c->dev, s->offset, s->length);
        if (s->not_local)
            s->not_local = -1;
        finish_slot_locked(c, s, s->not_local ? -EIO : 0, r.touched, &r.ntouched);
        if (r.ntouched == MAX_TOUCHED)
            flush_touched(r.touched, &r.ntouched);
    }
    update_oldest_locked(c);
    pthread_mutex_unlock(&c->pending_lock);
    flush_touched(r.touched, &r.ntouched);
    fail_remote_reads(c);
    c->tp.ops->shutdown(&c->tp, SHUT_RDWR);
    STAT_SET(c->dev, peer_connected, 0);
    device_post_event(c->dev, proto ? RM_EV_PEER_PROTOCOL : RM_EV_PEER_LOST, rc < 0 ? -rc : 0,
                      proto ? bad_type : 0, 0);
    free(r.buf);
    free(r.payload);
    free(r.scratch);
    return NULL;
}

/* ---- attach, detach, ping, resync, control frames ---- */

static int attach(struct rm_connection *c, int fd, struct rm_tls *tls, int protocol)
{
    int rc;

    if (protocol < RM_PROTOCOL_A || protocol > RM_PROTOCOL_C)
        return -EINVAL;
    if (__atomic_load_n(&c->attached, __ATOMIC_ACQUIRE))
        return -EBUSY;
    pthread_mutex_lock(&c->send_lock);
    if (tls)
        transport_tls_init(&c->tp, tls);
    else
        transport_socket_init(&c->tp, fd);
    c->protocol = protocol;
    c->send_failed = 0;
    c->sbuf_len = 0;
    pthread_mutex_unlock(&c->send_lock);
    __atomic_store_n(&c->dead, 0, __ATOMIC_RELEASE);
    STAT_SET(c->dev, peer_last_rx_ns, now_ns());
    STAT_SET(c->dev, peer_connected, 1);
    __atomic_store_n(&c->attached, 1, __ATOMIC_RELEASE);
    rc = pthread_create(&c->receiver, NULL, receiver_main, c);
    if (rc) {
        __atomic_store_n(&c->attached, 0, __ATOMIC_RELEASE);
        STAT_SET(c->dev, peer_connected, 0);
        c->tp.fd = -1;
        return -rc;
    }
    return 0;
}

int conn_attach(struct rm_connection *c, int fd, int protocol)
{
    return attach(c, fd, NULL, protocol);
}

int conn_attach_tls(struct rm_connection *c, int fd, struct rm_tls *s, int protocol)
{
    if (!s || fd != tls_fd(s))
        return -EINVAL;
    return attach(c, fd, s, protocol);
}

int conn_detach(struct rm_connection *c)
{
    if (!__atomic_load_n(&c->attached, __ATOMIC_ACQUIRE))
        return 0;
    c->tp.ops->shutdown(&c->tp, SHUT_RDWR);   /* wakes the receiver; it sweeps and exits */
    pthread_join(c->receiver, NULL);
    pthread_mutex_lock(&c->send_lock);
    c->tp.fd = -1;
    c->sbuf_len = 0;
    pthread_mutex_unlock(&c->send_lock);
    __atomic_store_n(&c->attached, 0, __ATOMIC_RELEASE);
    drop_control_frames(c);
    return 0;
}

int conn_ping(struct rm_connection *c)
{
    struct rpl_header h = { .type = RPL_PING };
    int rc;

    if (!conn_live(c))
        return -ENOTCONN;
    /* Never wait behind another send: on a dead link a resync chunk or a large write blocks in
     * sendmsg with send_lock held until TCP gives up, and the caller (Python's monitor) must stay
     * free to notice the silence and detach, which unblocks that send. */
    if (pthread_mutex_trylock(&c->send_lock) != 0)
        return -EBUSY;
    rc = conn_send_frame_locked(c, &h, NULL);
    if (rc == 0)
        rc = sbuf_send_locked(c, 0);
    pthread_mutex_unlock(&c->send_lock);
    return rc;
}

int conn_resync_send(struct rm_connection *c, uint64_t offset, uint32_t length)
{
    int rc;

    if (length == 0 || length > RM_MAX_RESYNC_CHUNK || !in_range(c, offset, length))
        return -EINVAL;
    if (!conn_live(c))
        return -ENOTCONN;
    /* Read under the send lock: the block version we send cannot be older than one already
     * queued by a concurrent application write (see the file comment). sendfile() moves the
     * blocks from the page cache to the socket without a copy through user space. */
    pthread_mutex_lock(&c->send_lock);
    rc = conn_send_range_frame_locked(c, &(struct rpl_header){ .type = RPL_RS_DATA, .id = offset,
                                                           .offset = offset, .length = length });
    pthread_mutex_unlock(&c->send_lock);
    if (rc == 0)
        STAT_ADD(c->dev, resync_bytes_sent, length);
    return rc;
}

int conn_set_integrity(struct rm_connection *c, int alg)
{
    if (alg != RM_DIGEST_NONE && digest_size(alg) <= 0)
        return -ENOENT;
    if (__atomic_load_n(&c->attached, __ATOMIC_ACQUIRE))
        return -EBUSY;
    c->integrity_alg = alg;
    return 0;
}

/* OV_REQUEST / RS_CSUM: read [offset, + length) here (range checked by the caller) and send
 * one `alg` digest per 4 KiB block, read and sent under send_lock so the frame sits in the
 * stream where the data would have. */
static int send_block_digests(struct rm_connection *c, uint16_t type, int alg, uint64_t offset, uint32_t length)
{
    int dsize = digest_size(alg), rc;
    uint32_t nblocks = blocks_of(length);
    unsigned char *digests;

    if (dsize <= 0)
        return -ENOENT;
    if (!conn_live(c))
        return -ENOTCONN;
    digests = malloc((size_t)nblocks * (size_t)dsize);
    if (!digests)
        return -ENOMEM;
    pthread_mutex_lock(&c->send_lock);
    rc = read_range_locked(c, offset, length);
    for (uint32_t i = 0; rc == 0 && i < nblocks; i++) {
        uint32_t off = i * RM_BLOCK_SIZE, n = length - off < RM_BLOCK_SIZE ? length - off : RM_BLOCK_SIZE;
        if (digest_compute(alg, c->rbuf + off, n, digests + (size_t)i * (size_t)dsize) != dsize)
            rc = -EINVAL;
    }
    if (rc == 0) {
        struct rpl_header h = { .type = type, .flags = (uint16_t)alg, .id = offset, .offset = offset,
                                .length = nblocks * (uint32_t)dsize, .aux = length };
        rc = conn_send_frame_locked(c, &h, digests);
        if (rc == 0)
            rc = sbuf_send_locked(c, 0);
    }
    pthread_mutex_unlock(&c->send_lock);
    free(digests);
    return rc;
}

int conn_verify_send(struct rm_connection *c, int alg, uint64_t offset, uint32_t length)
{
    int rc;

    if (digest_size(alg) <= 0)
        return -ENOENT;
    if (length == 0 || length > RM_MAX_VERIFY_CHUNK || !in_range(c, offset, length))
        return -EINVAL;
    rc = send_block_digests(c, RPL_OV_REQUEST, alg, offset, length);
    if (rc == 0)
        STAT_ADD(c->dev, verify_bytes_sent, length);
    return rc;
}

int conn_send_control(struct rm_connection *c, const void *frame, uint32_t length)
{
    struct rpl_header h;

    if (length < RPL_HEADER_SIZE || rpl_unpack(frame, &h) < 0 || h.type < RPL_CONTROL_MIN ||
        h.length != length - RPL_HEADER_SIZE || h.length > RPL_MAX_CONTROL)
        return -EINVAL;
    if (!conn_live(c))
        return -ENOTCONN;
    return conn_send_frame(c, &h, (const unsigned char *)frame + RPL_HEADER_SIZE, 1);
}

int conn_recv_control(struct rm_connection *c, void *buf, uint32_t cap)
{
    int len = 0;

    pthread_mutex_lock(&c->control_lock);
    if (c->control_count) {
        unsigned slot = c->control_head;
        if (c->control_len[slot] > cap) {
            len = -ENOSPC;
        } else {
            len = (int)c->control_len[slot];
            memcpy(buf, c->control[slot], c->control_len[slot]);
            free(c->control[slot]);
            c->control_head = (slot + 1) % 256;
            c->control_count--;
        }
    }
    pthread_mutex_unlock(&c->control_lock);
    return len;
}

/* Receiver thread: the Diskless peer reads [offset, + aux) from our disk. */
static void serve_remote_read(struct rm_connection *c, const struct rpl_header *req)
{
    struct rpl_header h = { .type = RPL_READ_REPLY, .id = req->id, .offset = req->offset };

    pthread_mutex_lock(&c->send_lock);
    if (device_disk_failed(c->dev) || req->aux == 0) {
        h.aux = req->aux ? EIO : 0;
        conn_send_frame_locked(c, &h, NULL);
    } else {
        h.length = req->aux;
        if (conn_send_range_frame_locked(c, &h) == 0) {
            STAT_ADD(c->dev, reads, 1);
            STAT_ADD(c->dev, bytes_read, req->aux);
        }
    }
    pthread_mutex_unlock(&c->send_lock);
}

static void complete_remote_read(struct rm_connection *c, const struct rpl_header *h, const unsigned char *payload)
{
    struct rm_read_wait **pw, *w = NULL;

    pthread_mutex_lock(&c->read_lock);
    for (pw = &c->reads; *pw; pw = &(*pw)->next) {
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
        pthread_cond_broadcast(&c->read_done);
    }
    pthread_mutex_unlock(&c->read_lock);
}

/* The link is gone (dead is set, so no new read registers): every waiting read fails. */
static void fail_remote_reads(struct rm_connection *c)
{
    pthread_mutex_lock(&c->read_lock);
    while (c->reads) {
        c->reads->rc = -EIO;
        c->reads->done = 1;
        c->reads = c->reads->next;
    }
    pthread_cond_broadcast(&c->read_done);
    pthread_mutex_unlock(&c->read_lock);
}

int conn_remote_read(struct rm_connection *c, void *buf, uint32_t count, uint64_t offset)
{
    struct rm_read_wait w = { .buf = buf, .len = count };
    struct rpl_header h = { .type = RPL_READ_REQUEST, .offset = offset, .aux = count };

    if (count == 0)
        return 0;
    pthread_mutex_lock(&c->read_lock);
    if (!conn_live(c)) {
        pthread_mutex_unlock(&c->read_lock);
        return -EIO;
    }
    w.id = h.id = c->next_read_id++;
    w.next = c->reads;
    c->reads = &w;
    pthread_mutex_unlock(&c->read_lock);
    if (conn_send_frame(c, &h, NULL, 1) < 0)
        complete_remote_read(c, &(struct rpl_header){ .id = w.id, .aux = EIO }, NULL);
    pthread_mutex_lock(&c->read_lock);
    while (!w.done)
        pthread_cond_wait(&c->read_done, &c->read_lock);
    pthread_mutex_unlock(&c->read_lock);
    if (w.rc == 0) {
        STAT_ADD(c->dev, reads, 1);
        STAT_ADD(c->dev, bytes_read, count);
    }
    return w.rc;
}

/* ---- checksum-based resync (csums-alg) ----
 *
 *   SyncSource                                         SyncTarget
 *   conn_resync_csum_send: read the range and   ──►    csum_request: read the same range (stream
 *   send RS_CSUM (a digest per 4 KiB block)            order: the same versions), compare, clear
 *   under the send lock                                the bits of the equal blocks, RS_CSUM_REPLY
 *   csum_reply: clear the bits of the equal     ◄──    (a bit per block, 1 = in sync)
 *   blocks; the others stay dirty for RS_DATA
 *
 * DRBD's SyncTarget sends the digest with its request and the SyncSource answers "in sync" or
 * the data; our SyncSource drives the resync, so the roles of asking and comparing swap, and
 * the blocks that differ go in the following RS_DATA pass (Python's runner), never from the
 * receiver thread (a large send there could block against the peer's receiver). */

static int csum_range_ok(struct rm_connection *c, uint64_t offset, uint32_t length)
{
    return length > 0 && length <= RM_MAX_RESYNC_CHUNK && in_range(c, offset, length);
}

/* Clear the dirty bits of the blocks whose bit is set in `bits` (one per 4 KiB block of
 * [offset, + length)), one run at a time. Returns the bytes cleared. */
static uint64_t clear_equal_runs(struct rm_connection *c, uint64_t offset, uint32_t length, const unsigned char *bits)
{
    uint32_t next = 0;
    uint64_t start, len, cleared = 0;

    while (next_run(bits, offset, length, &next, &start, &len)) {
        device_clear_dirty(c->dev, start, len);
        cleared += len;
    }
    return cleared;
}

/* SyncTarget: compare our blocks with the SyncSource's digests. A range we cannot read has no
 * equal block (the peer's data is what the resync gives us). */
static int csum_request(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto)
{
    struct rm_connection *c = r->c;
    int dsize = digest_size(h->flags), any;
    uint32_t len = h->aux, nblocks = blocks_of(len);
    unsigned char bits[RM_MAX_RESYNC_CHUNK / RM_BLOCK_SIZE / 8] = { 0 };

    if (dsize <= 0 || !csum_range_ok(c, h->offset, len) || h->length != nblocks * (uint32_t)dsize) {
        *proto = 1;
        return -EPROTO;
    }
    any = blocks_equal_to_peer(r, h->flags, h->offset, len, payload, bits);
    if (any < 0)
        return any;
    if (any)
        clear_equal_runs(c, h->offset, len, bits);
    STAT_ADD(c->dev, csum_bytes_checked, len);
    struct rpl_header rh = { .type = RPL_RS_CSUM_REPLY, .id = h->id, .offset = h->offset, .aux = len,
                             .length = any ? (nblocks + 7) / 8 : 0 };
    pthread_mutex_lock(&c->send_lock);
    conn_send_frame_locked(c, &rh, bits);
    pthread_mutex_unlock(&c->send_lock);
    return 0;
}

/* SyncSource: the target cleared its bits of the equal blocks; clear ours. */
static int csum_reply(struct receiver *r, const struct rpl_header *h, const unsigned char *payload, int *proto)
{
    struct rm_connection *c = r->c;
    uint64_t equal = 0;

    if (!csum_range_ok(c, h->offset, h->aux) || (h->length && h->length != (blocks_of(h->aux) + 7) / 8)) {
        *proto = 1;
        return -EPROTO;
    }
    if (h->length)
        equal = clear_equal_runs(c, h->offset, h->aux, payload);
    STAT_ADD(c->dev, csum_bytes_equal, equal);
    STAT_ADD(c->dev, csum_bytes_done, h->aux);
    return 0;
}

int conn_resync_csum_send(struct rm_connection *c, int alg, uint64_t offset, uint32_t length)
{
    int rc;

    if (digest_size(alg) <= 0)
        return -ENOENT;
    if (!csum_range_ok(c, offset, length))
        return -EINVAL;
    rc = send_block_digests(c, RPL_RS_CSUM, alg, offset, length);
    if (rc == 0)
        STAT_ADD(c->dev, csum_bytes_sent, length);
    return rc;
}
