# SPDX-License-Identifier: GPL-2.0-or-later
"""hbmon: Mon-compatible service monitoring (mon.cf, Mon's monitor and alert protocols) with recovery."""
