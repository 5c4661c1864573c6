# SPDX-License-Identifier: GPL-2.0-or-later
"""Running haresources resource scripts: find, start, stop, status, with timeouts.

Owns the contract between hbd and a resource script (Heartbeat R1's
``ResourceManager``, heartbeat-reference.md 1.3 and 2):

    SCRIPT [ARG...] start|stop|status          ("::" arguments come before the action)

Search path, first hit wins (``resource_dirs``)::

    CONFIG_DIR/resource.d        the admin's scripts (heartbeat: /etc/ha.d/resource.d)
    $HBD_RESOURCE_DIRS           colon-separated, if set; else hbd's own scripts:
                                 <repo>/scripts/resource.d, or <prefix>/share/replica-ha/resource.d
    /etc/init.d                  plain LSB init scripts (httpd, mysql, ...)

Exit codes are LSB: start/stop 0 = success (stop of a stopped resource must be 0);
status 0 = running, 3 = stopped, 1/2 = dead (stopped), 4 = unknown (treated as
possibly running).  Old heartbeat scripts exit 0 and print "running"/"stopped";
an exit 0 whose output says "not running" or "stopped" counts as stopped.

Group rules: start left to right, skipping a resource whose status says it is
already running; if one start fails, stop the ones started so far in reverse
order and report the group failed.  Stop right to left; a failed stop is
retried every ``STOP_RETRY_INTERVAL_S`` up to ``STOP_RETRY_MAX`` times (heartbeat's
HA_STOPRETRYMAX); if status then still says running, the group stop fails
(the caller must not hand the group to the peer).  Every script run has a
timeout; a timed-out script is killed (its whole process group) and counts as
failed.

Scripts get the environment of hbd plus HA_DIR, HA_RESOURCEDIR, HA_LOGFACILITY,
HA_LOGFILE, HA_DEBUGLOG, HA_CURHOST, HBD_NODE, HBD_CONFIG_DIR, HBD_RUN_DIR,
HBD_PYTHON (the interpreter running hbd, for our own scripts), PYTHONPATH (so
they import this hbd) and HBD_GARP_COUNT / HBD_GARP_INTERVAL_MS.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from hacommon.errors import ConfigError
from hbd.config import HaConfig
from hbd.haresources import ResourceGroup, ResourceSpec

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 120.0
STATUS_TIMEOUT_S = 30.0
STOP_RETRY_MAX = 10
STOP_RETRY_INTERVAL_S = 1.0
INIT_DIR = "/etc/init.d"

_NOT_RUNNING_RE = re.compile(r"[Nn][Oo][Tt] *[Rr]unning|\b[Ss]topped\b")
_RUNNING_RE = re.compile(r"[Rr]unning|\bOK\b")


def builtin_resource_dir() -> str | None:
    """hbd's own scripts: the source tree's scripts/resource.d, else the installed data dir."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, os.pardir, "scripts", "resource.d"),
                 os.path.join(sys.prefix, "share", "replica-ha", "resource.d")):
        if os.path.isdir(cand):
            return os.path.normpath(cand)
    return None


def resource_dirs(config_dir: str, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    dirs = [os.path.join(config_dir, "resource.d")]
    extra = env.get("HBD_RESOURCE_DIRS")
    if extra:
        dirs.extend(d for d in extra.split(":") if d)
    else:
        builtin = builtin_resource_dir()
        if builtin:
            dirs.append(builtin)
    dirs.append(INIT_DIR)
    return tuple(dirs)


def find_script(name: str, dirs: Iterable[str]) -> str:
    """Path of the first regular executable file called `name` in `dirs`."""
    dirs = tuple(dirs)
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"resources: bad script name {name!r}: expected a plain file name")
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ConfigError(f"resources: script {name!r} not found: searched {', '.join(dirs)}")


@dataclass(frozen=True, slots=True)
class ScriptResult:
    argv: tuple[str, ...]
    rc: int                 # exit code; -1 when it timed out or could not run
    output: str             # stdout+stderr, stripped
    timed_out: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def describe(self) -> str:
        what = "timed out" if self.timed_out else f"rc={self.rc}"
        out = self.output.splitlines()[-1] if self.output else ""
        return f"{' '.join(self.argv)}: {what}" + (f": {out}" if out else "")


def status_says_running(result: ScriptResult) -> bool | None:
    """Interpret a status run: True running, False stopped, None unknown (assume running)."""
    if result.timed_out:
        return None
    if result.rc == 0:
        return not _NOT_RUNNING_RE.search(result.output)
    if result.rc == 3 or result.rc in (1, 2):
        return False
    if _RUNNING_RE.search(result.output) and not _NOT_RUNNING_RE.search(result.output):
        return True
    return None


async def run_script(argv: list[str], *, timeout_s: float, env: Mapping[str, str]) -> ScriptResult:
    """Run argv in its own process group; kill the group on timeout."""
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
    except OSError as e:
        return ScriptResult(tuple(argv), -1, f"cannot execute: {e.strerror}", False, time.monotonic() - t0)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
        timed_out = False
    except TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = await proc.communicate()
        timed_out = True
    text = (out or b"").decode("utf-8", "replace").strip()
    rc = -1 if timed_out or proc.returncode is None else proc.returncode
    return ScriptResult(tuple(argv), rc, text, timed_out, time.monotonic() - t0)


# hbd's own scripts run in-process: fn(args, action) -> (exit code, output)
InProcessScript = Callable[[tuple[str, ...], str], tuple[int, str]]


class ResourceRunner:
    """Starts and stops whole groups by running their scripts (see the module docstring).

    `log(level, text)` receives one line per script outcome; `journal(event, **fields)`
    receives one record per resource transition.
    """

    def __init__(self, *, dirs: Iterable[str], env: Mapping[str, str], log: Callable[[str, str], None],
                 journal: Callable[..., object] | None = None, start_timeout_s: float = START_TIMEOUT_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S, status_timeout_s: float = STATUS_TIMEOUT_S,
                 stop_retry_max: int = STOP_RETRY_MAX, stop_retry_interval_s: float = STOP_RETRY_INTERVAL_S,
                 inprocess: Mapping[str, InProcessScript] | None = None) -> None:
        self.dirs = tuple(dirs)
        # name -> fn(args, action) -> (rc, output): hbd's own scripts run in-process (in a thread)
        # when the search path resolves to hbd's copy; an admin's script of the same name wins.
        self.inprocess = dict(inprocess or {})
        self._builtin = builtin_resource_dir()
        self.env = dict(env)
        self.log = log
        self.journal = journal or (lambda event, **fields: None)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.status_timeout_s = status_timeout_s
        self.stop_retry_max = stop_retry_max
        self.stop_retry_interval_s = stop_retry_interval_s

    def check_group(self, group: ResourceGroup) -> None:
        """Raise ConfigError naming the haresources line if any script is missing."""
        for res in group.resources:
            try:
                find_script(res.name, self.dirs)
            except ConfigError as e:
                raise ConfigError(f"haresources:{group.line}: resource {str(res)!r}: {e}") from None

    async def run(self, res: ResourceSpec, action: str) -> ScriptResult:
        try:
            path = find_script(res.name, self.dirs)
        except ConfigError as e:
            return ScriptResult((res.name, *res.args, action), 5, str(e), False, 0.0)
        timeout = {"start": self.start_timeout_s, "stop": self.stop_timeout_s}.get(action, self.status_timeout_s)
        handler = self.inprocess.get(res.name)
        if handler is not None and self._builtin and os.path.dirname(path) == self._builtin:
            t0 = time.monotonic()
            argv = (path, *res.args, action)
            try:
                rc, text = await asyncio.wait_for(asyncio.to_thread(handler, tuple(res.args), action), timeout)
            except TimeoutError:
                return ScriptResult(argv, -1, "", True, time.monotonic() - t0)
            return ScriptResult(argv, rc, text, False, time.monotonic() - t0)
        return await run_script([path, *res.args, action], timeout_s=timeout, env=self.env)

    async def is_running(self, res: ResourceSpec) -> bool | None:
        return status_says_running(await self.run(res, "status"))

    async def start_group(self, group: ResourceGroup) -> bool:
        """Start left to right; on a failure stop what this call started, in reverse."""
        started: list[ResourceSpec] = []
        for res in group.resources:
            if await self.is_running(res) is True:
                self.log("info", f"resource {str(res)!r}: already running, not started again")
                continue
            result = await self.run(res, "start")
            if not result.ok:
                self.log("crit", f"resource {str(res)!r}: start failed: {result.describe()}: "
                                 f"giving up group {group.name!r}")
                self.journal("resource", group=group.name, resource=str(res), action="start",
                             result="failed", rc=result.rc, timed_out=result.timed_out)
                for done in reversed(started):
                    await self._stop_one(group, done)
                return False
            started.append(res)
            self.log("info", f"resource {str(res)!r}: started ({result.duration_s:.2f} s)")
            self.journal("resource", group=group.name, resource=str(res), action="start", result="ok",
                         duration_s=round(result.duration_s, 3))
        return True

    async def stop_group(self, group: ResourceGroup) -> bool:
        """Stop right to left; True when every resource is stopped."""
        ok = True
        for res in reversed(group.resources):
            ok = await self._stop_one(group, res) and ok
        return ok

    async def _stop_one(self, group: ResourceGroup, res: ResourceSpec) -> bool:
        for attempt in range(1, self.stop_retry_max + 1):
            result = await self.run(res, "stop")
            if result.ok:
                self.log("info", f"resource {str(res)!r}: stopped ({result.duration_s:.2f} s)")
                self.journal("resource", group=group.name, resource=str(res), action="stop", result="ok",
                             duration_s=round(result.duration_s, 3))
                return True
            self.log("warn", f"resource {str(res)!r}: stop failed (attempt {attempt}/{self.stop_retry_max}): "
                             f"{result.describe()}")
            if attempt < self.stop_retry_max:
                await asyncio.sleep(self.stop_retry_interval_s)
        if await self.is_running(res) is False:
            self.log("warn", f"resource {str(res)!r}: stop failed but status says stopped: "
                             f"the script is probably not LSB-compliant")
            self.journal("resource", group=group.name, resource=str(res), action="stop", result="ok")
            return True
        self.log("crit", f"resource {str(res)!r}: stop failed {self.stop_retry_max} times and it may still "
                         f"be running: this node must be reset before the group can move")
        self.journal("resource", group=group.name, resource=str(res), action="stop", result="failed")
        return False

    async def group_status(self, group: ResourceGroup) -> list[tuple[str, bool | None]]:
        return [(str(res), await self.is_running(res)) for res in group.resources]


def script_env(base: Mapping[str, str], *, config_dir: str, node: str, run_dir: str,
               cfg: HaConfig | None = None) -> dict[str, str]:
    """Environment for resource scripts (documented in the module docstring)."""
    env = dict(base)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update({
        "HA_DIR": config_dir, "HA_RESOURCEDIR": os.path.join(config_dir, "resource.d"),
        "HA_CURHOST": node, "HBD_NODE": node, "HBD_CONFIG_DIR": config_dir, "HBD_RUN_DIR": run_dir,
        "HBD_PYTHON": sys.executable,
    })
    if cfg is not None:
        env["HBD_GARP_COUNT"] = str(cfg.gratuitous_arp_count)
        env["HBD_GARP_INTERVAL_MS"] = str(cfg.gratuitous_arp_interval_ms)
        for key, val in (("HA_LOGFACILITY", cfg.logfacility), ("HA_LOGFILE", cfg.logfile),
                         ("HA_DEBUGLOG", cfg.debugfile)):
            if val:
                env[key] = val
    return env
