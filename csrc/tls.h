/* SPDX-License-Identifier: GPL-2.0-or-later */
/* TLS sessions (OpenSSL) for the peer link and the NBD frontends: the contract's rm_tls_* calls
 * (mirror.h: contexts, the blocking handshake, whole reads and writes for Python, describe,
 * close) live in tls.c, and these are the pieces transport_tls.c builds its ops on.
 *
 * One SSL object is not safe for a concurrent SSL_read (a receiver thread) and SSL_write (the
 * senders), so every SSL_* call on a session runs under the session's own mutex, on a
 * non-blocking fd; a call that wants more input or output room drops the mutex and waits in
 * poll(2) outside it, so a reader asleep never holds up a writer (or the other way round).
 * Layer: a leaf library like digest.c (OpenSSL only); the transport calls it. */
#ifndef RM_TLS_H
#define RM_TLS_H

#include <stddef.h>
#include <sys/types.h>

struct rm_tls;
struct rm_transport;

/* transport_tls.c (declared with the other transports in transport.h too): an rm_transport over
 * a session, for connection.c (rm_peer_attach_tls) and the frontends. */
void transport_tls_init(struct rm_transport *t, struct rm_tls *s);

/* The socket under the session (for poll and shutdown). */
int tls_fd(struct rm_tls *s);
/* Read up to len bytes: a count, 0 at the peer's EOF (close_notify or TCP FIN), or -errno.
 * Waits (poll) while nothing is decrypted, unless `nonblock` (then -EAGAIN); timeout_ms < 0
 * waits for ever, else -ETIMEDOUT. */
ssize_t tls_read(struct rm_tls *s, void *buf, size_t len, int nonblock, int timeout_ms);
/* Write all of buf (records of at most 16 KiB): len, or -errno. Waits for room as needed.
 * `more` (MSG_MORE): less than a record's worth may stay staged in the session, to open the
 * next write's first record (a frame header then shares its payload's record and segment);
 * the last write of a message passes 0. Writers are serialised (the session's write lock). */
ssize_t tls_write(struct rm_tls *s, const void *buf, size_t len, int more);
/* The session's receive buffer for splice_to_pipe (allocated on first use, freed by
 * rm_tls_close; the one reader's), or NULL without memory. */
unsigned char *tls_pipe_buffer(struct rm_tls *s, size_t size);
/* Bytes decrypted and not yet read (SSL_pending; 1 for a record read ahead), without waiting. */
int tls_pending(struct rm_tls *s);

#endif
