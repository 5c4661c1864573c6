/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The TLS transport: the ops of transport.h over a session of tls.c. Without kTLS every byte
 * passes through user space, so the zero-copy ops become copies: sendfile is pread into a
 * buffer + SSL_write, splice_to_pipe is SSL_read + write into the pipe. Gathered sends and
 * MSG_MORE are packed into records of up to 16 KiB (tls_write's stage), so a 32-byte frame
 * header shares its payload's first record and TCP segment: sent alone it woke the peer's
 * receiver once for the header and once more for the payload. `readable` is what the session has
 * decrypted plus what the socket holds (a partial record counts: the spin it steers only
 * guesses whether more is coming).
 * Layer: transport (tls.c below it, like digest.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls.h"
#include "transport.h"

#define FILE_CHUNK 65536        /* sendfile: bytes read from the disk per SSL_write */
#define PIPE_CHUNK 65536        /* splice_to_pipe: at most this much per call (a pipe holds it) */

static ssize_t tls_sendmsg(struct rm_transport *t, const struct iovec *iov, int iovcnt, int flags)
{
    ssize_t total = 0;

    for (int i = 0; i < iovcnt; i++) {
        int more = i < iovcnt - 1 || (flags & MSG_MORE);
        ssize_t n = tls_write(t->impl, iov[i].iov_base, iov[i].iov_len, more);
        if (n < 0)
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
        ssize_t w = tls_write(t->impl, chunk, (size_t)r, (size_t)(total + r) < count);
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
    unsigned char *rec = tls_pipe_buffer(t->impl, PIPE_CHUNK);
    size_t want = len < PIPE_CHUNK ? len : PIPE_CHUNK;

    if (!rec)
        return -ENOMEM;
    ssize_t n = tls_read(t->impl, rec, want, 0, -1);

    if (n <= 0)
        return n;
    /* then what has arrived already, without waiting: fewer trips through the pipe */
    while ((size_t)n < want) {
        ssize_t more = tls_read(t->impl, rec + n, want - (size_t)n, 1, -1);
        if (more <= 0)
            break;
        n += more;
    }
    /* vmsplice hands the pipe references to these pages instead of copying them, so `rec` must
     * outlive this call (the session's buffer, not the stack: the caller's next frames would
     * overwrite it): the caller drains the pipe into the file (which copies) before it calls
     * again. A pipe holds 64 KiB at least. */
    for (ssize_t off = 0; off < n;) {
        struct iovec iov = { .iov_base = rec + off, .iov_len = (size_t)(n - off) };
        ssize_t w = vmsplice(pipe_wr, &iov, 1, 0);
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
    int flags = fcntl(tls_fd(s), F_GETFL);

    /* tls.c waits in poll outside its lock: a blocking fd would sleep inside SSL_read with the
     * lock held (a Python settimeout(None) after the handshake would do that) */
    if (flags >= 0 && !(flags & O_NONBLOCK))
        fcntl(tls_fd(s), F_SETFL, flags | O_NONBLOCK);
    t->ops = &tls_ops;
    t->fd = tls_fd(s);
    t->impl = s;
}
