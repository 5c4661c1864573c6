# SPDX-License-Identifier: GPL-2.0-or-later
"""The qemu guest that tests the real kernel NBD client against replicad (see image.py, guest.py)."""
