# SPDX-License-Identifier: GPL-2.0-or-later
"""Sans-I/O protocol codecs: bytes in, events out. No sockets, clocks, logging or os here."""
