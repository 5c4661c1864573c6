# SPDX-License-Identifier: GPL-2.0-or-later
"""hbd: Heartbeat-compatible membership and resource failover."""
