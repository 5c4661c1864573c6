# SPDX-License-Identifier: GPL-2.0-or-later
"""`replicactl dump`: a parsed Config back to normalised drbd.conf text (drbdadm dump).

Owns the output format only: inheritance flattened into each resource, defaults omitted (except
`protocol`), values written by each option's parser's `format` and quoted by config_syntax, so
that parse_config(dump_config(c)) gives `c` back and drbdadm accepts the text.
"""
import re

from replica.config import DISK_KEYWORDS, GLOBAL_KEYWORDS, NET_KEYWORDS, Config, DiskOptions, NetOptions
from replica.config_syntax import quote
from replica.config_values import BoolValue


def _dump_options(table, obj, defaults, indent, always=()):
    lines = []
    for kw, (fname, parser) in table.items():
        v = getattr(obj, fname)
        if v is not None and (v != getattr(defaults, fname) or kw in always):
            lines.append(f"{indent}{kw} {quote(parser.format(v))};")
    return lines


def _dump_dict(d, indent, flags=()):
    return [f"{indent}{k};" if k in flags else f"{indent}{k} {quote(v)};" for k, v in d.items()]


def dump_config(config: Config) -> str:
    """Normalised drbd.conf text: inheritance flattened, defaults omitted; parses back to `config`."""
    out = [f"# {config.path}: normalised by replica (common values folded into each resource)"]
    if config.global_options:
        flags = [k for k, p in GLOBAL_KEYWORDS.items() if isinstance(p, BoolValue)]
        out += ["global {", *_dump_dict(config.global_options, "    ", flags), "}", ""]
    for r in config.resources.values():
        out.append(f"resource {r.name} {{")
        sections = [("net", _dump_options(NET_KEYWORDS, r.net, NetOptions(), " " * 8, ("protocol",))),
                    ("disk", _dump_options(DISK_KEYWORDS, r.disk, DiskOptions(), " " * 8)),
                    ("handlers", _dump_dict(r.handlers, " " * 8)),
                    ("startup", _dump_dict(r.startup, " " * 8)),
                    ("options", _dump_dict(r.options, " " * 8))]
        for name, lines in sections:
            if lines:
                out += [f"    {name} {{", *lines, "    }"]
        for h in r.hosts.values():
            out.append(f"    on {quote(h.name)} {{")
            if h.node_id is not None:
                out.append(f"        node-id {h.node_id};")
            vol = []
            if h.device or h.minor is not None:
                derived = re.fullmatch(r"/dev/drbd([0-9]+)", h.device or "")
                parts = [quote(h.device)] if h.device else []
                if h.minor is not None and not derived:
                    parts += ["minor", str(h.minor)]
                vol.append(f"device {' '.join(parts)};")
            vol.append(f"disk {quote(h.disk)};")
            idx = f" [{h.meta_index}]" if h.meta_index is not None else ""
            vol.append(f"meta-disk {quote(h.meta_disk)}{idx};")
            if h.volume is not None:
                out += [f"        volume {h.volume} {{", *(" " * 12 + s for s in vol), "        }"]
            else:
                out += [" " * 8 + s for s in vol]
            if h.address:
                ip = f"[{h.address[0]}]" if h.address_family == "ipv6" else h.address[0]
                out.append(f"        address {h.address_family} {ip}:{h.address[1]};")
            if h.device_kind != "auto":
                out.append(f"        device-kind {h.device_kind};")
            if h.export:
                tcp = "tcp:" if h.export.kind == "tcp" and h.export.host == "unix" else ""
                out.append(f"        export {quote(tcp + str(h.export))};")
            tls = h.export_tls
            if tls.certs or tls.psk:
                out.append(f"        export-tls {tls.mode};")
            out += [f"        {kw} {quote(path)};" for kw, path in (
                ("export-tls-certs", tls.certs), ("export-tls-psk", tls.psk)) if path]
            out += [f"        {kw} yes;" for kw, flag in (
                ("export-tls-verify-peer", tls.verify_peer), ("export-insecure", tls.insecure)) if flag]
            out.append("    }")
        out += ["}", ""]
    return "\n".join(out)
