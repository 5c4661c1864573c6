/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The NBD transmission phase (NBD project doc/proto.md, "Transmission"), one call per connection.
 * A frontend: it parses and validates NBD requests and calls only the request layer.
 *
 * The loop reads as many request bytes as the socket has, submits every complete request it
 * holds, and queues the simple replies in one output buffer that goes out in a single send just
 * before the loop would sleep. At queue depth 32 that is one recv and one send for 32
 * requests; at queue depth 1 nothing waits, since the reply is flushed before the next recv.
 * Write payloads of SPLICE_MIN and more still in the socket go to the request layer as a
 * stream (spliced to the disk as they arrive).
 *
 * This thread is the only one that writes to its client socket. Answers owed by the peer
 * (protocols B and C) or by the write-behind thread arrive through the rm_origin: complete()
 * appends the reply to `rq` under this connection's own small lock, release() writes the
 * eventfd only if this thread sleeps (an atomic flag), and this thread sends them before it
 * sleeps again. While it owes nothing it sleeps in a plain recv; while answers are owed it
 * sleeps in poll() on the socket and the eventfd. A client that stops reading its replies
 * blocks only this thread, in its own send. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nbd_wire.h"
#include "request.h"

#define IN_SIZE (256 * 1024)
#define OUT_SIZE (256 * 1024)
#define RQ_INITIAL (16 * NBD_REPLY_SIZE * 64)
/* Payload buffers above this size are released after use, to keep RSS small between bursts. */
#define KEEP_PAYLOAD (4 * 1024 * 1024)

struct conn {
    struct rm_origin origin;   /* first: the connection and the writer complete through it */
    rm_engine *eng;
    struct rm_transport tp;    /* the client socket, or a TLS session on it */
    int zero_copy;             /* tp moves file pages itself (a socket: sendfile, splice) */
    int efd;                   /* eventfd: answers were queued while this thread slept */
    int sleeping;              /* atomic: this thread is (about to be) in poll() */
    int send_failed;

    /* answers queued by other threads (rq_lock): swapped with rq_spare and sent by this thread */
    pthread_mutex_t rq_lock;
    unsigned char *rq, *rq_spare;
    size_t rq_len, rq_cap, rq_spare_cap;
    int rq_lost;               /* an answer could not be queued (no memory): end the connection */

    char *in;
    size_t in_start, in_end;
    char *out;                 /* this thread's own answers, and small read data */
    size_t out_len;
    char *payload;
    size_t payload_cap;
    int header_only;           /* read one request header at a time (after a large write) */
    struct rm_writeq wq;       /* large streamed writes (request layer) */
};

/* The NBD errno values (proto.md "Error values") coincide with Linux's; anything else is EIO. */
static uint32_t nbd_errno(int rc)
{
    switch (-rc) {
    case 0: return 0;
    case EPERM: case EIO: case ENOMEM: case EINVAL: case ENOSPC: case EOVERFLOW:
    case EOPNOTSUPP: case ESHUTDOWN:
        return (uint32_t)-rc;
    case EDQUOT: case EFBIG: return ENOSPC;
    default: return EIO;
    }
}

static void fill_reply(unsigned char *p, uint32_t error, const unsigned char *cookie)
{
    put_be32(p, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(p + 4, error);
    memcpy(p + 8, cookie, 8);
}

/* ---- rm_origin: called by the receiver and the write-behind thread, never blocking ---- */

static void origin_complete(struct rm_origin *o, const unsigned char cookie[8], int rc)
{
    struct conn *c = (struct conn *)o;

    pthread_mutex_lock(&c->rq_lock);
    if (c->rq_len + NBD_REPLY_SIZE > c->rq_cap) {
        size_t cap = c->rq_cap ? c->rq_cap * 2 : RQ_INITIAL;
        unsigned char *p = realloc(c->rq, cap);
        if (p) {
            c->rq = p;
            c->rq_cap = cap;
        }
    }
    if (c->rq_len + NBD_REPLY_SIZE <= c->rq_cap) {
        fill_reply(c->rq + c->rq_len, nbd_errno(rc), cookie);
        __atomic_store_n(&c->rq_len, c->rq_len + NBD_REPLY_SIZE, __ATOMIC_SEQ_CST);
    } else {
        c->rq_lost = 1;
    }
    pthread_mutex_unlock(&c->rq_lock);
}

/* Wake this connection's thread if it sleeps, then drop n references. Both under rq_lock: the
 * thread frees the connection only after it saw inflight at zero and took rq_lock once more,
 * so nothing here touches `c` after the unlock that lets it go. */
static void origin_release(struct rm_origin *o, int n)
{
    struct conn *c = (struct conn *)o;
    uint64_t one = 1;

    pthread_mutex_lock(&c->rq_lock);
    __atomic_sub_fetch(&o->inflight, n, __ATOMIC_SEQ_CST);
    if (__atomic_exchange_n(&c->sleeping, 0, __ATOMIC_SEQ_CST)) {
        if (write(c->efd, &one, sizeof one) < 0) {
            /* the counter cannot overflow at one write per sleep */
        }
    }
    pthread_mutex_unlock(&c->rq_lock);
}

/* ---- replies: this thread only ---- */

/* Send this thread's batch and everything other threads queued, in one sendmsg. */
static int flush_replies(struct conn *c)
{
    struct iovec iov[2];
    int n = 0, rc;

    if (c->send_failed)
        return -EPIPE;
    if (__atomic_load_n(&c->rq_len, __ATOMIC_SEQ_CST)) {
        unsigned char *tmp = c->rq_spare;
        size_t tmp_cap = c->rq_spare_cap;

        pthread_mutex_lock(&c->rq_lock);
        if (c->rq_lost) {
            pthread_mutex_unlock(&c->rq_lock);
            c->send_failed = 1;
            return -ENOMEM;
        }
        iov[1] = (struct iovec){ c->rq, c->rq_len };
        c->rq_spare = c->rq;
        c->rq_spare_cap = c->rq_cap;
        c->rq = tmp;
        c->rq_cap = tmp_cap;
        __atomic_store_n(&c->rq_len, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&c->rq_lock);
        n = 1;
    }
    if (!c->out_len && !n)
        return 0;
    iov[0] = (struct iovec){ c->out, c->out_len };
    rc = transport_send_all(&c->tp, iov, 1 + n, 0, NULL);
    c->out_len = 0;
    if (rc < 0)
        c->send_failed = 1;
    return rc;
}

static int queue_reply(struct conn *c, int rc, const unsigned char *cookie)
{
    if (c->out_len + NBD_REPLY_SIZE > OUT_SIZE) {
        int src = flush_replies(c);
        if (src < 0)
            return src;
    }
    fill_reply((unsigned char *)c->out + c->out_len, nbd_errno(rc), cookie);
    c->out_len += NBD_REPLY_SIZE;
    return 0;
}

/* Sleep until the client sent something or an answer was queued for it. Only while answers
 * are owed: otherwise nobody would wake us, and the caller sleeps in recv. */
static void sleep_until_ready(struct conn *c)
{
    struct pollfd pfd[2] = { { .fd = c->tp.fd, .events = POLLIN }, { .fd = c->efd, .events = POLLIN } };
    uint64_t count;

    __atomic_store_n(&c->sleeping, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&c->rq_len, __ATOMIC_SEQ_CST) && __atomic_load_n(&c->origin.inflight, __ATOMIC_SEQ_CST)) {
        while (poll(pfd, 2, -1) < 0 && errno == EINTR)
            ;
    }
    if (!__atomic_exchange_n(&c->sleeping, 0, __ATOMIC_SEQ_CST) || (pfd[1].revents & POLLIN)) {
        /* a releaser took the flag: its eventfd write is done or on its way (under rq_lock) */
        pthread_mutex_lock(&c->rq_lock);
        pthread_mutex_unlock(&c->rq_lock);
        if (read(c->efd, &count, sizeof count) < 0) {
            /* nothing there (EAGAIN): fine */
        }
    }
}

/* ---- requests ---- */

static int ensure_payload(struct conn *c, size_t len)
{
    if (c->payload_cap >= len)
        return 0;
    free(c->payload);
    c->payload = malloc(len);
    c->payload_cap = c->payload ? len : 0;
    return c->payload ? 0 : -ENOMEM;
}

static void release_big_payload(struct conn *c)
{
    if (c->payload_cap > KEEP_PAYLOAD) {
        free(c->payload);
        c->payload = NULL;
        c->payload_cap = 0;
    }
}

/* Locate a write payload: in place when fully buffered (no copy), else read it whole. */
static int get_payload(struct conn *c, uint32_t len, const char **data)
{
    int rc;

    if (c->in_end - c->in_start >= len) {
        *data = c->in + c->in_start;
        c->in_start += len;
        return 0;
    }
    rc = ensure_payload(c, len);
    if (rc < 0)
        return rc;
    rc = transport_recv_exact_buffered(&c->tp, c->in, &c->in_start, c->in_end, c->payload, len);
    *data = c->payload;
    return rc;
}

/* Submit a disk-changing request; answer now unless the origin will be answered later. */
static int submit(struct conn *c, const struct rm_request *req, struct rm_stream *stream, int *end)
{
    int rc = 0, r = request_submit(c->eng, &c->origin, &c->wq, req, stream, &rc);

    if (r < 0) {
        *end = r == -ECONNRESET ? RM_END_PROTOCOL : RM_END_SOCKET;
        return r;
    }
    return r == RM_SUBMIT_LATER ? 0 : queue_reply(c, rc, req->cookie);
}

static int do_read(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len)
{
    unsigned char hdr[NBD_REPLY_SIZE];
    int rc, fatal;

    if (len > RM_MAX_REQUEST)
        return queue_reply(c, -EINVAL, cookie);
    if (len <= OUT_SIZE - NBD_REPLY_SIZE) {
        /* Small read: data goes straight behind its reply header in the batch. */
        if (c->out_len + NBD_REPLY_SIZE + len > OUT_SIZE && (rc = flush_replies(c)) < 0)
            return rc;
        unsigned char *p = (unsigned char *)c->out + c->out_len;
        rc = request_read(c->eng, p + NBD_REPLY_SIZE, len, offset);
        fill_reply(p, nbd_errno(rc), cookie);
        c->out_len += NBD_REPLY_SIZE + (rc < 0 ? 0 : len);
        return 0;
    }
    if ((rc = flush_replies(c)) < 0)
        return rc;
    fill_reply(hdr, 0, cookie);
    if (len >= SPLICE_MIN && c->zero_copy) {
        /* A large read: the reply header, then the data straight from the page cache. */
        rc = request_read_send(c->eng, &c->tp, hdr, sizeof hdr, offset, len, &fatal);
        if (rc == 0 || fatal) {
            if (rc < 0)
                c->send_failed = 1;
            return rc;
        }
        if (rc != -EAGAIN)
            return queue_reply(c, rc, cookie);
    }
    rc = ensure_payload(c, len);
    if (rc == 0)
        rc = request_read(c->eng, c->payload, len, offset);
    if (rc < 0)
        return queue_reply(c, rc, cookie);
    struct iovec iov[2] = { { hdr, sizeof hdr }, { c->payload, len } };
    if ((rc = transport_send_all(&c->tp, iov, 2, 0, NULL)) < 0)
        c->send_failed = 1;
    release_big_payload(c);
    return rc;
}

static int do_write(struct conn *c, struct rm_request *req, uint16_t flags, int *end)
{
    size_t have = c->in_end - c->in_start;
    const char *data;
    int rc;

    if (req->count > RM_MAX_REQUEST) {
        /* We will not read an unbounded payload: answer, then hang up. */
        queue_reply(c, -EOVERFLOW, req->cookie);
        flush_replies(c);
        *end = RM_END_PROTOCOL;
        return -EOVERFLOW;
    }
    if (!(flags & ~NBD_CMD_FLAG_FUA) && req->count >= SPLICE_MIN && have < req->count && c->zero_copy) {
        /* still arriving: the request layer streams it to the disk */
        struct rm_stream st = { .tp = &c->tp, .prefix = c->in + c->in_start, .have = (uint32_t)have };
        c->in_start = c->in_end;
        rc = submit(c, req, &st, end);
        /* the next requests are likely large writes too: keep payloads in the socket */
        c->header_only = 1;
        return rc;
    }
    rc = get_payload(c, req->count, &data);
    if (rc < 0) {
        *end = rc == -ECONNRESET ? RM_END_PROTOCOL : RM_END_SOCKET;
        return rc;
    }
    if (flags & ~NBD_CMD_FLAG_FUA) {
        request_count_refused(c->eng);
        rc = queue_reply(c, -EINVAL, req->cookie);
    } else {
        req->data = data;
        rc = submit(c, req, NULL, end);
    }
    release_big_payload(c);
    return rc;
}

/* One request whose 28-byte header is buffered. Returns 0 to go on, 1 on NBD_CMD_DISC, or a
 * negative errno that ends the connection (*end says why). */
static int handle_request(struct conn *c, int *end)
{
    const unsigned char *h = (const unsigned char *)c->in + c->in_start;
    uint32_t magic = get_be32(h);
    uint16_t flags = get_be16(h + 4);
    uint16_t type = get_be16(h + 6);
    struct rm_request req = { .offset = get_be64(h + 16), .count = get_be32(h + 24),
                              .fua = (flags & NBD_CMD_FLAG_FUA) != 0, .may_trim = !(flags & NBD_CMD_FLAG_NO_HOLE) };

    memcpy(req.cookie, h + 8, 8);
    c->in_start += NBD_REQUEST_SIZE;
    c->header_only = 0;   /* a large write sets it again */
    if (magic != NBD_REQUEST_MAGIC) {
        *end = RM_END_PROTOCOL;
        return -EPROTO;
    }
    switch (type) {
    case NBD_CMD_READ:
        if (flags & ~NBD_CMD_FLAG_FUA)
            return queue_reply(c, -EINVAL, req.cookie);
        return do_read(c, req.cookie, req.offset, req.count);
    case NBD_CMD_WRITE:
        req.op = RM_OP_WRITE;
        return do_write(c, &req, flags, end);
    case NBD_CMD_FLUSH:
        req = (struct rm_request){ .op = RM_OP_FLUSH };
        memcpy(req.cookie, h + 8, 8);
        return submit(c, &req, NULL, end);
    case NBD_CMD_TRIM:
        if (flags & ~NBD_CMD_FLAG_FUA)
            return queue_reply(c, -EINVAL, req.cookie);
        req.op = RM_OP_TRIM;
        req.may_trim = 1;
        return submit(c, &req, NULL, end);
    case NBD_CMD_WRITE_ZEROES:
        if (flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE))
            return queue_reply(c, -EINVAL, req.cookie);
        req.op = RM_OP_ZERO;
        return submit(c, &req, NULL, end);
    case NBD_CMD_DISC:
        return 1;
    default:
        /* Commands we never advertised (CACHE, BLOCK_STATUS...) carry no payload. */
        request_count_refused(c->eng);
        return queue_reply(c, -EINVAL, req.cookie);
    }
}

static int serve(struct conn *c, int *err)
{
    int end = RM_END_SOCKET;

    for (;;) {
        ssize_t n;
        int rc;

        if (c->in_end - c->in_start >= NBD_REQUEST_SIZE) {
            rc = handle_request(c, &end);
            if (rc == 1) {
                *err = 0;
                return RM_END_DISC;
            }
            if (rc < 0) {
                *err = -rc;
                return end;
            }
            continue;
        }
        /* Out of complete requests: send the batch (answers, and frames for the peer), then
         * wait for more. */
        request_flush_peer(c->eng);
        rc = flush_replies(c);
        if (rc < 0) {
            *err = -rc;
            return RM_END_SOCKET;
        }
        if (c->in_start > 0) {
            memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
            c->in_end -= c->in_start;
            c->in_start = 0;
        }
        /* After a large write, read just the next header: if it is another large write, its
         * payload then goes to the disk by splice instead of through this buffer. */
        size_t want = c->header_only ? NBD_REQUEST_SIZE - c->in_end : IN_SIZE - c->in_end;
        /* Nobody owes us an answer: sleep in recv. The last releaser queued its answers before
         * it dropped the count, so one may still be queued: send it first. */
        int owed = __atomic_load_n(&c->origin.inflight, __ATOMIC_SEQ_CST) > 0;
        if (!owed && __atomic_load_n(&c->rq_len, __ATOMIC_SEQ_CST))
            continue;
        n = c->tp.ops->recv(&c->tp, c->in + c->in_end, want, owed ? MSG_DONTWAIT : 0);
        if (n == -EAGAIN) {
            sleep_until_ready(c);
            continue;
        }
        if (n == 0) {
            *err = c->in_end ? ECONNRESET : 0;
            return c->in_end ? RM_END_PROTOCOL : RM_END_EOF;
        }
        if (n == -EINTR)
            continue;
        if (n < 0) {
            *err = (int)-n;
            return RM_END_SOCKET;
        }
        c->in_end += (size_t)n;
    }
}

/* Requests still waiting for the peer or the write-behind thread refer to this connection:
 * wait for their answers (an ack, or the sweep when the link fails) before it goes away. */
static void drain_origin(struct conn *c)
{
    request_flush_peer(c->eng);
    while (__atomic_load_n(&c->origin.inflight, __ATOMIC_SEQ_CST) > 0)
        sleep_until_ready(c);
    pthread_mutex_lock(&c->rq_lock);     /* the last releaser has let go */
    pthread_mutex_unlock(&c->rq_lock);
}

/* One connection on the transport `tp` (a socket, or a TLS session on it): the one serving loop. */
static int serve_client(rm_engine *eng, const struct rm_transport *tp, int zero_copy, const char *initial,
                        size_t initial_len, int *err)
{
    struct conn c = { .eng = eng, .efd = -1, .tp = *tp, .zero_copy = zero_copy };
    int rc, end;

    c.origin.complete = origin_complete;
    c.origin.release = origin_release;

    *err = 0;
    if (initial_len > IN_SIZE) {
        *err = EOVERFLOW;
        return RM_END_PROTOCOL;
    }
    rc = request_open_client(eng, &c.tp);
    if (rc < 0) {
        *err = -rc;
        return RM_END_SHUTDOWN;
    }
    c.in = malloc(IN_SIZE);
    c.out = malloc(OUT_SIZE);
    c.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!c.in || !c.out || c.efd < 0) {
        *err = c.efd < 0 ? errno : ENOMEM;
        end = RM_END_SOCKET;
        goto out;
    }
    pthread_mutex_init(&c.rq_lock, NULL);
    request_writeq_init(&c.wq, eng, &c.origin);
    memcpy(c.in, initial, initial_len);
    c.in_end = initial_len;
    end = serve(&c, err);
    if (request_shutting_down(eng) && end != RM_END_DISC)
        end = RM_END_SHUTDOWN;
    request_writeq_destroy(&c.wq);      /* finishes the queued large writes first */
    drain_origin(&c);
    flush_replies(&c);
    pthread_mutex_destroy(&c.rq_lock);
out:
    request_close_client(eng, &c.tp);
    if (c.efd >= 0)
        close(c.efd);
    free(c.in);
    free(c.out);
    free(c.payload);
    free(c.rq);
    free(c.rq_spare);
    return end;
}

int rm_serve_nbd(rm_engine *eng, int client_fd, const char *initial, size_t initial_len, int *err)
{
    struct rm_transport tp;

    transport_socket_init(&tp, client_fd);
    return serve_client(eng, &tp, 1, initial, initial_len, err);
}

/* The same over a TLS session (NBD_OPT_STARTTLS): every byte goes through the session's records
 * (this kernel has no kTLS; transport_tls.c), so large reads and writes take the buffered paths:
 * pread into the payload buffer and one gathered send (header + data sealed together), and the
 * payload decrypted straight into its buffer, then written. The zero-copy paths would only be
 * emulated over TLS, at one more copy (a pipe) and a 64 KiB bounce buffer per sendfile call.
 * client_fd is the session's socket, kept for symmetry with rm_serve_nbd and checked. */
int rm_serve_nbd_tls(rm_engine *eng, int client_fd, rm_tls *s, const char *initial, size_t initial_len,
                     int *err)
{
    struct rm_transport tp;

    *err = 0;
    if (!s) {
        *err = EINVAL;
        return RM_END_SOCKET;
    }
    transport_tls_init(&tp, s);
    if (tp.fd != client_fd) {
        *err = EBADF;
        return RM_END_SOCKET;
    }
    return serve_client(eng, &tp, 0, initial, initial_len, err);
}
