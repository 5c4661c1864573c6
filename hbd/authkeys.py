# SPDX-License-Identifier: GPL-2.0-or-later
"""Heartbeat's `authkeys` file and the message digests it selects.

Owns: parsing `ha.d/authkeys`, the permission check heartbeat performs before
it starts, and the exact digest heartbeat computes for a given method
(heartbeat-reference.md 1.4, heartbeat-wire.md 3).  `sign()`/`verify()` are
pure (hmac, hashlib) so the sans-I/O packet codec can use them.

File format (heartbeat `doc/authkeys`)::

    auth 2              # the entry used to SIGN what we send
    1 crc               # id method [key]; every listed id is accepted on receive
    2 sha1 HI!
    3 md5 Hello!

Digests (all lower-case hex):

    crc     CRC-32 poly 0x04C11DB7, init 0, MSB first, final ~crc, "%lx" (no
            zero padding); no key, no security
    md5     HMAC-MD5(key, text)
    sha1    HMAC-SHA1(key, text)
    sha256  HMAC-SHA256(key, text)   -- our extension; real heartbeat lacks it

Compatibility notes:

- The key is the first whitespace-separated word after the method, exactly
  as heartbeat's `sscanf("%d%s%s")` reads it; further words are ignored with
  a warning (heartbeat ignores them silently).
- A method line without an id (`sha1 mahnamahna`, as in the seed chapter)
  is not accepted by heartbeat itself; we take it as the entry of the
  preceding `auth N` line and say so in `warnings`.
- Verification uses the key of the entry named in the packet.  Heartbeat
  itself checks entry M's algorithm with the ACTIVE entry's key
  (heartbeat-wire.md 3, "quirks"); both agree whenever the sender signs
  with its active entry, which is the only thing heartbeat ever does.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass, field

from hacommon.errors import ConfigError

METHODS = ("crc", "md5", "sha1", "sha256")
MAX_AUTH_INDEX = 15  # heartbeat MAXAUTH 16: ids 0..15

_HMAC_DIGESTS = {"md5": hashlib.md5, "sha1": hashlib.sha1, "sha256": hashlib.sha256}


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else (crc << 1)
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc32_heartbeat(data: bytes) -> int:
    """CRC-32/POSIX without the length suffix, as heartbeat's HBauth/crc.so.

    Returns the final value (`~crc & 0xffffffff`); check("123456789") = 0x765e7680.
    """
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) ^ b) & 0xFF]
    return ~crc & 0xFFFFFFFF


@dataclass(frozen=True)
class AuthMethod:
    """One `id method [key]` line."""

    index: int
    name: str
    key: bytes = b""

    def digest(self, text: bytes) -> str:
        """The hex digest heartbeat prints for `text` with this method."""
        if self.name == "crc":
            return "%x" % crc32_heartbeat(text)
        return hmac.new(self.key, text, _HMAC_DIGESTS[self.name]).hexdigest()


@dataclass(frozen=True)
class AuthKeys:
    """The parsed authkeys file: the signing entry and every accepted entry."""

    active: AuthMethod
    methods: dict[int, AuthMethod]
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def sign(self, text: bytes) -> str:
        """The auth value heartbeat writes for `text`: "<N> <hexdigest>"."""
        return "%d %s" % (self.active.index, self.active.digest(text))

    def verify(self, text: bytes, auth_value: str) -> bool:
        """True when `auth_value` ("M <hex>") is a valid digest of `text` for a configured entry M."""
        parts = auth_value.split(" ")
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 3:
            return False
        method = self.methods.get(int(parts[0]))
        if method is None:
            return False
        expected = method.digest(text)
        return hmac.compare_digest(expected.encode(), parts[1].encode("utf-8", "surrogateescape"))

    def index_of(self, auth_value: str) -> int | None:
        """The entry number named by an auth value, or None when it is not a number."""
        head = auth_value.split(" ", 1)[0]
        return int(head) if head.isdigit() and len(head) <= 3 else None


def parse_authkeys(text: str, path: str = "authkeys") -> AuthKeys:
    """Parse the authkeys text; errors are ConfigError("path:line: ...")."""
    active_index: int | None = None
    active_line = 0
    methods: dict[int, AuthMethod] = {}
    warnings: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):  # heartbeat: '#' starts a comment only at line start
            continue
        words = line.split()
        where = f"{path}:{lineno}"
        if words[0] == "auth":
            if len(words) != 2:
                raise ConfigError(f"{where}: auth: expected 'auth N' with one entry number, got {line!r}")
            if active_index is not None:
                raise ConfigError(f"{where}: auth: duplicate 'auth' line (first one on line {active_line})")
            active_index = _parse_index(words[1], where)
            active_line = lineno
            continue
        if words[0].isdigit() or words[0].lstrip("-").isdigit():
            index = _parse_index(words[0], where)
            rest = words[1:]
        elif words[0] in METHODS:
            if active_index is None:
                raise ConfigError(f"{where}: method line without an entry number: "
                                  f"expected 'N {words[0]} KEY', got {line!r}")
            if active_index in methods:
                raise ConfigError(f"{where}: method line without an entry number: "
                                  f"entry {active_index} is already defined, expected 'N {words[0]} KEY'")
            index = active_index
            rest = words
            warnings.append(f"{where}: method line without an entry number taken as entry {active_index} "
                            f"(from 'auth {active_index}'); heartbeat itself needs '{active_index} {line}'")
        else:
            raise ConfigError(f"{where}: expected 'auth N' or 'N METHOD [KEY]', got {line!r}")
        if not rest:
            raise ConfigError(f"{where}: entry {index}: missing method: expected one of {', '.join(METHODS)}")
        name = rest[0].lower()
        if name not in METHODS:
            raise ConfigError(f"{where}: entry {index}: unknown method {rest[0]!r}: "
                              f"expected one of {', '.join(METHODS)}")
        if index in methods:
            raise ConfigError(f"{where}: entry {index}: defined twice")
        if name == "crc":
            if len(rest) > 1:
                raise ConfigError(f"{where}: entry {index}: crc takes no key, got {' '.join(rest[1:])!r}")
            key = b""
        else:
            if len(rest) < 2:
                raise ConfigError(f"{where}: entry {index}: {name} needs a key: expected '{index} {name} KEY'")
            if len(rest) > 2:
                warnings.append(f"{where}: entry {index}: only the first word of the key is used, as heartbeat does; "
                                f"ignored {' '.join(rest[2:])!r}")
            key = rest[1].encode("utf-8", "surrogateescape")
        methods[index] = AuthMethod(index=index, name=name, key=key)
    if active_index is None:
        raise ConfigError(f"{path}: missing 'auth N' line: it names the entry used to sign messages")
    if active_index not in methods:
        raise ConfigError(f"{path}:{active_line}: auth {active_index}: no entry {active_index} defined "
                          f"(expected a line like '{active_index} sha1 KEY')")
    return AuthKeys(active=methods[active_index], methods=methods, warnings=tuple(warnings))


def _parse_index(word: str, where: str) -> int:
    if not word.isdigit() or len(word) > 3 or int(word) > MAX_AUTH_INDEX:
        raise ConfigError(f"{where}: expected an entry number 0..{MAX_AUTH_INDEX}, got {word!r}")
    return int(word)


def load_authkeys(config_dir: str | os.PathLike[str], check_mode: bool = True) -> AuthKeys:
    """Read DIR/authkeys; refuse it when group or others may read it (heartbeat does)."""
    path = os.path.join(os.fspath(config_dir), "authkeys")
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    if check_mode and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ConfigError(f"{path}: bad permissions {stat.S_IMODE(st.st_mode):04o}: must not be readable "
                          f"by group or others, as heartbeat requires (chmod 600 {path})")
    return parse_authkeys(data.decode("utf-8", "surrogateescape"), path)
