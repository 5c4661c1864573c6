# SPDX-License-Identifier: GPL-2.0-or-later
"""replica.conf syntax: text -> tokens -> a generic tree of statements; and quoting, its inverse.

Owns the lexical and block structure of drbd.conf(5) "FILE FORMAT", nothing about keywords:
`keyword [args...] ;` options and `keyword [args...] { ... }` sections, `#` comments,
double-quoted strings (\\" \\\\ \\n \\t escapes), a `skip` prefix disabling the statement it
precedes. Every error is a ConfigError starting with `file:line:`. replica.config gives the
statements their meaning (keyword tables, include, inheritance).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from replica.errors import ConfigError

MAX_DEPTH = 6                         # sections inside sections

_TOKEN_RE = re.compile(r'''(?P<ws>[ \t\r\f\v]+)|(?P<nl>\n)|(?P<comment>\#[^\n]*)|(?P<punct>[{};])
    |(?P<string>"(?:[^"\\\n]|\\[^\n])*")|(?P<word>[^\s{};"\#]+)|(?P<bad>.)''', re.X | re.S)
_UNESCAPE = {"n": "\n", "t": "\t"}
_ESCAPE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


@dataclass
class Token:
    kind: str  # "word" | "string" | "{" | "}" | ";" | "eof"
    value: str
    line: int


def tokenize(text: str, path: str) -> list[Token]:
    toks, line = [], 1
    for m in _TOKEN_RE.finditer(text):
        kind, value = m.lastgroup, m.group()
        if kind == "nl":
            line += 1
        elif kind == "punct":
            toks.append(Token(value, value, line))
        elif kind == "string":
            body = re.sub(r"\\(.)", lambda e: _UNESCAPE.get(e.group(1), e.group(1)), value[1:-1])
            if "\0" in body:
                raise ConfigError(f"{path}:{line}: NUL character in string {value!r}")
            toks.append(Token("string", body, line))
        elif kind == "word":
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ConfigError(f"{path}:{line}: invalid control character in {value!r}")
            toks.append(Token("word", value, line))
        elif kind == "bad":
            what = "unterminated string" if value == '"' else f"invalid character {value!r}"
            raise ConfigError(f"{path}:{line}: {what}")
    toks.append(Token("eof", "", line))
    return toks


@dataclass
class Statement:
    key: str
    args: list[str]
    line: int
    file: str
    body: list[Statement] | None  # None: option ended by ';'


def _label(key: str, args: list[str]) -> str:
    if key in ("resource", "on") and args:
        return f"{key} '{args[0]}'"
    return " ".join([key, *args])


def parse_block(toks: list[Token], pos: int, path: str, ctx: list[str],
                 opened: Token | None) -> tuple[list[Statement], int]:
    """Statements up to the '}' closing `opened` (or EOF at top level); returns (stmts, next pos)."""
    where = ": ".join(ctx) + ": " if ctx else ""
    if len(ctx) > MAX_DEPTH:
        raise ConfigError(f"{path}:{opened.line if opened else 0}: {where}sections nested too deeply")
    stmts: list[Statement] = []
    while True:
        tok = toks[pos]
        if tok.kind == "eof":
            if opened is None:
                return stmts, pos
            raise ConfigError(f"{path}:{tok.line}: {where}unexpected end of file: section opened "
                              f"at line {opened.line} is not closed (missing '}}')")
        if tok.kind == "}":
            if opened is None:
                raise ConfigError(f"{path}:{tok.line}: unexpected '}}' (no section is open)")
            return stmts, pos + 1
        if tok.kind != "word":
            got = f'"{tok.value}"' if tok.kind == "string" else tok.value
            raise ConfigError(f"{path}:{tok.line}: {where}expected a keyword, got '{got}'")
        pos += 1
        args, last = [], tok
        while toks[pos].kind in ("word", "string"):
            last = toks[pos]
            args.append(last.value)
            pos += 1
        end = toks[pos]
        shown = " ".join([tok.value, *args])
        if end.kind == ";":
            stmts.append(Statement(tok.value, args, tok.line, path, None))
            pos += 1
        elif end.kind == "{":
            body, pos = parse_block(toks, pos + 1, path, [*ctx, _label(tok.value, args)], end)
            stmts.append(Statement(tok.value, args, tok.line, path, body))
        else:
            got = "end of file" if end.kind == "eof" else f"'{end.value}'"
            raise ConfigError(f"{path}:{last.line}: {where}{tok.value}: missing ';' after "
                              f"'{shown}' (got {got})")
        if stmts[-1].key == "skip":  # drbd.conf: "skip" disables the statement it prefixes
            stmts.pop()


def parse_statements(text: str, path: str) -> list[Statement]:
    """The top-level statements of `text` (read from `path`, named in errors)."""
    return parse_block(tokenize(text, path), 0, path, [], None)[0]


def read_statements(path: str) -> list[Statement]:
    """The top-level statements of the file at `path`; unreadable files are a ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {getattr(e, 'strerror', None) or e}") from e
    return parse_statements(text, path)


def quote(s: str) -> str:
    """`s` as one token: bare when it lexes as a word, else a double-quoted string."""
    if re.fullmatch(r"[A-Za-z0-9_./:+@=,\[\]-]+", s) and s not in ("skip", "include"):
        return s
    return '"' + "".join(_ESCAPE.get(c, c) for c in s) + '"'
