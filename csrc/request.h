/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The request layer (DRBD's drbd_request, nbdkit's server core): the one place a request that
 * changes the disk goes through, whichever frontend parsed it. request_submit() owns, in order:
 * range and permission checks, activity-log references, the local write (from memory or
 * spliced from the frontend's transport), its ordering against the peer stream (local write
 * and frame under the connection's send lock), the peer half (a pending slot, per protocol
 * A/B/C), out-of-sync marking when the peer cannot have it, and completion through the
 * caller's rm_origin. Reads go through request_read()/request_read_send(), which choose the
 * local disk or the peer (a failed disk). resource.c builds the rm_engine and implements
 * mirror.h on top of this layer.
 *
 * Threads (per resource; "C" = a C thread Python started, "py" = a Python thread in a C call):
 *
 * | thread                    | runs                                   | blocks in / on                          |
 * | ------------------------- | -------------------------------------- | --------------------------------------- |
 * | NBD connection (py, 1 per | nbd_frontend.c serve(): parse, submit, | poll(client fd, eventfd) when idle;     |
 * |   client, rm_serve_nbd)   | send its own replies (only writer of   | send on its own client socket; al_cond  |
 * |                           | its client socket)                     | (AL miss); slot_free (4096 in flight)   |
 * | write-behind (C, 1 per    | request.c writer_main: FUA flush +     | wq cond; send_lock; slot_free           |
 * |   client, on first large  | peer half of spliced large writes;     |                                         |
 * |   write)                  | answers through the origin             |                                         |
 * | receiver (C, 1 per peer   | connection.c: apply peer frames, acks, | recv on the peer transport; send_lock   |
 * |   link)                   | complete slots -> origin queue + wake  | (acks); never on a client socket        |
 * | Python event reader (py)  | rm_engine_next_event, rm_al_set_hot,   | ev_lock, al_lock (short)                |
 * |                           | rm_al_evict, rm_al_rescan              | al_cond with CLOCK_MONOTONIC timeout    |
 * | Python control (py)       | rm_peer_attach/detach/ping, resync,    | send_lock (ping: trylock only); detach  |
 * |                           | control frames, rm_engine_pwrite...    | joins the receiver                      |
 *
 * Locks, in the order they may nest (never take one to the left while holding one to the
 * right; a lock not listed together with another is never held with it):
 *
 *     conn.send_lock -> dev.ev_lock                (an I/O error event during a send)
 *     conn.pending_lock -> origin reply lock       (complete(): queue a reply, no I/O)
 *     conn.pending_lock -> dev.al_lock             (al_end wakes an evictor)
 *     conn.pending_lock -> dev.ev_lock
 *     writeq.lock, conn.read_lock, conn.control_lock, dev.fail_lock, registry lock: alone
 *
 * No lock shared by all connections is held across I/O on a client socket: a client that
 * stops reading its replies stalls only its own thread (tests/unit/test_mirror_stall.py). */
#ifndef RM_REQUEST_H
#define RM_REQUEST_H

#include <pthread.h>
#include <stdint.h>

#include "connection.h"
#include "device.h"
#include "transport.h"

struct rm_engine {
    struct rm_device dev;
    struct rm_connection conn;

    pthread_mutex_t lock;   /* guards the client registry below */
    struct rm_transport **clients;
    size_t nclients, cap_clients;
    int shutting_down;
};

enum rm_op { RM_OP_WRITE, RM_OP_TRIM, RM_OP_ZERO, RM_OP_FLUSH };

struct rm_request {
    enum rm_op op;
    uint64_t offset;
    uint32_t count;
    int fua;
    int may_trim;               /* ZERO: a hole is fine (no NBD_CMD_FLAG_NO_HOLE) */
    unsigned char cookie[8];    /* handed back to the origin */
    const void *data;           /* WRITE: the payload in memory, or NULL with a stream */
};

/* A WRITE payload still arriving on the frontend's transport: `have` bytes of it already
 * received into `prefix`. request_submit consumes the rest (spliced to the disk, or read). */
struct rm_stream {
    struct rm_transport *tp;
    const void *prefix;
    uint32_t have;
};

/* Per frontend connection: the write-behind queue for large streamed writes (a writer thread
 * sends the previous payload to the peer while the frontend streams the next to the disk) and
 * the buffers streamed writes need. Requests from one origin apply in the order submitted. */
#define WRITE_BEHIND 2

struct rm_wjob {
    struct rm_request req;     /* a WRITE already on this disk, data == NULL */
    int wrc;                   /* the local write's result */
};

struct rm_writeq {
    rm_engine *eng;
    struct rm_origin *origin;
    int pipe[2];
    struct rm_wjob jobs[WRITE_BEHIND];
    unsigned head, count;      /* queued jobs, guarded by lock */
    int writer_state;          /* 0 not started, 1 running, -1 could not start */
    int stop;
    pthread_t writer;
    pthread_mutex_t lock;
    pthread_cond_t cond;       /* a job was queued, or one finished */
    struct rm_spin spin;       /* mid-payload waits */
    char *payload;             /* a streamed payload that could not be spliced */
    size_t payload_cap;
    struct rm_keep keep;       /* on-io-error detach: the spliced payload's duplicate */
};

#define RM_SUBMIT_DONE 0    /* *rc holds the answer now */
#define RM_SUBMIT_LATER 1   /* origin->complete() will be called once, then release() */

/* THE entry point for requests that change the disk (and FLUSH). `q` may be NULL (no stream,
 * no write-behind). Returns RM_SUBMIT_DONE or RM_SUBMIT_LATER, or, only with a stream, a
 * negative errno when the transport failed mid-payload (what arrived was written and
 * mirrored; nobody is answered: the frontend ends the connection). */
int request_submit(rm_engine *eng, struct rm_origin *o, struct rm_writeq *q, const struct rm_request *req,
                   struct rm_stream *stream, int *rc);

void request_writeq_init(struct rm_writeq *q, rm_engine *eng, struct rm_origin *o);
/* Wait for queued large writes to be done (answered or owed by the peer), stop the writer. */
void request_writeq_destroy(struct rm_writeq *q);

/* Reads: [offset, + count) into buf, from this disk or (failed disk) the peer. 0 or -errno. */
int request_read(rm_engine *eng, void *buf, uint32_t count, uint64_t offset);
/* A large read sent straight from the page cache: `hdr` (the frontend's reply header) then the
 * data. 0 when sent; -EAGAIN when the disk is out of use (nothing sent: use request_read);
 * another -errno with *fatal = 0 when nothing was sent (answer the error), or *fatal = 1 when
 * the transport failed or the disk failed mid-data (end the connection). */
int request_read_send(rm_engine *eng, struct rm_transport *t, const void *hdr, size_t hdr_len, uint64_t offset,
                      uint32_t count, int *fatal);

/* A request refused by the frontend's own validation (unknown command, bad flags): counted. */
void request_count_refused(rm_engine *eng);
/* Send the frames batched for the peer: a frontend calls it before it sleeps. */
void request_flush_peer(rm_engine *eng);

/* Client registry: rm_engine_shutdown() shuts every registered transport down. */
int request_open_client(rm_engine *eng, struct rm_transport *t);
void request_close_client(rm_engine *eng, struct rm_transport *t);
int request_shutting_down(rm_engine *eng);

#endif
