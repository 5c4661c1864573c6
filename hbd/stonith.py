# SPDX-License-Identifier: GPL-2.0-or-later
"""STONITH: fence a dead peer before its groups are taken over.

Owns the R1 configuration (ha.cf ``stonith TYPE CONFIGFILE`` and ``stonith_host
FROM|* TYPE PARAMS...``, heartbeat-reference.md 1.8) and two plugin types:

* ``null`` - cluster-glue's test plugin: its parameters are the host list;
  ``reset`` always succeeds and does nothing.  For labs only.
* ``external/NAME`` - cluster-glue's external plugin protocol: an executable
  called as ``NAME gethosts|reset HOST|on HOST|off HOST|status|getconfignames``,
  exit 0 = success, one host per line from ``gethosts``.  Parameters are given
  positionally in ha.cf; they are exported as environment variables named by
  the plugin's ``getconfignames`` (in that order), as heartbeat R1 does.

External plugins are searched in (first hit wins)::

    $HBD_STONITH_DIRS (colon-separated)   CONFIG_DIR/stonith.d/external
    /usr/lib/stonith/plugins/external      /usr/lib/x86_64-linux-gnu/stonith/plugins/external

A ``stonith_host`` line applies only when FROM is ``*`` or this node.  To fence
HOST, each applicable device is asked ``gethosts``; the first that lists HOST
gets ``reset HOST``.  ``fence()`` makes one attempt and returns; retrying is the
caller's policy (hbd.groups retries every 5 s and never takes over unfenced).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from hacommon.errors import ConfigError
from hbd.resources import ScriptResult, run_script

STONITH_TIMEOUT_S = 60.0
SYSTEM_DIRS = ("/usr/lib/stonith/plugins/external", "/usr/lib/x86_64-linux-gnu/stonith/plugins/external")


@dataclass(frozen=True, slots=True)
class StonithDevice:
    type: str                      # "null" or "external/NAME"
    params: tuple[str, ...]
    source: str                    # "ha.cf: stonith_host * external/x ..." for messages
    path: str | None = None        # the external script


def plugin_dirs(config_dir: str, environ: dict | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    dirs = [d for d in env.get("HBD_STONITH_DIRS", "").split(":") if d]
    dirs.append(os.path.join(config_dir, "stonith.d", "external"))
    dirs.extend(SYSTEM_DIRS)
    return tuple(dirs)


def _make_device(stype: str, params: tuple[str, ...], source: str, dirs: tuple[str, ...]) -> StonithDevice:
    if stype == "null":
        return StonithDevice(stype, params, source)
    if stype.startswith("external/"):
        name = stype.split("/", 1)[1]
        if not name or "/" in name:
            raise ConfigError(f"{source}: bad external plugin name {stype!r}")
        for d in dirs:
            path = os.path.join(d, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return StonithDevice(stype, params, source, path)
        raise ConfigError(f"{source}: stonith plugin {stype!r} not found: searched {', '.join(dirs)}")
    raise ConfigError(f"{source}: unsupported stonith type {stype!r}: expected null or external/NAME")


def load_devices(cfg, node: str, config_dir: str, environ: dict | None = None) -> tuple[StonithDevice, ...]:
    """The devices this node may use, from HaConfig.stonith / stonith_host."""
    dirs = plugin_dirs(config_dir, environ)
    devices = []
    if cfg.stonith:
        stype, *rest = cfg.stonith
        source = f"{cfg.path}: stonith {' '.join(cfg.stonith)}"
        params: tuple[str, ...] = ()
        if rest:
            cfgfile = rest[0] if os.path.isabs(rest[0]) else os.path.join(config_dir, rest[0])
            try:
                with open(cfgfile, encoding="utf-8") as f:
                    params = tuple(shlex.split(f.read(), comments=True))
            except OSError as e:
                raise ConfigError(f"{source}: cannot read {cfgfile}: {e.strerror}") from e
        devices.append(_make_device(stype, params, source, dirs))
    for host_from, stype, params in cfg.stonith_host:
        if host_from != "*" and host_from.lower() != node.lower():
            continue
        source = f"{cfg.path}: stonith_host {host_from} {stype} {' '.join(params)}".rstrip()
        devices.append(_make_device(stype, tuple(params), source, dirs))
    return tuple(devices)


async def _run(dev: StonithDevice, action: str, *args: str, timeout_s: float) -> ScriptResult:
    if dev.path is None:    # the null device: its callers answer without a script
        return ScriptResult((dev.type, action, *args), -1, f"stonith: {dev.type}: no plugin script", False, 0.0)
    env = dict(os.environ)
    names = await _config_names(dev.path, timeout_s)
    if names is not None:
        if len(names) != len(dev.params):
            return ScriptResult((dev.path, action, *args), -1,
                                f"plugin wants {len(names)} parameter(s) ({' '.join(names)}), "
                                f"ha.cf gives {len(dev.params)}", False, 0.0)
        env.update(zip(names, dev.params, strict=True))
    return await run_script([dev.path, action, *args], timeout_s=timeout_s, env=env)


async def _config_names(path: str, timeout_s: float) -> list[str] | None:
    r = await run_script([path, "getconfignames"], timeout_s=timeout_s, env=dict(os.environ))
    if not r.ok:
        return None
    return r.output.split()


async def get_hosts(dev: StonithDevice, timeout_s: float = STONITH_TIMEOUT_S) -> list[str]:
    if dev.type == "null":
        return [h for p in dev.params for h in p.replace(",", " ").split()]
    r = await _run(dev, "gethosts", timeout_s=timeout_s)
    if not r.ok:
        raise ConfigError(f"stonith: {dev.type}: gethosts failed: {r.describe()}")
    return [line.strip() for line in r.output.splitlines() if line.strip()]


async def fence(devices, target: str, timeout_s: float = STONITH_TIMEOUT_S) -> tuple[bool, str]:
    """One attempt to reset `target`; returns (ok, one-line explanation)."""
    if not devices:
        return False, f"stonith: {target}: no STONITH device configured"
    reasons = []
    for dev in devices:
        try:
            hosts = await get_hosts(dev, timeout_s)
        except ConfigError as e:
            reasons.append(str(e))
            continue
        if target.lower() not in (h.lower() for h in hosts):
            reasons.append(f"{dev.type}: does not control {target} (hosts: {' '.join(hosts) or 'none'})")
            continue
        if dev.type == "null":
            return True, f"stonith: {target}: reset by null device (nothing done)"
        r = await _run(dev, "reset", target, timeout_s=timeout_s)
        if r.ok:
            return True, f"stonith: {target}: reset by {dev.type} ({r.duration_s:.2f} s)"
        reasons.append(f"{dev.type}: reset failed: {r.describe()}")
    return False, f"stonith: {target}: not fenced: " + "; ".join(reasons)


async def device_status(dev: StonithDevice, timeout_s: float = STONITH_TIMEOUT_S) -> tuple[bool, str]:
    if dev.type == "null":
        return True, "null device: always ok"
    r = await _run(dev, "status", timeout_s=timeout_s)
    return r.ok, r.describe()
