"""Fixtures for the OPC UA driver: a real asyncua server per test, certificates, drivers."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from emulators.opcua_server import PlantServer

from drivers.opcua import OpcUaDriver, OpcUaOptions
from gateway.metrics import Metrics
from tests.support import driver_context, free_port


@dataclass(frozen=True)
class Pair:
    """A certificate (DER file) and its private key (PEM file)."""

    cert: Path
    key: Path


def make_pair(directory: Path, name: str, uri: str) -> Pair:
    """A self-signed application instance certificate as OPC UA wants it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True,
                data_encipherment=True, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.der"
    key_path = directory / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Pair(cert_path, key_path)


@dataclass(frozen=True)
class Certs:
    """Two server identities and the gateway's."""

    server: Pair
    other_server: Pair
    client: Pair


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("opcua-certs")
    return Certs(server=make_pair(d, "plant-server", "urn:parkgate:test:server"),
                 other_server=make_pair(d, "replaced-server", "urn:parkgate:test:server"),
                 client=make_pair(d, "gateway", "urn:parkgate:test:gateway"))


@pytest.fixture
async def plant() -> AsyncIterator[PlantServer]:
    server = await PlantServer(free_port()).start()
    yield server
    await server.stop()


@pytest.fixture
async def secure_plant(certs: Certs) -> AsyncIterator[PlantServer]:
    server = await PlantServer(free_port(), cert=certs.server.cert, key=certs.server.key,
                               secure_only=True).start()
    yield server
    await server.stop()


class Drivers:
    """Builds drivers against a server and closes them at the end of the test."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.made: list[OpcUaDriver] = []

    def options(self, url: str, nodes: list[dict[str, Any]], **cfg: Any) -> OpcUaOptions:
        return OpcUaOptions.model_validate(
            {"name": cfg.pop("name", "plc"), "driver": "opcua", "endpoint": url,
             "nodes": nodes, **cfg})

    def make(self, url: str, nodes: list[dict[str, Any]], **cfg: Any) -> OpcUaDriver:
        opts = self.options(url, nodes, **cfg)
        drv = OpcUaDriver(opts, driver_context(opts.name, metrics=self.metrics))
        self.made.append(drv)
        return drv

    async def open(self, url: str, nodes: list[dict[str, Any]], **cfg: Any) -> OpcUaDriver:
        drv = self.make(url, nodes, **cfg)
        await drv.open()
        return drv

    async def close(self) -> None:
        for d in self.made:
            await d.close()


@pytest.fixture
async def drivers() -> AsyncIterator[Drivers]:
    d = Drivers()
    yield d
    await d.close()


def node(name: str, ns: int = 2, **extra: Any) -> dict[str, Any]:
    """A node entry for `Plant.<name>`, named after the type in lower case."""
    return {"name": name.lower(), "node": f"ns={ns};s=Plant.{name}", **extra}
