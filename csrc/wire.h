/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The peer link's frame header, the same layout replica/protocol/repl_wire.py declares:
 *
 *   u32 magic "RPL1" | u16 type | u16 flags | u64 id | u64 offset | u32 length | u32 aux
 *
 * big-endian, 32 bytes; `length` payload bytes follow. Types below 0x40 are the data path's
 * (this directory); 0x40 and up are control frames that C passes to Python untouched. */
#ifndef RM_WIRE_H
#define RM_WIRE_H

#include <stdint.h>

#define RPL_MAGIC 0x52504C31u      /* ASCII "RPL1" */
#define RPL_HEADER_SIZE 32
#define RPL_MAX_PAYLOAD (64u * 1024 * 1024)
#define RPL_MAX_CONTROL (64u * 1024)

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

static inline void rpl_put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline void rpl_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}
static inline void rpl_put64(unsigned char *p, uint64_t v) { rpl_put32(p, (uint32_t)(v >> 32)); rpl_put32(p + 4, (uint32_t)v); }
static inline uint16_t rpl_get16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rpl_get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t rpl_get64(const unsigned char *p) { return (uint64_t)rpl_get32(p) << 32 | rpl_get32(p + 4); }

static inline void rpl_pack(unsigned char *p, const struct rpl_header *h)
{
    rpl_put32(p, RPL_MAGIC);
    rpl_put16(p + 4, h->type);
    rpl_put16(p + 6, h->flags);
    rpl_put64(p + 8, h->id);
    rpl_put64(p + 16, h->offset);
    rpl_put32(p + 24, h->length);
    rpl_put32(p + 28, h->aux);
}

/* Returns 0, or -1 when the magic is wrong. */
static inline int rpl_unpack(const unsigned char *p, struct rpl_header *h)
{
    if (rpl_get32(p) != RPL_MAGIC)
        return -1;
    h->type = rpl_get16(p + 4);
    h->flags = rpl_get16(p + 6);
    h->id = rpl_get64(p + 8);
    h->offset = rpl_get64(p + 16);
    h->length = rpl_get32(p + 24);
    h->aux = rpl_get32(p + 28);
    return 0;
}

#endif
