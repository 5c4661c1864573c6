# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.conf values: one parser per kind of DRBD value, each with its inverse for dump_config.

Owns how an option's words become a typed value (and back): integers in DRBD's units, sizes and
rates with K/M/G suffixes, enumerations, booleans (`flag;` or `flag yes|no;`), bounded strings,
and `option()`, which declares a NetOptions/DiskOptions field with its keyword, parser and DRBD
default. A wrong value raises BadValue with what was expected; replica.config adds
`file:line: context: keyword:` in front.
"""
import re
from dataclasses import field

K = 1024


class BadValue(Exception):
    """A value is wrong; the builder adds `file:line: context: keyword:` in front."""


def one_value(args: list[str]) -> str:
    if len(args) != 1:
        extra = " (missing ';'?)" if len(args) > 1 else ""
        raise BadValue(f"expected one value, got {len(args)}: '{' '.join(args)}'{extra}")
    return args[0]


class IntValue:
    """Integer in DRBD's unit; stored as int, or as float seconds n / div (div 10: tenths)."""

    def __init__(self, lo, hi, unit="", div=None):
        self.lo, self.hi, self.unit, self.div = lo, hi, unit, div

    def parse(self, args):
        tok = one_value(args)
        what = f"an integer {self.lo}..{self.hi}" + (f" {self.unit}" if self.unit else "")
        if not re.fullmatch(r"[0-9]{1,19}", tok) or not self.lo <= int(tok) <= self.hi:
            raise BadValue(f"expected {what}, got '{tok}'")
        return int(tok) if self.div is None else int(tok) / self.div

    def format(self, v):
        return str(v if self.div is None else round(v * self.div))


class SizeValue:
    """Size or rate with optional K/M/G suffix; `base` is the unit of a bare number in bytes."""
    _MULT = {"": None, "k": K, "m": K ** 2, "g": K ** 3, "s": 512}
    _NAMES = {1: "bytes", 512: "sectors", K: "KiB"}

    def __init__(self, lo, hi, base, what="a size"):
        self.lo, self.hi, self.base, self.what = lo, hi, base, what

    def parse(self, args):
        tok = one_value(args)
        m = re.fullmatch(r"([0-9]{1,19})([kKmMgGsS]?)", tok)
        value = int(m[1]) * (self._MULT[m[2].lower()] or self.base) if m else -1
        if not self.lo <= value <= self.hi:
            raise BadValue(f"expected {self.what} {self.format(self.lo)}..{self.format(self.hi)} (K, M or "
                       f"G suffix; bare numbers in {self._NAMES[self.base]}), got '{tok}'")
        return value

    def format(self, v):
        for suffix, mult in (("G", K ** 3), ("M", K ** 2), ("K", K)):
            if v and v % mult == 0:
                return f"{v // mult}{suffix}"
        return str(v // self.base)


class EnumValue:
    def __init__(self, *values, pattern=None):
        self.values, self.pattern = values, pattern

    def parse(self, args):
        tok = one_value(args)
        if tok in self.values or (self.pattern and re.fullmatch(self.pattern, tok)):
            return tok
        raise BadValue(f"expected one of {', '.join(self.values)}, got '{tok}'")

    def format(self, v):
        return v


class BoolValue:
    """`flag;` or `flag yes|no;` (drbd.conf boolean options)."""

    def parse(self, args):
        if args and (len(args) > 1 or args[0] not in ("yes", "no")):
            raise BadValue(f"expected yes or no, got '{' '.join(args)}'")
        return not args or args[0] == "yes"

    def format(self, v):
        return "yes" if v else "no"


class StrValue(EnumValue):
    def __init__(self, maxlen=4096, pattern=None, expected="a string"):
        self.maxlen, self.pattern, self.expected = maxlen, pattern, expected

    def parse(self, args):
        tok = one_value(args)
        if not tok or len(tok) > self.maxlen or (self.pattern and not re.fullmatch(self.pattern, tok)):
            raise BadValue(f"expected {self.expected}, got '{tok}'")
        return tok


SECONDS, TENTHS, FLAG = "seconds", "tenths of a second", BoolValue()
ALG = StrValue(64, r"[a-z0-9()_-]+", "a kernel hash algorithm name")
RATE = SizeValue(0, 4 * K ** 3, K, "a rate in bytes/s")


def option(keyword, parser, default):
    """A NetOptions/DiskOptions field: its drbd.conf keyword, value parser and DRBD default."""
    return field(default=default, metadata={"keyword": keyword, "parser": parser})
