/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The connection (DRBD's drbd_connection): the link to the peer over a transport. Owns the
 * sender (a batch buffer under send_lock), the receiver thread (applies the peer's frames to
 * the device, completes pending slots from acks), the pending slots, control frames for Python
 * and reads served by the peer. Knows requests only as slots with an origin to answer.
 * Layer: below the request layer; uses the device (applies frames, marks/clears bits, gives
 * back AL references of finished slots) and the transport. */
#ifndef RM_CONNECTION_H
#define RM_CONNECTION_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "device.h"
#include "repl_wire.h"
#include "transport.h"

/* Who asked for a request: a frontend connection (or a synchronous caller). The connection
 * completes requests through it from the receiver thread, so the frontend never waits for the
 * network itself.
 *
 * Lifetime: `inflight` counts the references the connection holds, one per request owed an
 * answer. complete() only queues the answer (no socket I/O: it runs on the receiver thread);
 * the reference is dropped by release(), which wakes the origin's own thread if it sleeps and
 * then decrements `inflight`, under the origin's own lock. The origin frees itself once
 * `inflight` is zero and it took that lock once more, so the caller must not touch `o` after
 * release(). (Decrementing in complete() let a closing connection return from rm_serve_nbd
 * while the receiver still had it in its batch to flush: the use-after-return behind issue
 * 9's crash, tests/unit/test_mirror_churn.py.) */
struct rm_origin {
    void (*complete)(struct rm_origin *o, const unsigned char cookie[8], int rc);
    void (*release)(struct rm_origin *o, int n);   /* wake the owner, drop n refs */
    int inflight;                           /* atomic: references held by the connection */
    int batched;                            /* receiver thread only: completions not yet released */
};

#define PENDING_SLOTS 4096                 /* in flight to the peer at most, until net { max-buffers } */
#define MAX_PENDING_SLOTS 131072           /* DRBD's max-buffers maximum */
#define NO_SLOT UINT64_MAX

struct rm_pending {
    int busy;
    int replied;            /* the origin already got its answer (protocol A, flush under A/B) */
    int is_flush;
    uint64_t id;
    uint64_t offset;
    uint64_t length;
    uint64_t sent_ns;
    struct rm_origin *origin;
    unsigned char cookie[8];
    int not_local;          /* sent with RPL_FLAG_NOT_LOCAL: only the peer's write counts */
};

/* A read served by the peer while this disk is out of use (conn_remote_read). */
struct rm_read_wait {
    struct rm_read_wait *next;
    uint64_t id;
    void *buf;
    uint32_t len;
    int rc;
    int done;
};

struct rm_connection {
    struct rm_device *dev;
    struct rm_transport tp; /* tp.fd == -1 when detached */
    int protocol;           /* RM_PROTOCOL_* */
    int integrity_alg;      /* data-integrity-alg (RM_DIGEST_*, 0 = off): set before attach */
    int dead;               /* atomic: receiver ended; new requests go to the bitmap */
    int attached;           /* a receiver thread exists (joined by detach) */
    pthread_t receiver;

    pthread_mutex_t send_lock;
    unsigned char *sbuf;    /* batched outgoing frames */
    size_t sbuf_len;
    int send_failed;
    unsigned char *rbuf;    /* send_lock: a range read for a digest (verify, integrity) */
    size_t rbuf_cap;

    pthread_mutex_t pending_lock;
    pthread_cond_t slot_free;
    struct rm_pending *slots;
    uint32_t nslots;                       /* ring size: requests in flight to the peer at most */
    uint64_t next_id;
    uint64_t npending;

    /* control frames from the peer, waiting for Python */
    pthread_mutex_t control_lock;
    unsigned char *control[256];
    uint32_t control_len[256];
    unsigned control_head, control_count;

    /* reads waiting for READ_REPLY (a Diskless node): read_lock guards the list */
    pthread_mutex_t read_lock;
    pthread_cond_t read_done;
    struct rm_read_wait *reads;
    uint64_t next_read_id;
};

int conn_init(struct rm_connection *c, struct rm_device *dev);
void conn_destroy(struct rm_connection *c);
int conn_attach(struct rm_connection *c, int fd, int protocol);
/* the same over a TLS session on fd (transport_tls.c); the caller keeps and closes s */
int conn_attach_tls(struct rm_connection *c, int fd, struct rm_tls *s, int protocol);
int conn_detach(struct rm_connection *c);
int conn_live(struct rm_connection *c);
int conn_protocol(struct rm_connection *c);

/* Pending slots. conn_reserve_slot: a slot for a request not yet on the wire, without an
 * origin (a sweep or an ack that finishes it before conn_bind_slot leaves the answer to the
 * submitter): its id, or NO_SLOT when the link is down (may wait for a free slot). */
uint64_t conn_reserve_slot(struct rm_connection *c, int is_flush, uint64_t offset, uint32_t count);
void conn_mark_not_local(struct rm_connection *c, uint64_t id);
#define SLOT_ANSWER_NOW 0    /* the caller answers (the slot finished, or never needed us) */
#define SLOT_BOUND 1         /* the ack answers through the origin */
#define SLOT_RETURNED 2      /* never on the wire: slot freed, the request is out of sync */
/* After the send (`sent`: 0 or -errno): bind the origin when `wait_ack` and the slot is still
 * busy; give the slot back when the send failed. */
int conn_bind_slot(struct rm_connection *c, uint64_t id, struct rm_origin *o, const unsigned char cookie[8],
                   int sent, int wait_ack);
/* 1 when slot `id` has finished as a failed NOT_LOCAL request (NEG_ACK or a lost link). */
int conn_slot_failed_remote(struct rm_connection *c, uint64_t id);

/* Sending. The *_locked calls need conn_send_lock; the request layer holds it across its local
 * write and the frame so both happen in one order (see request.c). */
void conn_send_lock(struct rm_connection *c);
void conn_send_unlock(struct rm_connection *c);
int conn_send_frame_locked(struct rm_connection *c, const struct rpl_header *h, const void *payload);
/* a frame whose payload is the device range [h->offset, + h->length), sent by sendfile */
int conn_send_range_frame_locked(struct rm_connection *c, const struct rpl_header *h);
int conn_send_frame(struct rm_connection *c, const struct rpl_header *h, const void *payload, int flush);
/* Send the frames batched for the peer (frontends call it before they sleep). */
void conn_flush(struct rm_connection *c);

/* Reads served by the peer (a failed disk): 0, or -EIO without a live peer. Blocks. */
int conn_remote_read(struct rm_connection *c, void *buf, uint32_t count, uint64_t offset);

int conn_ping(struct rm_connection *c);
int conn_resync_send(struct rm_connection *c, uint64_t offset, uint32_t length);
int conn_set_integrity(struct rm_connection *c, int alg);
/* net { max-buffers }: at most n requests in flight to the peer (32..131072); between links
 * only (-EBUSY while attached). */
int conn_set_max_buffers(struct rm_connection *c, uint32_t n);
int conn_verify_send(struct rm_connection *c, int alg, uint64_t offset, uint32_t length);
int conn_resync_csum_send(struct rm_connection *c, int alg, uint64_t offset, uint32_t length);
int conn_send_control(struct rm_connection *c, const void *frame, uint32_t length);
int conn_recv_control(struct rm_connection *c, void *buf, uint32_t cap);

#endif
