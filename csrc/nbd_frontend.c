/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The NBD transmission phase (NBD project doc/proto.md, "Transmission"), one call per connection.
 *
 * The loop reads as many request bytes as the socket has, answers every complete request it
 * holds, and queues the simple replies in one output buffer that goes out in a single send just
 * before the loop would block on the socket again. At queue depth 32 that is one recv and one
 * send for 32 requests; at queue depth 1 nothing waits, since the reply is flushed before the
 * next recv. Write payloads of SPLICE_MIN and more go from the socket to the disk by splice as
 * they arrive (splice_write); other large payloads are read whole (MSG_WAITALL) into a buffer
 * sized to the request. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <pthread.h>
#include <sys/uio.h>
#include <unistd.h>

#include "mirror.h"
#include "mirror_internal.h"

#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_REQUEST_SIZE 28
#define NBD_REPLY_SIZE 16

#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_WRITE_ZEROES 6

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)

#define IN_SIZE (256 * 1024)
#define OUT_SIZE (256 * 1024)
/* Payload buffers above this size are released after use, to keep RSS small between bursts. */
#define KEEP_PAYLOAD (4 * 1024 * 1024)

#define WRITE_BEHIND 2

/* A large write already on this disk (the reader put it there), waiting for its FUA flush and
 * its trip to the peer. */
struct wjob {
    uint64_t offset;
    uint32_t len;
    int fua;
    int wrc;                   /* the local write's result */
    unsigned char cookie[8];
};

struct conn {
    struct rm_origin origin;   /* first: the peer link completes requests through it */
    rm_engine *eng;
    int fd;
    pthread_mutex_t out_lock;  /* out/out_len, and the socket's send side */
    pthread_cond_t drained;    /* origin.inflight reached zero */
    int send_failed;
    char *in;
    size_t in_start, in_end;
    char *out;
    size_t out_len;
    char *payload;
    size_t payload_cap;
    /* Write-behind for large writes: this thread streams a payload to the disk as it arrives
     * (through `pipe`) while the writer thread sends the previous one to the peer. Both are
     * set up on first use. */
    int pipe[2];
    struct wjob jobs[WRITE_BEHIND];
    unsigned wq_head, wq_count; /* queued jobs, guarded by wlock */
    int writer_state;          /* 0 not started, 1 running, -1 could not start */
    int header_only;           /* read one request header at a time (after a large write) */
    struct rm_spin spin;       /* mid-payload waits (engine_splice_write) */
    int writer_stop;
    pthread_t writer;
    pthread_mutex_t wlock;
    pthread_cond_t wcond;      /* a job was queued, or one finished */
};

static inline uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }
static inline void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

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

static int send_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* out_lock held. A client that stopped reading loses its answers, nobody else's. */
static int flush_out(struct conn *c)
{
    int rc = c->send_failed ? -EPIPE : send_all(c->fd, c->out, c->out_len);
    if (rc < 0)
        c->send_failed = 1;
    c->out_len = 0;
    return rc;
}

static void fill_reply(unsigned char *p, uint32_t error, const unsigned char *cookie)
{
    put32(p, NBD_SIMPLE_REPLY_MAGIC);
    put32(p + 4, error);
    memcpy(p + 8, cookie, 8);
}

static int queue_reply_locked(struct conn *c, int rc, const unsigned char *cookie)
{
    if (c->out_len + NBD_REPLY_SIZE > OUT_SIZE) {
        int src = flush_out(c);
        if (src < 0)
            return src;
    }
    fill_reply((unsigned char *)c->out + c->out_len, nbd_errno(rc), cookie);
    c->out_len += NBD_REPLY_SIZE;
    return 0;
}

static int queue_reply(struct conn *c, int rc, const unsigned char *cookie)
{
    pthread_mutex_lock(&c->out_lock);
    rc = queue_reply_locked(c, rc, cookie);
    pthread_mutex_unlock(&c->out_lock);
    return rc;
}

/* rm_origin callbacks, called by the peer link's receiver thread. */
static void origin_complete(struct rm_origin *o, const unsigned char cookie[8], int rc)
{
    struct conn *c = (struct conn *)o;

    pthread_mutex_lock(&c->out_lock);
    queue_reply_locked(c, rc, cookie);
    pthread_mutex_unlock(&c->out_lock);
}

/* Send what is queued for the client (this thread, the writer, or the receiver). */
static void flush_replies(struct conn *c)
{
    pthread_mutex_lock(&c->out_lock);
    if (c->out_len)
        flush_out(c);
    pthread_mutex_unlock(&c->out_lock);
}

/* The peer link is done with n of our requests. rm_serve_nbd waits, under out_lock, for the
 * last reference before the connection goes away, so nothing here touches `c` after the
 * unlock that lets it go. */
static void origin_release(struct rm_origin *o, int n)
{
    struct conn *c = (struct conn *)o;

    pthread_mutex_lock(&c->out_lock);
    if (c->out_len)
        flush_out(c);
    if (__atomic_sub_fetch(&o->inflight, n, __ATOMIC_ACQ_REL) == 0)
        pthread_cond_broadcast(&c->drained);
    pthread_mutex_unlock(&c->out_lock);
}

/* Submit a disk-changing request; answer now unless the peer link will answer later. */
static int submit(struct conn *c, const unsigned char *cookie, enum rm_op op, const void *data,
                  uint32_t len, uint64_t offset, uint16_t flags)
{
    int rc;

    if (engine_submit(c->eng, &c->origin, cookie, op, data, len, offset, flags & NBD_CMD_FLAG_FUA,
                      !(flags & NBD_CMD_FLAG_NO_HOLE), &rc) == RM_SUBMIT_LATER)
        return 0;
    return queue_reply(c, rc, cookie);
}

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

/* Read exactly len bytes, first from what is buffered, then straight from the socket.
 * Returns 0, -ECONNRESET when the client vanished mid-payload, or -errno. */
static int read_exact(struct conn *c, char *dst, size_t len)
{
    return recv_exact_buffered(c->fd, c->in, &c->in_start, c->in_end, dst, len);
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
    rc = read_exact(c, c->payload, len);
    *data = c->payload;
    return rc;
}

static int do_read_locked(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len);
static int do_remote_read(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len);
#define READ_FROM_PEER 2   /* do_read_locked: the disk failed under this read, ask the peer */

static int do_read(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len)
{
    int rc;

    if (engine_disk_failed(c->eng))
        return do_remote_read(c, cookie, offset, len);
    pthread_mutex_lock(&c->out_lock);
    rc = do_read_locked(c, cookie, offset, len);
    pthread_mutex_unlock(&c->out_lock);
    return rc == READ_FROM_PEER ? do_remote_read(c, cookie, offset, len) : rc;
}

/* A successful reply header, sent now (with the batch before it) so its data can follow
 * directly on the socket. out_lock held. */
static int send_ok_header_locked(struct conn *c, const unsigned char *cookie)
{
    int rc = queue_reply_locked(c, 0, cookie);

    return rc < 0 ? rc : flush_out(c);
}

/* A large read: the reply header, then the data straight from the page cache (sendfile), one
 * copy fewer than pread + send. Once the header is out, a failing disk can only end the
 * connection; the error is still counted and reported to Python. out_lock held. */
static int sendfile_read_locked(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len)
{
    uint64_t sent;
    int rc = engine_check_range(c->eng, offset, len, 0);

    if (rc < 0)
        return queue_reply_locked(c, rc, cookie);
    if ((rc = send_ok_header_locked(c, cookie)) < 0)
        return rc;
    rc = sendfile_range(c->eng, c->fd, offset, len, &sent);
    STAT_ADD(c->eng, bytes_read, sent);
    if (rc < 0) {
        c->send_failed = 1;
        if (rc == -EIO)
            engine_post_event(c->eng, RM_EV_IO_ERROR, EIO, offset, len);
        return rc;
    }
    STAT_ADD(c->eng, reads, 1);
    return 0;
}

/* out_lock held for the whole reply, so the header and its data go out together. */
static int do_read_locked(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len)
{
    int rc;

    if (len > RM_MAX_REQUEST)
        return queue_reply_locked(c, -EINVAL, cookie);
    if (c->out_len + NBD_REPLY_SIZE + len <= OUT_SIZE) {
        /* Small read: data goes straight behind its reply header in the batch. */
        unsigned char *hdr = (unsigned char *)c->out + c->out_len;
        rc = rm_engine_pread(c->eng, hdr + NBD_REPLY_SIZE, len, offset);
        if (rc < 0 && engine_disk_failed(c->eng))
            return READ_FROM_PEER;
        fill_reply(hdr, nbd_errno(rc), cookie);
        c->out_len += NBD_REPLY_SIZE + (rc < 0 ? 0 : len);
        return 0;
    }
    if (len >= SPLICE_MIN)
        return sendfile_read_locked(c, cookie, offset, len);
    rc = ensure_payload(c, len);
    if (rc == 0)
        rc = rm_engine_pread(c->eng, c->payload, len, offset);
    if (rc < 0 && engine_disk_failed(c->eng))
        return READ_FROM_PEER;
    if (rc < 0)
        return queue_reply_locked(c, rc, cookie);
    rc = send_ok_header_locked(c, cookie);
    if (rc == 0 && (rc = send_all(c->fd, c->payload, len)) < 0)
        c->send_failed = 1;
    release_big_payload(c);
    return rc;
}

/* The disk is out of use (on-io-error): the peer serves the read. Not under out_lock: the
 * receiver thread that brings the data also completes this connection's writes. */
static int do_remote_read(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len)
{
    int rc = len > RM_MAX_REQUEST ? -EINVAL : engine_check_range(c->eng, offset, len, 0);

    if (rc == 0 && (rc = ensure_payload(c, len)) == 0)
        rc = engine_remote_read(c->eng, c->payload, len, offset);
    pthread_mutex_lock(&c->out_lock);
    if (rc < 0) {
        rc = queue_reply_locked(c, rc, cookie);
    } else if (c->out_len + NBD_REPLY_SIZE + len <= OUT_SIZE) {
        fill_reply((unsigned char *)c->out + c->out_len, 0, cookie);
        memcpy(c->out + c->out_len + NBD_REPLY_SIZE, c->payload, len);
        c->out_len += NBD_REPLY_SIZE + len;
    } else if ((rc = send_ok_header_locked(c, cookie)) == 0 && (rc = send_all(c->fd, c->payload, len)) < 0) {
        c->send_failed = 1;
    }
    pthread_mutex_unlock(&c->out_lock);
    release_big_payload(c);
    return rc;
}

/* The second half of a large write, which the reader put on the disk: FUA's flush, then to the
 * peer from the page cache (or marked out of sync without a peer), or answered now. */
static void run_job(struct conn *c, struct wjob *j)
{
    int wrc = j->wrc;

    if (wrc == 0 && j->fua)
        wrc = local_flush(c->eng);
    if (wrc < 0) {
        /* not mirrored: the client sees the error; the payload may have partly reached this
         * disk, so its blocks are out of sync */
        engine_mark_dirty(c->eng, j->offset, j->len);
        engine_al_end(c->eng, j->offset, j->len);
    }
    if (!(wrc == 0 && engine_mirror(c->eng, &c->origin, j->cookie, RM_OP_WRITE, NULL, j->len, j->offset,
                                    j->fua, 0) == RM_SUBMIT_LATER))
        queue_reply(c, wrc, j->cookie);
}

/* The writer thread: jobs in arrival order, each through run_job. */
static void *writer_main(void *arg)
{
    struct conn *c = arg;

    for (;;) {
        struct wjob *j;

        pthread_mutex_lock(&c->wlock);
        while (!c->wq_count && !c->writer_stop)
            pthread_cond_wait(&c->wcond, &c->wlock);
        if (!c->wq_count) {
            pthread_mutex_unlock(&c->wlock);
            return NULL;
        }
        j = &c->jobs[c->wq_head];
        pthread_mutex_unlock(&c->wlock);

        run_job(c, j);
        flush_replies(c);   /* the reader may be blocked in recv: answer now */

        pthread_mutex_lock(&c->wlock);
        c->wq_head = (c->wq_head + 1) % WRITE_BEHIND;
        c->wq_count--;
        pthread_cond_broadcast(&c->wcond);
        pthread_mutex_unlock(&c->wlock);
    }
}

static int start_writer(struct conn *c)
{
    if (c->writer_state)
        return c->writer_state > 0;
    c->writer_state = -1;
    if (engine_open_pipe(c->pipe) < 0)
        return 0;
    if (pthread_create(&c->writer, NULL, writer_main, c) != 0)
        return 0;
    c->writer_state = 1;
    return 1;
}

static void stop_writer(struct conn *c)
{
    if (c->writer_state > 0) {
        pthread_mutex_lock(&c->wlock);
        c->writer_stop = 1;
        pthread_cond_broadcast(&c->wcond);
        pthread_mutex_unlock(&c->wlock);
        pthread_join(c->writer, NULL);   /* it finishes the queued jobs first */
    }
    if (c->pipe[0] >= 0) {
        close(c->pipe[0]);
        close(c->pipe[1]);
    }
}

/* Requests that change the disk outside the write-behind queue wait for it to empty, so a
 * client's writes are applied in the order it sent them. */
static void wait_writes(struct conn *c)
{
    if (c->writer_state <= 0)
        return;
    pthread_mutex_lock(&c->wlock);
    while (c->wq_count)
        pthread_cond_wait(&c->wcond, &c->wlock);
    pthread_mutex_unlock(&c->wlock);
}

/* A large write: streamed to the disk as it arrives (engine_splice_write: one copy, made while
 * the client is still sending), then queued for the writer thread, which sends it to the peer
 * from the page cache while this thread takes the next request. (Measured at 1 MiB QD16,
 * protocol C, eight paired runs: 2046 MiB/s against 1866 when the writer thread also did the
 * local write; this thread had been spinning or asleep most of the time the client sent.) */
static int splice_write(struct conn *c, const unsigned char *cookie, uint64_t offset, uint32_t len,
                        int fua, int *end)
{
    size_t have = c->in_end - c->in_start;
    uint32_t applied;
    struct wjob *j;
    int rc;

    pthread_mutex_lock(&c->wlock);
    while (c->wq_count == WRITE_BEHIND)
        pthread_cond_wait(&c->wcond, &c->wlock);
    j = &c->jobs[(c->wq_head + c->wq_count) % WRITE_BEHIND];   /* free: only we touch it now */
    pthread_mutex_unlock(&c->wlock);

    *j = (struct wjob){ .offset = offset, .len = len, .fua = fua };
    memcpy(j->cookie, cookie, 8);
    engine_al_begin(c->eng, offset, len);
    rc = engine_splice_write(c->eng, c->fd, c->pipe, c->in + c->in_start, (uint32_t)have, offset, len, 0,
                             &j->wrc, &applied, &c->spin);
    c->in_start = c->in_end;
    if (rc < 0) {
        /* The client vanished mid-payload. What reached this disk goes to the peer as well (the
         * answer reaches nobody), so the two disks stay the same. */
        if (applied)
            engine_al_begin(c->eng, offset, applied);   /* hot already: a subset of the extents */
        engine_al_end(c->eng, offset, len);
        if (applied) {
            j->len = applied;
            j->fua = 0;
            wait_writes(c);
            run_job(c, j);
        }
        *end = rc == -ECONNRESET ? RM_END_PROTOCOL : RM_END_SOCKET;
        return rc;
    }
    c->header_only = 1;   /* the next requests are likely large writes too: keep payloads in the socket */

    /* Inline when nothing more has come from the client (queue depth 1: a hand-off would only
     * add a wake-up); otherwise the writer thread takes it. */
    int pending = 0;
    if (ioctl(c->fd, FIONREAD, &pending) == 0 && pending == 0) {
        wait_writes(c);
        run_job(c, j);
        return 0;
    }
    pthread_mutex_lock(&c->wlock);
    c->wq_count++;
    pthread_cond_broadcast(&c->wcond);
    pthread_mutex_unlock(&c->wlock);
    return 0;
}

/* One request whose 28-byte header is buffered. Returns 0 to go on, 1 on NBD_CMD_DISC, or a
 * negative errno that ends the connection (*end says why). */
static int handle_request(struct conn *c, int *end)
{
    const unsigned char *h = (const unsigned char *)c->in + c->in_start;
    uint32_t magic = get32(h);
    uint16_t flags = get16(h + 4);
    uint16_t type = get16(h + 6);
    unsigned char cookie[8];
    uint64_t offset = get64(h + 16);
    uint32_t len = get32(h + 24);
    const char *data;
    int rc;

    memcpy(cookie, h + 8, 8);
    c->in_start += NBD_REQUEST_SIZE;
    c->header_only = 0;   /* splice_write sets it again */
    if (magic != NBD_REQUEST_MAGIC) {
        *end = RM_END_PROTOCOL;
        return -EPROTO;
    }
    switch (type) {
    case NBD_CMD_READ:
        if (flags & ~NBD_CMD_FLAG_FUA)
            return queue_reply(c, -EINVAL, cookie);
        return do_read(c, cookie, offset, len);
    case NBD_CMD_WRITE:
        if (len > RM_MAX_REQUEST) {
            /* We will not read an unbounded payload: answer, then hang up. */
            queue_reply(c, -EOVERFLOW, cookie);
            flush_replies(c);
            *end = RM_END_PROTOCOL;
            return -EOVERFLOW;
        }
        if (len >= SPLICE_MIN && !(flags & ~NBD_CMD_FLAG_FUA) && c->in_end - c->in_start < len &&
            !engine_disk_failed(c->eng) && start_writer(c) &&
            engine_check_range(c->eng, offset, len, 1) == 0)
            return splice_write(c, cookie, offset, len, flags & NBD_CMD_FLAG_FUA, end);
        wait_writes(c);
        rc = get_payload(c, len, &data);
        if (rc < 0) {
            *end = rc == -ECONNRESET ? RM_END_PROTOCOL : RM_END_SOCKET;
            return rc;
        }
        if (flags & ~NBD_CMD_FLAG_FUA)
            rc = queue_reply(c, -EINVAL, cookie);
        else
            rc = submit(c, cookie, RM_OP_WRITE, data, len, offset, flags);
        release_big_payload(c);
        return rc;
    case NBD_CMD_FLUSH:
        wait_writes(c);
        return submit(c, cookie, RM_OP_FLUSH, NULL, 0, 0, 0);
    case NBD_CMD_TRIM:
        if (flags & ~NBD_CMD_FLAG_FUA)
            return queue_reply(c, -EINVAL, cookie);
        wait_writes(c);
        return submit(c, cookie, RM_OP_TRIM, NULL, len, offset, flags | NBD_CMD_FLAG_NO_HOLE);
    case NBD_CMD_WRITE_ZEROES:
        if (flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE))
            return queue_reply(c, -EINVAL, cookie);
        wait_writes(c);
        return submit(c, cookie, RM_OP_ZERO, NULL, len, offset, flags);
    case NBD_CMD_DISC:
        wait_writes(c);
        return 1;
    default:
        /* Commands we never advertised (CACHE, BLOCK_STATUS...) carry no payload. */
        STAT_ADD(c->eng, refused, 1);
        return queue_reply(c, -EINVAL, cookie);
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
                engine_flush_peer(c->eng);
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
        engine_flush_peer(c->eng);
        pthread_mutex_lock(&c->out_lock);
        rc = c->out_len ? flush_out(c) : (c->send_failed ? -EPIPE : 0);
        pthread_mutex_unlock(&c->out_lock);
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
        n = recv(c->fd, c->in + c->in_end, c->header_only ? NBD_REQUEST_SIZE - (c->in_end - c->in_start)
                                                          : IN_SIZE - c->in_end, 0);
        if (n == 0) {
            *err = c->in_end ? ECONNRESET : 0;
            return c->in_end ? RM_END_PROTOCOL : RM_END_EOF;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *err = errno;
            return RM_END_SOCKET;
        }
        c->in_end += (size_t)n;
    }
}

int rm_serve_nbd(rm_engine *eng, int client_fd, const char *initial, size_t initial_len, int *err)
{
    struct conn c = { .eng = eng, .fd = client_fd, .pipe = { -1, -1 } };
    int rc, end;

    c.origin.complete = origin_complete;
    c.origin.release = origin_release;

    *err = 0;
    if (initial_len > IN_SIZE) {
        *err = EOVERFLOW;
        return RM_END_PROTOCOL;
    }
    rc = engine_add_client(eng, client_fd);
    if (rc < 0) {
        *err = -rc;
        return RM_END_SHUTDOWN;
    }
    c.in = malloc(IN_SIZE);
    c.out = malloc(OUT_SIZE);
    if (!c.in || !c.out) {
        *err = ENOMEM;
        end = RM_END_SOCKET;
        goto out;
    }
    pthread_mutex_init(&c.out_lock, NULL);
    pthread_cond_init(&c.drained, NULL);
    pthread_mutex_init(&c.wlock, NULL);
    pthread_cond_init(&c.wcond, NULL);
    memcpy(c.in, initial, initial_len);
    c.in_end = initial_len;
    end = serve(&c, err);
    if (__atomic_load_n(&eng->shutting_down, __ATOMIC_RELAXED) && end != RM_END_DISC)
        end = RM_END_SHUTDOWN;
    stop_writer(&c);
    /* Requests still waiting for the peer refer to this connection: wait for their answers
     * (an ack, or the sweep when the link fails) before the buffers go away. */
    engine_flush_peer(eng);
    pthread_mutex_lock(&c.out_lock);
    while (__atomic_load_n(&c.origin.inflight, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&c.drained, &c.out_lock);
    if (c.out_len)
        flush_out(&c);
    pthread_mutex_unlock(&c.out_lock);
    pthread_cond_destroy(&c.drained);
    pthread_mutex_destroy(&c.out_lock);
    pthread_cond_destroy(&c.wcond);
    pthread_mutex_destroy(&c.wlock);
out:
    engine_remove_client(eng, client_fd);
    free(c.in);
    free(c.out);
    free(c.payload);
    return end;
}
