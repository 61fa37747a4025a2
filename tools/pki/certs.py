"""A small private CA for a fleet's broker: a CA, server certificates and client certificates.

Pure functions over a directory of PEM files, used by ``fedmq certs``:

- ``ca.crt`` / ``ca.key``: a self-signed CA (10 years). ``ca.crt`` goes to every device
  and to the broker (``cafile``); ``ca.key`` signs, and belongs offline.
- ``NAME.crt`` / ``NAME.key``: a certificate signed by that CA: for the broker
  (``server``: its DNS names and IP addresses as subjectAltName) or for a client.

Keys are ECDSA P-256 (small and fast on a Pi; Mosquitto, OpenSSL and Python's ssl all
accept them), unencrypted PEM written with mode 0600, since Mosquitto and an unattended
agent must read them without a passphrase. Nothing is overwritten unless ``force``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmq.errors import ConfigError
from fedmq.files import atomic_write

CA_NAME = "ca"
CA_DAYS = 3650
LEAF_DAYS = 825
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_CLOCK_SKEW = dt.timedelta(minutes=5)  # valid from a little before now: devices' clocks drift
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$)(\*\.)?{_LABEL}(\.{_LABEL})*")  # '*.' for a wildcard


@dataclass(frozen=True)
class CertFiles:
    """Where one certificate and its private key were written."""

    cert: Path
    key: Path


def files(directory: str | Path, name: str) -> CertFiles:
    """The paths of ``name``'s certificate and key in ``directory``."""
    d = Path(directory)
    return CertFiles(cert=d / f"{name}.crt", key=d / f"{name}.key")


def init_ca(
    directory: str | Path,
    *,
    common_name: str = "fedmq CA",
    days: int = CA_DAYS,
    force: bool = False,
) -> CertFiles:
    """Create a CA in ``directory`` (made if missing): a key and a self-signed certificate."""
    _check_days(days)
    out = files(directory, CA_NAME)
    _refuse_overwrite(out, force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    _write(out, cert, key)
    return out


def issue(
    directory: str | Path,
    name: str,
    *,
    server: bool = False,
    hosts: Iterable[str] = (),
    days: int = LEAF_DAYS,
    force: bool = False,
) -> CertFiles:
    """Issue ``name``'s certificate, signed by the CA in ``directory``.

    A ``server`` certificate names ``hosts`` (DNS names or IP addresses; default
    127.0.0.1 and localhost) as subjectAltName and is for TLS servers only; otherwise it
    is a client certificate whose common name is ``name`` (a device id, say).
    """
    check_name(name)
    if name == CA_NAME:
        raise ConfigError("bad_cert_name", f"{CA_NAME!r} is the CA's own file name")
    _check_days(days)
    hosts = list(hosts)
    if hosts and not server:
        raise ConfigError(
            "bad_cert_hosts", "host names and addresses are for --server certificates"
        )
    san = _subject_alt_names(hosts or list(DEFAULT_HOSTS)) if server else None
    ca_cert, ca_key = load_ca(directory)
    out = files(directory, name)
    _refuse_overwrite(out, force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    _write(out, builder.sign(ca_key, hashes.SHA256()), key)
    return out


def load_ca(directory: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in ``directory``; a one-line error if missing or broken."""
    ca = files(directory, CA_NAME)
    if not ca.cert.is_file() or not ca.key.is_file():
        raise ConfigError(
            "no_ca", f"no CA in {directory} ({ca.cert.name}, {ca.key.name}); run `fedmq certs init`"
        )
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("bad_ca", f"cannot load the CA in {directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError("bad_ca", f"{ca.key} is not the key of {ca.cert}")
    return cert, key


def check_name(name: str) -> str:
    """``name`` if it can name a certificate's files: letters, digits, '.', '_', '-'."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            "bad_cert_name",
            f"certificate name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return name


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.fullmatch(host):
            raise ConfigError("bad_cert_hosts", f"{host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(host.lower()))
    return x509.SubjectAlternativeName(names)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise ConfigError("bad_cert_days", f"validity of {days} days is not in 1..36500")


def _refuse_overwrite(out: CertFiles, force: bool) -> None:
    existing = [p for p in (out.cert, out.key) if p.exists()]
    if existing and not force:
        raise ConfigError(
            "cert_exists",
            f"{' and '.join(map(str, existing))} already "
            f"{'exists' if len(existing) == 1 else 'exist'}; pass --force to replace them",
        )


def _write(out: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    """The key first (0600 from its creation on, never briefly readable), then the cert."""
    try:
        out.key.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            out.key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        atomic_write(out.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:
        raise ConfigError("cert_write", f"cannot write {exc.filename}: {exc.strerror}") from exc
