# SPDX-License-Identifier: GPL-2.0-or-later
"""Certificates for the TLS tests, made with `cryptography`: a CA, node certificates signed by it
(with the node's name and addresses as subjectAltNames), expired ones, and a second, unrelated
CA. Keys are P-256 (fast to make). Files are PEM, written under the directory given."""
import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    certfile: pathlib.Path


@dataclass(frozen=True)
class NodeCert:
    certfile: pathlib.Path
    keyfile: pathlib.Path


def _write_key(path: pathlib.Path, key) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(directory: pathlib.Path, name: str = "replica test CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    certfile = directory / f"{name.replace(' ', '-')}.crt"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(name, key, cert, certfile)


def make_node_cert(directory: pathlib.Path, ca: Authority, name: str, addresses: tuple[str, ...] = (),
                   expired: bool = False, prefix: str = "") -> NodeCert:
    """A certificate for node `name` (CN and DNS SAN) and its addresses (IP SANs), for both TLS
    client and server use; `expired`: valid from 10 days ago to yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (now - 10 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    stem = directory / f"{prefix}{name}{'-expired' if expired else ''}"
    certfile, keyfile = stem.with_suffix(".crt"), stem.with_suffix(".key")
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(keyfile, key)
    return NodeCert(certfile, keyfile)
