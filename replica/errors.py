# SPDX-License-Identifier: GPL-2.0-or-later
"""Exception hierarchy for replica. Messages follow `<context>: <what failed>: <details>`."""


class ReplicaError(Exception):
    """Base of every error replica raises on purpose."""


class ConfigError(ReplicaError):
    """A configuration file is wrong; the message starts with `file:line:`."""


class LocalProtocolError(ReplicaError):
    """We tried to misuse a protocol (a bug on our side or a caller's)."""


class RemoteProtocolError(ReplicaError):
    """The peer or client sent something the protocol does not allow."""


class StateChangeRefused(ReplicaError):
    """A role/state change was refused; the message is one DRBD-style sentence."""
