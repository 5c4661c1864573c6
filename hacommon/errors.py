# SPDX-License-Identifier: GPL-2.0-or-later
"""Exception hierarchy shared by replica and hbd. Messages follow `<context>: <what failed>: <details>`.

replica.errors re-exports these (``ReplicaError`` is ``HaError``), so an
``except ReplicaError`` in replica still catches what hbd or hacommon raise.
"""


class HaError(Exception):
    """Base of every error replica-ha raises on purpose."""


class ConfigError(HaError):
    """A configuration file is wrong; the message starts with `file:line:`."""


class LocalProtocolError(HaError):
    """We tried to misuse a protocol (a bug on our side or a caller's)."""


class RemoteProtocolError(HaError):
    """The peer or client sent something the protocol does not allow."""


class StateChangeRefused(HaError):
    """A role/state change was refused; the message is one DRBD-style sentence."""
