# SPDX-License-Identifier: GPL-2.0-or-later
"""TLS on the NBD export in replica.conf: the `export-tls*` and `export-insecure` keywords, their
defaults and conflicts (file:line errors), `dump`, and the refusal at `up` of a TCP export that
would serve the disk in clear text to the network."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replica.config import ExportTls, check_export_security, is_loopback_host, parse_config
from replica.config_dump import dump_config
from replica.errors import ConfigError

PATH = "/etc/replica/replica.conf"


def config_of(on_body: str, resource_body: str = "", common: str = ""):
    text = (f"common {{ {common} }}\n" if common else "") + \
        f"resource r0 {{\n  {resource_body}\n  on alpha {{ disk /dev/vg/r0; {on_body} }}\n}}\n"
    return parse_config(text, PATH)


def host(on_body: str, resource_body: str = "", common: str = ""):
    return config_of(on_body, resource_body, common).resource("r0").host("alpha")


def test_defaults_are_off_and_not_insecure():
    h = host("export 127.0.0.1:10809;")
    assert h.export_tls == ExportTls(mode="off")
    assert not h.export_tls.enabled and h.export_tls.where == f"{PATH}:3"


def test_certs_default_to_require_with_the_qemu_layout():
    h = host("export 10.0.0.1:10809; export-tls-certs /etc/pki/nbd;")
    tls = h.export_tls
    assert tls.mode == "require" and tls.certs == "/etc/pki/nbd" and not tls.verify_peer
    assert (tls.ca_cert, tls.server_cert, tls.server_key) == (
        "/etc/pki/nbd/ca-cert.pem", "/etc/pki/nbd/server-cert.pem", "/etc/pki/nbd/server-key.pem")


def test_psk_defaults_to_require_and_inherits_from_the_resource_and_common():
    h = host("export [::1]:10809;", resource_body="export-tls-psk /etc/replica/nbd.psk;",
             common="export-tls allow;")
    assert h.export_tls.mode == "allow" and h.export_tls.psk == "/etc/replica/nbd.psk"


def test_every_keyword_and_dump_round_trip():
    text = """resource r0 {
  export-tls-certs "/etc/pki/my nbd";
  on alpha { disk /d; export 192.0.2.1:10809; export-tls-verify-peer yes; export-tls require; }
}
resource r1 {
  on alpha { disk /e; export 0.0.0.0:10810; export-insecure yes; }
}
"""
    config = parse_config(text, PATH)
    dumped = dump_config(config)
    assert '        export-tls require;\n        export-tls-certs "/etc/pki/my nbd";\n' \
           '        export-tls-verify-peer yes;\n' in dumped
    assert "        export 0.0.0.0:10810;\n        export-insecure yes;\n" in dumped
    assert parse_config(dumped) == config


@pytest.mark.parametrize("on_body, message", [
    ("export-tls require;", "3: resource 'r0': on 'alpha': export-tls require: needs "
                            "export-tls-certs DIR or export-tls-psk FILE"),
    ("export-tls allow;", "3: resource 'r0': on 'alpha': export-tls allow: needs "
                          "export-tls-certs DIR or export-tls-psk FILE"),
    ("export-tls-certs /c; export-tls-psk /p;",
     "3: resource 'r0': on 'alpha': export-tls-certs and export-tls-psk exclude each other"),
    ("export-tls-psk /p; export-tls-verify-peer;",
     "3: resource 'r0': on 'alpha': export-tls-verify-peer: needs export-tls-certs DIR"),
    ("export-tls maybe;", "3: resource 'r0': on 'alpha': export-tls: expected one of require, "
                          "allow, off, got 'maybe'"),
    ("export-tls-certs relative/dir;", "3: resource 'r0': on 'alpha': export-tls-certs: expected "
                                       "an absolute path, got 'relative/dir'"),
    ("export-insecure perhaps;", "3: resource 'r0': on 'alpha': export-insecure: expected yes or "
                                 "no, got 'perhaps'"),
    ("export-tls off; export-tls off;", "3: resource 'r0': on 'alpha': export-tls: duplicate "
                                        "option (first at line 3)"),
])
def test_errors_name_file_and_line(on_body, message):
    with pytest.raises(ConfigError) as err:
        host(on_body)
    assert str(err.value).startswith(f"{PATH}:{message}")


def test_tls_keywords_do_not_belong_in_a_volume():
    with pytest.raises(ConfigError, match=r":4: resource 'r0': on 'alpha': volume 0: "
                                          r"'export-tls-certs' belongs in the resource or an "
                                          r"'on HOST' section"):
        parse_config("resource r0 {\n on alpha {\n  disk /d;\n  volume 0 { export-tls-certs /c; }"
                     "\n }\n}\n", PATH)


# --- the refusal at `up` ---

@pytest.mark.parametrize("export", ["10.1.2.3:10809", "0.0.0.0:10809", "[::]:10809",
                                    "[2001:db8::1]:10809", "node1.example:10809"])
def test_clear_text_tcp_export_on_the_network_is_refused(export):
    h = host(f"export {export};")
    with pytest.raises(ConfigError) as err:
        check_export_security("r0", "alpha", h.export, h.export_tls)
    assert str(err.value) == (
        f"{PATH}:3: resource 'r0': on 'alpha': export {h.export}: refusing a TCP export on a "
        f"non-loopback address without TLS: anyone who reaches the port could read and write the "
        f"whole disk in clear text: add TLS (export-tls-certs DIR; or export-tls-psk FILE;) or "
        f"say 'export-insecure yes;'")


def test_allow_mode_on_the_network_is_refused_too():
    h = host("export 10.1.2.3:10809; export-tls allow; export-tls-psk /k;")
    with pytest.raises(ConfigError, match="with export-tls allow \\(clear-text clients are still "
                                          "served\\)"):
        check_export_security("r0", "alpha", h.export, h.export_tls)


@pytest.mark.parametrize("on_body", [
    "export 10.1.2.3:10809; export-tls-certs /c;",
    "export 10.1.2.3:10809; export-tls-psk /k; export-tls require;",
    "export 10.1.2.3:10809; export-insecure yes;",
    "export 10.1.2.3:10809; export-insecure; export-tls allow; export-tls-psk /k;",
    "export 127.0.0.1:10809;", "export 127.3.4.5:10809;", "export [::1]:10809;",
    "export tcp:localhost:10809;", "export unix:/run/r0.sock;", "",
])
def test_tls_loopback_unix_or_explicit_opt_out_are_accepted(on_body):
    h = host(on_body)
    from replica.config import Endpoint
    endpoint = h.export or Endpoint("unix", path="/run/replica/r0.sock")
    check_export_security("r0", "alpha", endpoint, h.export_tls)


def test_is_loopback_host():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::")
    assert not is_loopback_host("10.0.0.1") and not is_loopback_host("example.org")
    assert not is_loopback_host(None)


# --- fuzz: any mix of the keywords at any level parses to a consistent ExportTls or fails
# with file:line ---

KEYWORDS = st.sampled_from([
    "export-tls require;", "export-tls allow;", "export-tls off;", "export-tls bogus;",
    "export-tls-certs /etc/pki/nbd;", "export-tls-certs rel;", "export-tls-psk /etc/k.psk;",
    "export-tls-verify-peer;", "export-tls-verify-peer no;", "export-insecure yes;",
    "export-insecure;", "export-tls-psk;", "export-tls require allow;",
    "export 10.0.0.1:10809;", "export 127.0.0.1:10809;", "export unix:/run/x.sock;"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(common=st.lists(KEYWORDS, max_size=3), resource=st.lists(KEYWORDS, max_size=3),
       on=st.lists(KEYWORDS, max_size=4))
def test_fuzz_export_tls_keywords(common, resource, on):
    try:
        config = config_of(" ".join(on), " ".join(resource), " ".join(common))
    except ConfigError as exc:
        assert str(exc).startswith(f"{PATH}:"), exc
        assert str(exc) == str(exc).rstrip(".")
        return
    h = config.resource("r0").host("alpha")
    tls = h.export_tls
    assert tls.mode in ("require", "allow", "off")
    assert not (tls.certs and tls.psk)
    assert not tls.enabled or tls.certs or tls.psk
    assert not tls.verify_peer or tls.certs
    assert tls.where.startswith(f"{PATH}:")
    assert parse_config(dump_config(config)) == config
    endpoint = h.export
    if endpoint is not None:
        try:
            check_export_security("r0", "alpha", endpoint, tls)
        except ConfigError as exc:
            assert endpoint.kind == "tcp" and not is_loopback_host(endpoint.host)
            assert not tls.insecure and tls.mode != "require"
            assert str(exc).startswith(f"{tls.where}: resource 'r0': on 'alpha': export ")
