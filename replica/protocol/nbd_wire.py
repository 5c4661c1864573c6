# SPDX-License-Identifier: GPL-2.0-or-later
"""NBD wire constants: magics, option/reply/command numbers, flag bits and struct layouts.

This module is our `nbd-protocol.h`: it owns every number the NBD protocol puts on the wire and
the `struct.Struct` layouts of the spec's messages, named after the spec (the NetworkBlockDevice
project's doc/proto.md). It holds no logic. Enum members drop the spec's `NBD_OPT_`, `NBD_REP_`,
`NBD_INFO_`, `NBD_CMD_`, `NBD_FLAG_` prefixes: `NbdOpt.GO` is `NBD_OPT_GO`. All integers on the
wire are big-endian (network byte order).
"""
import enum
import struct

# --- Magic numbers (proto.md "Handshake", "Transmission", "Reserved Magic values") ---

NBDMAGIC = 0x4E42444D41474943  # ASCII "NBDMAGIC", a.k.a. INIT_PASSWD
IHAVEOPT = 0x49484156454F5054  # ASCII "IHAVEOPT", newstyle greeting and every option header
CLISERV_MAGIC = 0x00420281861253  # oldstyle negotiation only (not served by us)
NBD_REP_MAGIC = 0x3E889045565A9  # option reply header (fixed newstyle)
NBD_REQUEST_MAGIC = 0x25609513  # transmission request
NBD_SIMPLE_REPLY_MAGIC = 0x67446698  # simple reply (formerly NBD_REPLY_MAGIC)
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF  # structured reply chunk
NBD_EXTENDED_REQUEST_MAGIC = 0x21E41C71  # experimental EXTENDED_HEADERS (reserved)
NBD_EXTENDED_REPLY_MAGIC = 0x6E8A278C  # experimental EXTENDED_HEADERS (reserved)

# --- Sizes and limits ---

NBD_DEFAULT_PORT = 10809  # IANA-reserved port for newstyle negotiation
EXPORT_NAME_ZERO_PADDING = 124  # reserved zero bytes after the NBD_OPT_EXPORT_NAME reply
NBD_MAX_STRING = 4096  # "a string ... MUST be no longer than 4096 bytes"
NBD_MAX_MIN_BLOCK = 65536  # minimum block size MUST NOT be larger than 2^16
NBD_DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024  # 2^25: never a denial of service per the spec


class NbdHandshakeFlag(enum.IntFlag):
    """16-bit handshake flags sent by the server after IHAVEOPT (`NBD_FLAG_*`)."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class NbdClientFlag(enum.IntFlag):
    """32-bit client flags sent in reply to the greeting (`NBD_FLAG_C_*`)."""

    FIXED_NEWSTYLE = 1 << 0  # NBD_FLAG_C_FIXED_NEWSTYLE
    NO_ZEROES = 1 << 1  # NBD_FLAG_C_NO_ZEROES


class NbdFlag(enum.IntFlag):
    """16-bit transmission flags describing an export (`NBD_FLAG_*`)."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11
    BLOCK_STATUS_PAYLOAD = 1 << 12  # experimental EXTENDED_HEADERS


class NbdOpt(enum.IntEnum):
    """Option numbers used during option haggling (`NBD_OPT_*`)."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4  # withdrawn extension, not in use
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11  # experimental


NBD_REP_FLAG_ERROR = 1 << 31  # every error reply type has bit 31 set


class NbdRep(enum.IntEnum):
    """Option reply types (`NBD_REP_*`); errors have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = NBD_REP_FLAG_ERROR + 1
    ERR_POLICY = NBD_REP_FLAG_ERROR + 2
    ERR_INVALID = NBD_REP_FLAG_ERROR + 3
    ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4
    ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5
    ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6
    ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7
    ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8
    ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9
    ERR_EXT_HEADER_REQD = NBD_REP_FLAG_ERROR + 10  # experimental


class NbdInfo(enum.IntEnum):
    """Information types in NBD_REP_INFO replies and NBD_OPT_INFO/GO requests (`NBD_INFO_*`)."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class NbdCmd(enum.IntEnum):
    """Request types in the transmission phase (`NBD_CMD_*`)."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8  # experimental


class NbdCmdFlag(enum.IntFlag):
    """16-bit command flags of a request (`NBD_CMD_FLAG_*`)."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5  # experimental EXTENDED_HEADERS


class NbdReplyFlag(enum.IntFlag):
    """16-bit flags of a structured reply chunk (`NBD_REPLY_FLAG_*`)."""

    DONE = 1 << 0


class NbdReplyType(enum.IntEnum):
    """Structured reply chunk types (`NBD_REPLY_TYPE_*`)."""

    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    BLOCK_STATUS_EXT = 6  # experimental
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


class NbdError(enum.IntEnum):
    """Error values of simple and structured replies (`NBD_E*`)."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


# --- Message layouts (proto.md section in brackets) ---

# [Newstyle negotiation] S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags
NEWSTYLE_GREETING = struct.Struct(">QQH")
# [Newstyle negotiation] C: 32-bit client flags
CLIENT_FLAGS = struct.Struct(">I")
# [Newstyle negotiation] C: IHAVEOPT, 32-bit option, 32-bit length of option data
OPTION_HEADER = struct.Struct(">QII")
# [Fixed newstyle negotiation] S: NBD_REP_MAGIC, 32-bit option, 32-bit reply type, 32-bit length
OPTION_REPLY_HEADER = struct.Struct(">QIII")
# [Newstyle negotiation] S: reply to NBD_OPT_EXPORT_NAME: 64-bit size, 16-bit transmission flags
#   (followed by EXPORT_NAME_ZERO_PADDING zero bytes unless NBD_FLAG_C_NO_ZEROES)
EXPORT_NAME_REPLY = struct.Struct(">QH")
# [NBD_OPT_INFO/GO, NBD_REP_SERVER] 32-bit length of the export name that follows
NAME_LENGTH = struct.Struct(">I")
# [NBD_OPT_INFO/GO] 16-bit number of information requests, then that many 16-bit NBD_INFO_*
INFO_REQUEST_COUNT = struct.Struct(">H")
INFO_REQUEST = struct.Struct(">H")
# [NBD_REP_INFO] 16-bit information type, then the type's payload
INFO_TYPE = struct.Struct(">H")
# [NBD_INFO_EXPORT] type, 64-bit export size, 16-bit transmission flags (length 12)
INFO_EXPORT = struct.Struct(">HQH")
# [NBD_INFO_BLOCK_SIZE] type, minimum block, preferred block, maximum payload (length 14)
INFO_BLOCK_SIZE = struct.Struct(">HIII")
# [NBD_REP_META_CONTEXT] 32-bit metadata context id, then the context name
META_CONTEXT_ID = struct.Struct(">I")
# [Request message] magic, command flags, type, cookie, offset, length (28 bytes)
REQUEST = struct.Struct(">IHHQQI")
# [Simple reply message] magic, error, cookie (16 bytes)
SIMPLE_REPLY = struct.Struct(">IIQ")
# [Structured reply chunk message] magic, flags, type, cookie, payload length (20 bytes)
STRUCTURED_REPLY_CHUNK = struct.Struct(">IHHQI")
