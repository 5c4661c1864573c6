# SPDX-License-Identifier: GPL-2.0-or-later
"""Peer authentication primitives: HMAC for `cram-hmac-alg` / `shared-secret` (net section).

Owns: the list of supported algorithms, the HMAC computed with `cryptography` (the sans-I/O
handshake in replica/protocol/repl.py may not import it, so `hmac_digest` is injected there as
its `mac` callable), challenge generation, and validation of a configured secret (DRBD limits
`shared-secret` to 64 characters). Comparing digests is done in constant time by the handshake.
"""
import os
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from replica.errors import ConfigError
from replica.protocol.repl_wire import CHALLENGE_SIZE

_ALGS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}
SUPPORTED_ALGS = tuple(_ALGS)
SHARED_SECRET_MAX = 64


def hmac_digest(alg: str, key: bytes, msg: bytes) -> bytes:
    """HMAC-`alg`(key, msg). Raises ValueError naming the algorithm if it is unsupported."""
    try:
        algorithm = _ALGS[alg]()
    except KeyError:
        raise ValueError(f"auth: unsupported cram-hmac-alg: {alg!r} "
                         f"(supported: {', '.join(SUPPORTED_ALGS)})") from None
    h = crypto_hmac.HMAC(key, algorithm)
    h.update(msg)
    return h.finalize()


def new_challenge(rng=os.urandom) -> bytes:
    """A fresh random challenge for AUTH_CHALLENGE."""
    return rng(CHALLENGE_SIZE)


def check_net_auth(alg: str | None, secret: str | None, where: str) -> tuple[str, bytes] | None:
    """Validate `cram-hmac-alg`/`shared-secret` from a net section.

    `where` is the `file:line` prefix for errors. Returns (alg, secret bytes), or None when
    authentication is off (no shared-secret). A secret without an algorithm is an error, as is
    an algorithm we cannot compute.
    """
    if secret is None:
        return None
    if not alg:
        raise ConfigError(f"{where}: net: shared-secret is set but cram-hmac-alg is not")
    if alg not in _ALGS:
        raise ConfigError(f"{where}: net: unsupported cram-hmac-alg {alg!r} "
                          f"(supported: {', '.join(SUPPORTED_ALGS)})")
    raw = secret.encode("utf-8")
    if not raw:
        raise ConfigError(f"{where}: net: shared-secret is empty")
    if len(raw) > SHARED_SECRET_MAX:
        raise ConfigError(f"{where}: net: shared-secret too long: {len(raw)} bytes, "
                          f"at most {SHARED_SECRET_MAX}")
    return alg, raw
