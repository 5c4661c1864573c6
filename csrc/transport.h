/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The transport seam: how the connection (peer link) and the frontends move bytes over a
 * stream, without knowing what carries them. transport_socket.c is the plain socket (TCP or
 * unix); transport_tls.c is TLS in user space (OpenSSL, tls.c: this kernel has no kTLS).
 *
 * Every op returns what the system call would (a count, 0 at EOF) or -errno; none retries on
 * EINTR (the helpers below do). Layer: the lowest; includes nothing from csrc/ above it. */
#ifndef RM_TRANSPORT_H
#define RM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct rm_transport;

struct rm_transport_ops {
    /* gather-send iov (flags: MSG_MORE when more follows at once) */
    ssize_t (*sendmsg)(struct rm_transport *t, const struct iovec *iov, int iovcnt, int flags);
    /* receive up to len bytes (flags: MSG_WAITALL, MSG_DONTWAIT) */
    ssize_t (*recv)(struct rm_transport *t, void *buf, size_t len, int flags);
    /* send count bytes of in_fd from *offset (advanced), straight from the page cache */
    ssize_t (*sendfile)(struct rm_transport *t, int in_fd, off_t *offset, size_t count);
    /* move up to len received bytes into the pipe whose write end is pipe_wr */
    ssize_t (*splice_to_pipe)(struct rm_transport *t, int pipe_wr, size_t len);
    /* bytes received and not yet read (spinning decisions), -errno if unknown */
    int (*readable)(struct rm_transport *t);
    int (*shutdown)(struct rm_transport *t, int how);
};

struct rm_transport {
    const struct rm_transport_ops *ops;
    int fd;                 /* for poll(2); -1 when closed */
    void *impl;             /* the transport's own state (transport_tls.c: the session) */
};

/* transport_socket.c */
void transport_socket_init(struct rm_transport *t, int fd);
/* transport_tls.c: over a session of tls.c (the caller keeps it and closes it after use) */
struct rm_tls;
void transport_tls_init(struct rm_transport *t, struct rm_tls *s);

/* transport.c: helpers over any transport */
/* Send every byte of iov (copied; the caller's array is left alone). 0 or -errno; *sent counts. */
int transport_send_all(struct rm_transport *t, const struct iovec *iov, int iovcnt, int flags, uint64_t *sent);
/* Read exactly len bytes: first those already in buf[*start, end), then from t. 0, -ECONNRESET
 * when the sender vanished midway, or -errno. */
int transport_recv_exact_buffered(struct rm_transport *t, const void *buf, size_t *start, size_t end,
                                  void *dst, size_t len);
/* sendfile in a loop: 0, or -errno (-EIO when the file ends early); *sent counts what went out. */
int transport_sendfile_all(struct rm_transport *t, int in_fd, uint64_t offset, uint64_t length, uint64_t *sent);

/* Spinning before sleeping on a stream mid-payload (see transport.c): one per reader. */
struct rm_spin {
    unsigned score;   /* how well spinning has paid lately; 0: sleep at once */
    unsigned waits;   /* waits while score is 0 (every SPIN_PROBE-th spins anyway) */
};
void transport_spin_for_data(struct rm_transport *t, struct rm_spin *spin);
/* A pipe for splice, as large as the system allows up to 1 MiB; returns its capacity or -errno. */
int transport_open_pipe(int pipefd[2]);

uint64_t now_ns(void);   /* CLOCK_MONOTONIC */

#endif
