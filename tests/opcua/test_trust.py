"""The trust list: files and directories, PEM and DER, unreadable entries named."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.opcua.trust import first_certificate, info, load_trusted, thumbprint, verify
from gateway.errors import DeviceConfigError
from tests.opcua.conftest import Certs


def pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)


def test_files_directories_pem_and_der(certs: Certs, tmp_path: Path) -> None:
    a, b = certs.server.cert.read_bytes(), certs.other_server.cert.read_bytes()
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pem(a) + pem(b))
    d = tmp_path / "dir"
    d.mkdir()
    (d / "c.der").write_bytes(certs.client.cert.read_bytes())
    (d / "notes.txt").write_text("not a certificate, not looked at")
    known = load_trusted([str(bundle), str(d), str(tmp_path / "absent-dir")])
    assert set(known) == {thumbprint(a), thumbprint(b),
                          thumbprint(certs.client.cert.read_bytes())}
    assert verify(a, [str(bundle)], tofu=False, endpoint="opc.tcp://x:4840") is None


def test_an_unreadable_trusted_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.der"
    bad.write_bytes(b"\x30\x82garbage")
    with pytest.raises(DeviceConfigError, match=r"trusted certificate .*broken\.der: cannot "
                                                r"be read"):
        load_trusted([str(bad)])


def test_chain_leaf_and_info(certs: Certs) -> None:
    der = certs.server.cert.read_bytes()
    assert first_certificate(der + certs.client.cert.read_bytes()) == der
    facts = info(der)
    assert facts.subject == "CN=plant-server"
    assert facts.application_uri == "urn:parkgate:test:server"
    assert len(facts.sha1) == 40 and len(facts.sha256) == 64



def test_a_missing_trusted_file_is_named(certs: Certs, tmp_path: Path) -> None:
    der = certs.server.cert.read_bytes()
    with pytest.raises(DeviceConfigError, match=r"plc\.der: cannot be read"):
        verify(der, [str(tmp_path / "plc.der")], tofu=True, endpoint="opc.tcp://x:4840")
