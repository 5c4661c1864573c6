# SPDX-License-Identifier: GPL-2.0-or-later
"""Exception hierarchy for replica: hacommon.errors under replica's names.

Messages follow `<context>: <what failed>: <details>`.  ``ReplicaError`` is
``hacommon.errors.HaError`` itself (not a subclass), so replica and hbd raise and
catch one hierarchy.
"""
from hacommon.errors import ConfigError, LocalProtocolError, RemoteProtocolError, StateChangeRefused
from hacommon.errors import HaError as ReplicaError

__all__ = ["ReplicaError", "ConfigError", "LocalProtocolError", "RemoteProtocolError", "StateChangeRefused"]
