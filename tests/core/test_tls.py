"""`mqtts://` against a real Mosquitto TLS listener, with a private CA made for the test."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import (
    Collector,
    GatewayProcess,
    Mosquitto,
    base_config,
    buffer_stats,
    free_port,
    scrape,
    wait_port,
    write_config,
)

# one xdist worker runs this module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("tls")
FLOW = [{"name": "sim-1", "driver": "sim", "interval": "50ms", "points": 10,
         "pattern": "counter"}]


# -- a private PKI ---------------------------------------------------------------------------
Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[Key, x509.Certificate]:
    """A self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca: tuple[Key, x509.Certificate], cn: str, names: list[str], *,
          client: bool = False) -> tuple[Key, x509.Certificate]:
    """A leaf certificate signed by `ca` for DNS names and IP addresses in `names`."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pem(path: Path, obj: Key | x509.Certificate) -> Path:
    if isinstance(obj, x509.Certificate):
        data = obj.public_bytes(serialization.Encoding.PEM)
    else:
        data = obj.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    path.write_bytes(data)
    path.chmod(0o644)  # mosquitto, started as root, reads these as its own user
    return path


@dataclass
class TlsBroker:
    """One Mosquitto: a plain listener (for the collector) and three TLS listeners."""

    broker: Mosquitto
    tls_port: int
    """Server cert for 127.0.0.1 and localhost, signed by `ca`."""
    mtls_port: int
    """Same, and a client certificate signed by `ca` is required."""
    other_name_port: int
    """Server cert signed by `ca` for broker.example only."""
    pki: Path

    @property
    def ca(self) -> Path:
        return self.pki / "ca.pem"


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsBroker]:
    pki = Path(tempfile.mkdtemp(prefix="pg-pki-"))
    pki.chmod(0o755)
    ca = make_ca("parkgate test CA")
    write_pem(pki / "ca.pem", ca[1])
    other_ca = make_ca("some other CA")
    write_pem(pki / "other-ca.pem", other_ca[1])
    key, cert = issue(ca, "127.0.0.1", ["127.0.0.1", "localhost"])
    write_pem(pki / "server.key", key)
    write_pem(pki / "server.pem", cert)
    key, cert = issue(ca, "broker.example", ["broker.example"])
    write_pem(pki / "named.key", key)
    write_pem(pki / "named.pem", cert)
    key, cert = issue(ca, "test-gw", [], client=True)
    write_pem(pki / "client.key", key)
    write_pem(pki / "client.pem", cert)

    ports = [free_port() for _ in range(3)]
    lines = []
    for port, leaf, extra in ((ports[0], "server", ""),
                              (ports[1], "server", "require_certificate true"),
                              (ports[2], "named", "")):
        lines += [f"listener {port} 127.0.0.1", f"cafile {pki}/ca.pem",
                  f"certfile {pki}/{leaf}.pem", f"keyfile {pki}/{leaf}.key", extra]
    broker = Mosquitto(extra="\n".join(lines)).start()
    try:
        for port in ports:
            wait_port(port)
        yield TlsBroker(broker, ports[0], ports[1], ports[2], pki)
    finally:
        broker.close()
        shutil.rmtree(pki, ignore_errors=True)


# -- helpers -----------------------------------------------------------------------------------
class Agent:
    """One agent talking to a TLS listener, and a plain-port collector of its topics."""

    def __init__(self, tmp: Path, tls: TlsBroker, url: str, tls_section: dict[str, Any],
                 **mqtt_over: Any) -> None:
        gid = f"tls-{tmp.name[-20:]}".replace("_", "-")
        self.collector = Collector(tls.broker.port, f"parkgate/test/{gid}/#")
        mqtt = {"brokers": [url], "tls": tls_section,
                "batch": {"max_readings": 500, "max_delay": "100ms"}, **mqtt_over}
        cfg = base_config(tmp, tls.broker.port, FLOW, gateway={"id": gid, "site": "test"},
                          uplink={"mqtt": mqtt}, agent={"shutdown_grace": "1s"})
        self.listen = cfg["metrics"]["listen"]
        self.cfg = write_config(tmp / "gw.yaml", cfg)
        self.gw = GatewayProcess(self.cfg).start()

    def delivers(self, timeout: float = 20.0) -> None:
        """Readings arrive; after SIGTERM every seq 1..last arrived."""
        c = self.collector
        assert c.wait_for(lambda c: len(c.messages) >= 3, timeout), self.gw.output()[-3000:]
        assert scrape(self.listen)["parkgate_uplink_connected"] == 1
        assert self.gw.stop() == 0
        last = buffer_stats(self.cfg)["next_seq"] - 1
        want = set(range(1, last + 1))
        assert c.wait_for(lambda c: want <= {r["seq"] for _t, m in c.messages
                                             for r in m["readings"]}, 20)

    def refused(self, attempts: int = 2) -> str:
        """No connection, nothing delivered, failures counted; returns the log."""
        metrics: dict[str, float] = {}
        failures = 0.0
        deadline = time.monotonic() + 20
        while failures < attempts and time.monotonic() < deadline:
            time.sleep(0.1)
            with contextlib.suppress(OSError):  # the HTTP server may not be up yet
                metrics = scrape(self.listen)
                failures = sum(v for k, v in metrics.items()
                               if k.startswith("parkgate_uplink_connect_errors_total"))
        assert failures >= attempts, self.gw.output()[-3000:]
        assert metrics["parkgate_uplink_connected"] == 0
        assert self.gw.alive()
        assert self.collector.messages == []
        return self.gw.output()

    def close(self) -> None:
        self.gw.kill()
        self.collector.close()


@pytest.fixture
def agent(tmp_path: Path, tls: TlsBroker) -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def make(port: int, mqtt: dict[str, Any] | None = None, **tls_section: Any) -> Agent:
        a = Agent(tmp_path, tls, f"mqtts://127.0.0.1:{port}", tls_section, **(mqtt or {}))
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


# -- tests -----------------------------------------------------------------------------------
def test_tls_with_our_ca_delivers(tls: TlsBroker, agent: Callable[..., Agent]) -> None:
    a = agent(tls.tls_port, ca=str(tls.ca))
    a.delivers()
    assert '"tls": true' in a.gw.output()


def test_tls_with_another_ca_is_refused(tls: TlsBroker, agent: Callable[..., Agent]) -> None:
    """Verification is on by default: a broker cert from an unknown CA is not accepted."""
    a = agent(tls.tls_port, ca=str(tls.pki / "other-ca.pem"))
    out = a.refused()
    assert "certificate verify failed" in out, out[-3000:]


def test_tls_failure_is_counted_as_tls(tls: TlsBroker, agent: Callable[..., Agent]) -> None:
    """aiomqtt re-raises ssl.SSLError as a plain MqttError; the label must still say tls."""
    a = agent(tls.tls_port, ca=str(tls.pki / "other-ca.pem"))
    a.refused()
    assert scrape(a.listen).get('parkgate_uplink_connect_errors_total{reason="tls"}', 0) > 0


def test_tls_checks_the_host_name(tls: TlsBroker, agent: Callable[..., Agent]) -> None:
    """Our CA, but the certificate names broker.example, not 127.0.0.1: refused."""
    a = agent(tls.other_name_port, ca=str(tls.ca))
    out = a.refused()
    assert "certificate verify failed" in out, out[-3000:]
    assert "127.0.0.1" in out


def test_tls_verify_false_connects_to_any_cert(tls: TlsBroker,
                                                agent: Callable[..., Agent]) -> None:
    a = agent(tls.tls_port, ca=str(tls.pki / "other-ca.pem"), verify=False)
    a.delivers()


def test_tls_client_certificate(tls: TlsBroker, agent: Callable[..., Agent]) -> None:
    """A listener with `require_certificate true` takes us with tls.cert/key."""
    a = agent(tls.mtls_port, ca=str(tls.ca), cert=str(tls.pki / "client.pem"),
              key=str(tls.pki / "client.key"))
    a.delivers()


def test_tls_client_certificate_missing_is_refused(tls: TlsBroker,
                                                   agent: Callable[..., Agent]) -> None:
    """No client certificate for a listener that requires one: never connected."""
    a = agent(tls.mtls_port, {"connect_timeout": "2s"}, ca=str(tls.ca))
    a.refused(attempts=1)


def test_tls_client_certificate_missing_is_reported_clearly(
        tls: TlsBroker, agent: Callable[..., Agent]) -> None:
    """What a field engineer reads: JSON log lines only, naming the certificate problem.

    With TLS 1.3 the broker rejects a missing client certificate after the handshake, and
    aiomqtt ignores a disconnect before CONNACK: only paho's log says why."""
    a = agent(tls.mtls_port, {"connect_timeout": "2s"}, ca=str(tls.ca))
    out = a.refused(attempts=1)
    docs = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any("certificate" in str(d.get("error", "")) for d in docs
               if d.get("component") == "uplink"), out[-3000:]


def test_tls_server_name_overrides_the_checked_name(tls: TlsBroker,
                                                    agent: Callable[..., Agent]) -> None:
    """`server_name: broker.example` for a broker reached by IP address."""
    a = agent(tls.other_name_port, ca=str(tls.ca), server_name="broker.example")
    a.delivers()
