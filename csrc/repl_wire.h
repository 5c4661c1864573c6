/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The peer link's frame header, the same layout replica/protocol/repl_wire.py declares:
 *
 *   u32 magic "RPL1" | u16 type | u16 flags | u64 id | u64 offset | u32 length | u32 aux
 *
 * big-endian, 32 bytes; `length` payload bytes follow. Types below 0x40 are the data path's
 * (this directory); 0x40 and up are control frames that C passes to Python untouched. */
#ifndef RM_REPL_WIRE_H
#define RM_REPL_WIRE_H

#include <stdint.h>

#include "byteorder.h"

#define RPL_MAGIC 0x52504C31u      /* ASCII "RPL1" */
#define RPL_HEADER_SIZE 32
#define RPL_MAX_PAYLOAD (64u * 1024 * 1024)
#define RPL_MAX_CONTROL RM_MAX_CONTROL_PAYLOAD   /* mirror.h */

enum rpl_type {
    RPL_DATA = 0x01,       /* payload = data at offset; flags FUA */
    RPL_TRIM = 0x02,       /* aux = range length */
    RPL_ZEROES = 0x03,     /* aux = range length; flags FUA, NO_HOLE */
    RPL_FLUSH = 0x04,
    RPL_READ_REQUEST = 0x05, /* a Diskless node reads through its peer: aux = length */
    RPL_RECV_ACK = 0x10,   /* protocol B: id received */
    RPL_WRITE_ACK = 0x11,  /* protocols A and C: id written */
    RPL_FLUSH_ACK = 0x12,
    RPL_NEG_ACK = 0x13,    /* aux = errno of the peer's failed write */
    RPL_READ_REPLY = 0x14, /* answers READ_REQUEST id: payload = data at offset, or aux = errno */
    RPL_PING = 0x20,
    RPL_PING_ACK = 0x21,
    RPL_RS_REQUEST = 0x30,
    RPL_RS_DATA = 0x31,    /* resync block(s): payload = data at offset */
    RPL_RS_DONE = 0x32,    /* ack of RS_DATA id: offset, aux = length */
    RPL_OV_REQUEST = 0x38, /* online verify: [offset, + aux) has these digests here; flags = the
                            * RM_DIGEST_* alg; payload = one digest per 4 KiB block */
    RPL_OV_REPLY = 0x39,   /* answers OV_REQUEST id: offset, aux = length; payload empty when
                            * every block matched, else a bit per block (LSB first), 1 = differs */
    RPL_DIGEST = 0x3A,     /* data-integrity-alg: payload = digest of the next DATA/RS_DATA's
                            * payload (same id and offset, aux = its length) */
    RPL_RS_CSUM = 0x34,    /* csums-alg: [offset, + aux) has these digests on the SyncSource; flags = the
                            * RM_DIGEST_* alg; payload = one digest per 4 KiB block */
    RPL_RS_CSUM_REPLY = 0x35, /* answers RS_CSUM id: offset, aux = length; payload empty when no
                            * block matched, else a bit per block (LSB first), 1 = in sync */
    RPL_CONTROL_MIN = 0x40,
};

#define RPL_FLAG_FUA 0x0001
#define RPL_FLAG_NO_HOLE 0x0002
#define RPL_FLAG_NOT_LOCAL 0x0004  /* DATA/TRIM/ZEROES: the sender's disk failed and does not have
                                    * this write: the receiver marks its blocks out of sync */

struct rpl_header {
    uint16_t type, flags;
    uint64_t id, offset;
    uint32_t length, aux;
};

static inline void rpl_pack(unsigned char *p, const struct rpl_header *h)
{
    put_be32(p, RPL_MAGIC);
    put_be16(p + 4, h->type);
    put_be16(p + 6, h->flags);
    put_be64(p + 8, h->id);
    put_be64(p + 16, h->offset);
    put_be32(p + 24, h->length);
    put_be32(p + 28, h->aux);
}

/* Returns 0, or -1 when the magic is wrong. */
static inline int rpl_unpack(const unsigned char *p, struct rpl_header *h)
{
    if (get_be32(p) != RPL_MAGIC)
        return -1;
    h->type = get_be16(p + 4);
    h->flags = get_be16(p + 6);
    h->id = get_be64(p + 8);
    h->offset = get_be64(p + 16);
    h->length = get_be32(p + 24);
    h->aux = get_be32(p + 28);
    return 0;
}

#endif
