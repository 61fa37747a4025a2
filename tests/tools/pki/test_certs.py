"""``fedmq certs``: a private CA, and server and client certificates it signs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from provisioned import assert_one_line_error, fedmq


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_init_makes_a_ten_year_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    assert fedmq(capsys, "certs", "init", "--dir", certs).code == 0
    ca = _cert(certs / "ca.crt")
    assert _mode(certs / "ca.key") == 0o600
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    years = (ca.not_valid_after_utc - ca.not_valid_before_utc) / dt.timedelta(days=365)
    assert 9.9 < years < 10.1
    key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    assert key.public_key() == ca.public_key()


def test_certs_issue_a_server_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    fedmq(capsys, "certs", "init", "--dir", certs)
    ran = fedmq(
        capsys, "certs", "issue", "broker", "--server", "--dir", certs,
        "--host", "127.0.0.1", "--host", "mqtt.example.org", "--host", "::1",
    )  # fmt: skip
    assert ran.code == 0, ran
    ca, cert = _cert(certs / "ca.crt"), _cert(certs / "broker.crt")
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert _mode(certs / "broker.key") == 0o600
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.org"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key((certs / "broker.key").read_bytes(), None)
    assert key.public_key() == cert.public_key()


def test_certs_issue_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = tmp_path / "certs"
    fedmq(capsys, "certs", "init", "--dir", certs)
    # A server certificate names this machine unless told otherwise.
    assert fedmq(capsys, "certs", "issue", "local", "--server", "--dir", certs).code == 0
    san = _cert(certs / "local.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    # Without --server: a client certificate named after the device.
    assert fedmq(capsys, "certs", "issue", "pi-001", "--dir", certs).code == 0
    client = _cert(certs / "pi-001.crt")
    client.verify_directly_issued_by(_cert(certs / "ca.crt"))
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-001"
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert _mode(certs / "pi-001.key") == 0o600


def test_certs_refuse_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    fedmq(capsys, "certs", "init", "--dir", certs)
    fedmq(capsys, "certs", "issue", "pi-001", "--dir", certs)
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    assert_one_line_error(fedmq(capsys, "certs", "init", "--dir", certs))
    assert_one_line_error(fedmq(capsys, "certs", "issue", "pi-001", "--dir", certs))
    assert {p.name: p.read_bytes() for p in certs.iterdir()} == before
    assert fedmq(capsys, "certs", "init", "--dir", certs, "--force").code == 0
    assert (certs / "ca.key").read_bytes() != before["ca.key"]
    assert _mode(certs / "ca.key") == 0o600


@pytest.mark.parametrize(
    ("with_ca", "args"),
    [
        (False, ["issue", "broker", "--server"]),  # before `certs init`
        (True, ["issue", "../escape"]),
        (True, ["issue", "ca"]),  # the CA's own files
        (True, ["issue", "pi-1", "--host", "10.0.0.1"]),  # hosts are for servers
        (True, ["issue", "broker", "--server", "--host", "not a host"]),
        (True, ["issue", "broker", "--days", "0"]),
        (False, ["init", "--days", "0"]),
    ],
)
def test_certs_bad_input_is_one_line(
    with_ca: bool, args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    if with_ca:
        assert fedmq(capsys, "certs", "init", "--dir", certs).code == 0
    before = sorted(certs.glob("*")) if certs.exists() else []
    ran = fedmq(capsys, "certs", *args, "--dir", certs)
    assert_one_line_error(ran)
    if args[0] == "issue" and not with_ca:
        assert "fedmq certs init" in ran.err
    assert (sorted(certs.glob("*")) if certs.exists() else []) == before
