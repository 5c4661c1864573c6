/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The TLS transport: the ops of transport.h over a session of tls.c. Without kTLS every byte
 * passes through user space, so the zero-copy ops become copies: sendfile is pread into a
 * buffer + SSL_write, splice_to_pipe is SSL_read + write into the pipe. Gathered sends are
 * packed into records of up to 16 KiB, so a 32-byte frame header does not cost a record of
 * its own (and its 22 bytes of overhead and one AEAD pass). `readable` is what the session has
 * decrypted plus what the socket holds (a partial record counts: the spin it steers only
 * guesses whether more is coming).
 * Layer: transport (tls.c below it, like digest.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls.h"
#include "transport.h"

#define RECORD 16384            /* one TLS record's plaintext at most */
#define FILE_CHUNK 65536        /* sendfile: bytes read from the disk per SSL_write */

static ssize_t tls_sendmsg(struct rm_transport *t, const struct iovec *iov, int iovcnt, int flags)
{
    unsigned char stage[RECORD];
    size_t staged = 0;
    ssize_t total = 0, n;

    (void)flags;     /* MSG_MORE: every call ends with its records sent */
    for (int i = 0; i < iovcnt; i++) {
        const unsigned char *p = iov[i].iov_base;
        size_t len = iov[i].iov_len;

        while (len > 0) {
            if (staged == 0 && len >= RECORD) {     /* whole records straight from the caller */
                size_t whole = len - len % RECORD;
                if ((n = tls_write(t->impl, p, whole)) < 0)
                    return total ? total : n;
                total += n;
                p += whole;
                len -= whole;
                continue;
            }
            size_t take = RECORD - staged < len ? RECORD - staged : len;
            memcpy(stage + staged, p, take);
            staged += take;
            p += take;
            len -= take;
            if (staged == RECORD) {
                if ((n = tls_write(t->impl, stage, staged)) < 0)
                    return total ? total : n;
                total += n;
                staged = 0;
            }
        }
    }
    if (staged) {
        if ((n = tls_write(t->impl, stage, staged)) < 0)
            return total ? total : n;
        total += n;
    }
    return total;
}

static ssize_t tls_recv(struct rm_transport *t, void *buf, size_t len, int flags)
{
    ssize_t got = 0;

    if (!(flags & MSG_WAITALL))
        return tls_read(t->impl, buf, len, flags & MSG_DONTWAIT, -1);
    while ((size_t)got < len) {
        ssize_t n = tls_read(t->impl, (char *)buf + got, len - (size_t)got, 0, -1);
        if (n <= 0)
            return got ? got : n;
        got += n;
    }
    return got;
}

static ssize_t tls_sendfile(struct rm_transport *t, int in_fd, off_t *offset, size_t count)
{
    unsigned char *chunk = malloc(FILE_CHUNK);
    ssize_t total = 0;

    if (!chunk)
        return -ENOMEM;

    while ((size_t)total < count) {
        size_t want = count - (size_t)total < FILE_CHUNK ? count - (size_t)total : FILE_CHUNK;
        ssize_t r = pread(in_fd, chunk, want, *offset);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (!total && r < 0)
                total = -errno;
            break;
        }
        ssize_t w = tls_write(t->impl, chunk, (size_t)r);
        if (w < 0) {
            if (!total)
                total = w;
            break;
        }
        *offset += r;
        total += r;
    }
    free(chunk);
    return total;
}

static ssize_t tls_splice_to_pipe(struct rm_transport *t, int pipe_wr, size_t len)
{
    unsigned char rec[RECORD];
    ssize_t n = tls_read(t->impl, rec, len < RECORD ? len : RECORD, 0, -1);

    if (n <= 0)
        return n;
    /* The caller drains the pipe after every call, and a pipe holds 64 KiB at least. */
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(pipe_wr, rec + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        off += w;
    }
    return n;
}

static int tls_readable(struct rm_transport *t)
{
    int pending = tls_pending(t->impl), avail;

    if (pending > 0)
        return pending;
    return ioctl(t->fd, FIONREAD, &avail) == 0 ? avail : -errno;
}

static int tls_shutdown(struct rm_transport *t, int how)
{
    return shutdown(t->fd, how) < 0 ? -errno : 0;   /* wakes a reader or writer in poll */
}

static const struct rm_transport_ops tls_ops = {
    .sendmsg = tls_sendmsg,
    .recv = tls_recv,
    .sendfile = tls_sendfile,
    .splice_to_pipe = tls_splice_to_pipe,
    .readable = tls_readable,
    .shutdown = tls_shutdown,
};

void transport_tls_init(struct rm_transport *t, struct rm_tls *s)
{
    t->ops = &tls_ops;
    t->fd = tls_fd(s);
    t->impl = s;
}
