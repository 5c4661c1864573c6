/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The plain socket transport (TCP or unix stream): each op is the system call itself. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#include "transport.h"

static ssize_t sock_sendmsg(struct rm_transport *t, const struct iovec *iov, int iovcnt, int flags)
{
    struct msghdr msg = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
    ssize_t n = sendmsg(t->fd, &msg, MSG_NOSIGNAL | flags);

    return n < 0 ? -errno : n;
}

static ssize_t sock_recv(struct rm_transport *t, void *buf, size_t len, int flags)
{
    ssize_t n = recv(t->fd, buf, len, flags);

    return n < 0 ? -errno : n;
}

static ssize_t sock_sendfile(struct rm_transport *t, int in_fd, off_t *offset, size_t count)
{
    ssize_t n = sendfile(t->fd, in_fd, offset, count);

    return n < 0 ? -errno : n;
}

static ssize_t sock_splice_to_pipe(struct rm_transport *t, int pipe_wr, size_t len)
{
    ssize_t n = splice(t->fd, NULL, pipe_wr, NULL, len, SPLICE_F_MOVE);

    return n < 0 ? -errno : n;
}

static int sock_readable(struct rm_transport *t)
{
    int avail;

    return ioctl(t->fd, FIONREAD, &avail) == 0 ? avail : -errno;
}

static int sock_shutdown(struct rm_transport *t, int how)
{
    return shutdown(t->fd, how) < 0 ? -errno : 0;
}

static const struct rm_transport_ops socket_ops = {
    .sendmsg = sock_sendmsg,
    .recv = sock_recv,
    .sendfile = sock_sendfile,
    .splice_to_pipe = sock_splice_to_pipe,
    .readable = sock_readable,
    .shutdown = sock_shutdown,
};

void transport_socket_init(struct rm_transport *t, int fd)
{
    t->ops = &socket_ops;
    t->fd = fd;
    t->impl = NULL;
}
