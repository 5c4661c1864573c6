# SPDX-License-Identifier: GPL-2.0-or-later
"""What replicad/replicactl and hbd/hbctl share: error classes, daemonizing, the control socket.

Small on purpose: only code both daemons use goes here, each module owning one
thing (errors.py, daemonize.py, control.py).  Nothing in it imports replica or hbd.
"""
