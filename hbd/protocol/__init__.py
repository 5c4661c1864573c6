# SPDX-License-Identifier: GPL-2.0-or-later
"""Sans-I/O heartbeat codecs and membership: datagrams and `now` in, events out."""
