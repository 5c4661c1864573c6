# SPDX-License-Identifier: GPL-2.0-or-later
"""replica: DRBD-style block replication in userspace, served over NBD."""
