/* SPDX-License-Identifier: GPL-2.0-or-later */
/* NBD transmission-phase numbers (NBD project doc/proto.md, "Transmission"), the C twin of
 * replica/protocol/nbd_wire.py. Constants only. */
#ifndef RM_NBD_WIRE_H
#define RM_NBD_WIRE_H

#include "byteorder.h"

#define NBD_REQUEST_MAGIC 0x25609513u       /* "Request message" */
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u  /* "Simple reply message" */
#define NBD_REQUEST_SIZE 28                 /* magic, flags, type, cookie, offset, length */
#define NBD_REPLY_SIZE 16                   /* magic, error, cookie */

#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_WRITE_ZEROES 6

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)

#endif
