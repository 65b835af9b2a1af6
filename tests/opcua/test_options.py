"""The config of `driver: opcua`: the sample checks, mistakes are placed, secrets substitute;
and the pure conversions (quality, timestamps, variant types, encoding) by table."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua

from drivers.opcua.convert import convert, encode, quality, timestamp
from drivers.opcua.options import OpcUaOptions, UserAuth
from gateway.config import load_config
from gateway.errors import WriteRefused
from tests.support import ROOT


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_sample_checks() -> None:
    done = check(ROOT / "drivers/opcua/sample.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK (3 device(s): opcua)" in done.stdout


def test_mistakes_come_back_placed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "gateway: {id: g, site: s}\nbuffer: {path: /tmp/x.db}\n"
        "uplink: {mqtt: {brokers: ['mqtt://127.0.0.1:1883']}}\n"
        "devices:\n"
        "  - name: p\n"
        "    driver: opcua\n"
        "    endpoint: http://plc\n"
        "    security: {policy: Basic256Sha256, certificate: /a, private_key: /b}\n"
        "    nodes:\n"
        "      - {name: a, node: '2;s=Foo'}\n"
        "      - {name: c}\n")
    done = check(bad)
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        f"{bad}:7:15: devices.0.endpoint: 'http://plc' is not an OPC UA endpoint: write "
        "opc.tcp://HOST:PORT (4840 is the usual port)",
        f"{bad}:8:15: devices.0.security: policy Basic256Sha256 needs `trusted:` (the "
        "server's certificate or a directory of trusted ones; see `parkgate opcua cert "
        "URL`), with `trust_on_first_use: true` a directory to keep the first one seen",
        f"{bad}:10:25: devices.0.nodes.0.node: '2;s=Foo' is not a NodeId: write it as "
        "ns=2;s=Line1.Speed, ns=3;i=1001, i=2258 or ns=2;g=<guid>",
        f"{bad}:11:9: devices.0.nodes.1: give the node's `node:` (NodeId) or its `path:` "
        "(browse path), one of the two"]


def test_password_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "opcua-password"
    secret.write_text("s3cret\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "gateway: {id: g, site: s}\nbuffer: {path: /tmp/x.db}\n"
        "uplink: {mqtt: {brokers: ['mqtt://127.0.0.1:1883']}}\n"
        "devices:\n"
        "  - name: p\n    driver: opcua\n    endpoint: opc.tcp://plc:4840\n"
        f"    auth: {{type: username, username: gw, password: '${{file:{secret}}}'}}\n"
        "    nodes: [{name: a, node: 'ns=2;s=A'}]\n")
    loaded = load_config(cfg)
    opts = loaded.config.devices[0]
    assert isinstance(opts, OpcUaOptions) and isinstance(opts.auth, UserAuth)
    assert opts.auth.password.get_secret_value() == "s3cret"
    assert "s3cret" in loaded.secrets
    assert "s3cret" not in repr(opts)


@pytest.mark.parametrize(("code", "expected"), [
    (0x00000000, "good"), (0x00A80000, "good"), (0x40000000, "uncertain"),
    (0x408F0000, "uncertain"), (0x80340000, "bad"), (0xC0000000, "bad")])
def test_quality_by_severity(code: int, expected: str) -> None:
    assert quality(code) == expected


def test_timestamp_source_then_server_then_gateway() -> None:
    src = datetime(2026, 1, 1, tzinfo=UTC)
    srv = datetime(2026, 1, 2, tzinfo=UTC)
    v = ua.Variant(1.0)
    assert timestamp(ua.DataValue(v, SourceTimestamp=src, ServerTimestamp=srv),
                     lambda: 5) == 1767225600000
    assert timestamp(ua.DataValue(v, ServerTimestamp=srv), lambda: 5) == 1767312000000
    assert timestamp(ua.DataValue(v), lambda: 5) == 5


@pytest.mark.parametrize(("variant", "value", "usable"), [
    (ua.Variant(None, ua.VariantType.Null), None, True),
    (ua.Variant(float("nan"), ua.VariantType.Double), None, False),
    (ua.Variant(1.100000023841858, ua.VariantType.Float), 1.1, True),
    (ua.Variant(ua.LocalizedText("Ein"), ua.VariantType.LocalizedText), "Ein", True),
    (ua.Variant([1, 2], ua.VariantType.Int32), "[1,2]", True),
    (ua.Variant(ua.StatusCode(ua.StatusCodes.BadTimeout), ua.VariantType.StatusCode),
     0x800A0000, True),
])
def test_convert(variant: ua.Variant, value: object, usable: bool) -> None:
    assert convert(variant) == (value, usable)


@pytest.mark.parametrize(("value", "vtype", "refusal"), [
    (128, ua.VariantType.SByte, "does not fit SByte"),
    (-1, ua.VariantType.UInt64, "does not fit UInt64"),
    (2**64, ua.VariantType.UInt64, "does not fit UInt64"),
    (True, ua.VariantType.Int32, "not a number"),
    (1e39, ua.VariantType.Float, "does not fit Float"),
    (float("inf"), ua.VariantType.Double, "not a finite number"),
    (5, ua.VariantType.String, "not text"),
    ("12:00", ua.VariantType.DateTime, "not an ISO 8601"),
    ("zz", ua.VariantType.ByteString, "not hex"),
])
def test_encode_refuses_what_does_not_fit(value: object, vtype: ua.VariantType,
                                          refusal: str) -> None:
    with pytest.raises(WriteRefused, match=refusal):
        encode(value, vtype)  # type: ignore[arg-type]


def test_encode_keeps_the_type() -> None:
    assert encode(3.0, ua.VariantType.Int16) == ua.Variant(3, ua.VariantType.Int16)
    assert encode(1, ua.VariantType.Boolean) == ua.Variant(True, ua.VariantType.Boolean)
    assert encode("2026-01-01T00:00:00Z", ua.VariantType.DateTime).Value == \
        datetime(2026, 1, 1, tzinfo=UTC)
