"""The pure rules of the BACnet driver, as tables: object refs, quality, units, encoding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from drivers.bacnet.objects import ObjectRef, encode, quality_of, same, unit_of
from gateway.errors import WriteRefused

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "ref"), [
    ("analog-input,1", ObjectRef("analog-input", 1)),
    ("Analog-Value:22", ObjectRef("analog-value", 22)),
    (" multi-state-value , 3 ", ObjectRef("multi-state-value", 3)),
    ("binary-output,4194302", ObjectRef("binary-output", 4194302)),
])
def test_object_refs(text: str, ref: ObjectRef) -> None:
    assert ObjectRef.parse(text) == ref
    assert str(ref) == f"{ref.type},{ref.instance}"


@pytest.mark.parametrize(("text", "message"), [
    ("analog-input", "TYPE,INSTANCE"), ("ai,1", "unknown object type"),
    ("analog-input,-1", "TYPE,INSTANCE"), ("analog-input,4194303", "above"),
    ("device,1", "unknown object type"),
])
def test_bad_object_refs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ObjectRef.parse(text)


@pytest.mark.parametrize(("flags", "reliability", "quality"), [
    ([0, 0, 0, 0], "no-fault-detected", "good"),
    ([0, 0, 0, 0], None, "good"),
    (None, None, "good"),
    ([1, 0, 0, 0], None, "good"),            # in-alarm: a real value, alarming
    ([0, 0, 1, 0], None, "good"),            # overridden by a hand switch: still measured
    ([0, 0, 0, 1], None, "uncertain"),       # out-of-service: set by hand
    ([0, 1, 0, 0], None, "bad"),             # fault
    ([0, 1, 0, 1], None, "bad"),
    ([0, 0, 0, 0], "open-loop", "bad"),      # reliability alone
    ([0, 0, 0, 0], "over-range", "bad"),
    ([1], None, "good"),                     # short bit strings are padded
])
def test_quality(flags: list[int] | None, reliability: str | None, quality: str) -> None:
    assert quality_of(flags, reliability) == quality


@pytest.mark.parametrize(("name", "unit"), [
    ("degreesCelsius", "°C"), ("percentRelativeHumidity", "%RH"), ("kilowattHours", "kWh"),
    ("cubicMetersPerHour", "m3/h"), ("noUnits", None), (None, None),
    ("someVendorUnit", "someVendorUnit"),
])
def test_units(name: str | None, unit: str | None) -> None:
    assert unit_of(name) == unit


@pytest.mark.parametrize(("kind", "value", "states", "encoded"), [
    ("analog", 21.5, None, 21.5), ("analog", 3, None, 3.0), ("analog", -1e30, None, -1e30),
    ("binary", True, None, "active"), ("binary", False, None, "inactive"),
    ("binary", 1, None, "active"), ("binary", 0, None, "inactive"),
    ("binary", "active", None, "active"),
    ("multistate", 1, 3, 1), ("multistate", 3, 3, 3), ("multistate", 2.0, None, 2),
    ("integer", -5, None, -5), ("unsigned", 7, None, 7),
])
def test_encode(kind: str, value: object, states: int | None, encoded: object) -> None:
    assert encode(kind, value, states=states) == encoded  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "value", "states"), [
    ("analog", "21", None), ("analog", True, None), ("analog", math.inf, None),
    ("analog", 1e39, None), ("binary", 2, None), ("binary", "on", None),
    ("binary", 0.5, None), ("multistate", 0, None), ("multistate", 4, 3),
    ("multistate", 1.5, None), ("multistate", True, None), ("integer", 2**31, None),
    ("unsigned", -1, None), ("unsigned", "1", None),
])
def test_encode_refuses(kind: str, value: object, states: int | None) -> None:
    with pytest.raises(WriteRefused):
        encode(kind, value, states=states)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "written", "read", "equal"), [
    ("analog", 21.1, 21.100000381469727, True),   # REAL is float32 on the wire
    ("analog", 21.1, 21.2, False), ("analog", 1.0, True, False),
    ("binary", "active", True, True), ("binary", "inactive", True, False),
    ("multistate", 2, 2, True), ("multistate", 2, 3, False),
])
def test_same(kind: str, written: object, read: object, equal: bool) -> None:
    assert same(kind, written, read) is equal  # type: ignore[arg-type]


def test_the_sample_config_checks() -> None:
    from gateway.config import load_config

    loaded = load_config(ROOT / "drivers/bacnet/sample.yaml")
    devices = {d.name: d for d in loaded.config.devices}
    assert set(devices) == {"ahu-1", "chiller-plant", "vav-3-12"}
    assert devices["vav-3-12"].address == "3001:12"  # type: ignore[attr-defined]
    ahu = devices["ahu-1"]
    chiller = devices["chiller-plant"]
    assert ahu.network == chiller.network  # type: ignore[attr-defined]
    assert ahu.network.foreign.bbmd == "10.30.1.2:47808"  # type: ignore[attr-defined]
    assert ahu.address == "192.168.20.31:47808"  # type: ignore[attr-defined]
    writable = {o.name: o for o in ahu.objects if o.write}  # type: ignore[attr-defined]
    assert set(writable) == {"supply_temp_setpoint", "fan_enable", "mode"}
    assert writable["fan_enable"].priority == 9


def test_the_sample_through_parkgate_check(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["check", str(ROOT / "drivers/bacnet/sample.yaml")]) == 0
    assert "3 device(s): bacnet" in capsys.readouterr().out


def test_config_mistakes_come_back_with_their_place(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "gateway: {id: gw, site: s}\n"
        "buffer: {path: /tmp/x.db}\n"
        "uplink: {mqtt: {brokers: ['mqtt://127.0.0.1:1883']}}\n"
        "devices:\n"
        "  - name: a\n"
        "    driver: bacnet\n"
        "    address: 192.168.20.300\n"
        "    objects:\n"
        "      - {name: t, object: 'analog-inputs,1'}\n"
        "      - {name: u, object: 'analog-input,1', write: {}}\n")
    assert main(["check", str(cfg)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{cfg}:7:14: devices.0.address: '192.168.20.300'")
    assert out[1].startswith(f"{cfg}:9:27: devices.0.objects.0.object: 'analog-inputs,1': "
                             "unknown object type")
    assert out[2].startswith(f"{cfg}:10:9: devices.0.objects.1: write: analog-input objects "
                             "are not commandable")


def test_checking_a_config_does_not_load_the_protocol_stack() -> None:
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from gateway.config import load_config; "
            f"load_config(Path({str(ROOT / 'drivers/bacnet/sample.yaml')!r})); "
            "print('bacpypes3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_a_gateway_without_the_bacnet_extra_is_told_how_to_get_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from drivers.bacnet import options
    from gateway.cli import main

    monkeypatch.setattr(options, "stack_installed", lambda: False)
    assert main(["check", str(ROOT / "drivers/bacnet/sample.yaml")]) == 2
    out = capsys.readouterr().out
    assert "sample.yaml:15:5: devices.0: the BACnet driver needs bacpypes3" in out
    assert "pip install 'parkgate[bacnet]'" in out
    assert main(["bacnet", "discover", "--port", "0", "--wait", "10ms"]) == 1
    assert "pip install 'parkgate[bacnet]'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "normal"), [
    ("192.168.20.31", "192.168.20.31:47808"), ("192.168.20.31:47809", "192.168.20.31:47809"),
    ("2001:10.30.1.20", "2001:10.30.1.20:47808"), ("2001:10.30.1.20:47810",
                                                   "2001:10.30.1.20:47810"),
    ("3001:12", "3001:12"), ("3001:0", "3001:0"),
])
def test_device_addresses(text: str, normal: str) -> None:
    from drivers.bacnet.options import device_address, is_routed

    assert device_address(text) == normal
    assert is_routed(normal) == text.partition(":")[0].isdigit()


@pytest.mark.parametrize(("text", "message"), [
    ("3001:255", "MS/TP MAC address is 0..254"), ("0:5", "outside 1..65534"),
    ("65535:1", "outside 1..65534"), ("boiler", "NET:MAC for MS/TP"),
    ("10.0.0.300", "NET:IP"), ("2001:10.0.0.1:0", "port 0 is outside"),
])
def test_bad_device_addresses(text: str, message: str) -> None:
    from drivers.bacnet.options import device_address

    with pytest.raises(ValueError, match=message):
        device_address(text)


def test_a_routed_device_needs_a_broadcast_to_find_its_router() -> None:
    from pydantic import ValidationError

    from drivers.bacnet import BacnetOptions

    doc = {"name": "vav", "driver": "bacnet", "address": "3001:12",
           "objects": [{"name": "t", "object": "analog-input,1"}]}
    with pytest.raises(ValidationError, match=r"give network\.address with its /PREFIX"):
        BacnetOptions.model_validate(doc)
    ok = BacnetOptions.model_validate({**doc, "network": {"address": "192.168.20.5/24"}})
    assert ok.address == "3001:12"
