# SPDX-License-Identifier: GPL-2.0-or-later
"""Log handlers for the daemons that survive log rotation and speak to journald.

* ``ReopeningFileHandler``: a file that logrotate may move away. It reopens when the path no
  longer names the file it writes (``WatchedFileHandler``: a stat per record), and on demand
  (``reopen_all``, called from the daemons' SIGHUP handler, as heartbeat and syslogd do), so
  both `postrotate kill -HUP` and `create` rotation work.
* ``journal_stderr()``: whether stderr is systemd's journal stream (``JOURNAL_STREAM`` names the
  device and inode of the stream systemd connected, see systemd.exec(5)). A daemon run with -f
  under systemd then prefixes each line with ``<N>`` (sd-daemon(3)) so the journal records the
  priority, and leaves out its own timestamp and pid, which the journal adds.
* ``syslog_facility(name)``: heartbeat's ``logfacility`` names (daemon, local0..local7, ...).
"""
import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from typing import TextIO

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class ReopeningFileHandler(logging.handlers.WatchedFileHandler):
    """A log file reopened after rotation (moved path) or on ``reopen()``."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            self._statstream()
        finally:
            self.release()


def reopen_all(logger: logging.Logger | None = None) -> list[str]:
    """Reopen every ReopeningFileHandler of `logger` (default: the root logger); their paths."""
    target = logger if logger is not None else logging.getLogger()
    done = []
    for handler in target.handlers:
        if isinstance(handler, ReopeningFileHandler):
            handler.reopen()
            done.append(handler.baseFilename)
    return done


def journal_stderr(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr) is the journal stream systemd gave this process."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """``<priority>message``: journald reads the level from the prefix (SyslogLevelPrefix=)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        return f"<{prio}>{super().format(record)}"


def syslog_facility(name: str) -> int:
    """The SysLogHandler facility for a heartbeat-style `logfacility` name; ValueError if none."""
    try:
        return logging.handlers.SysLogHandler.facility_names[name.lower()]
    except KeyError:
        known = ", ".join(sorted(logging.handlers.SysLogHandler.facility_names))
        raise ValueError(f"unknown syslog facility {name!r} (known: {known})") from None
