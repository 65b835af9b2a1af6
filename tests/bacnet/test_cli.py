"""`parkgate bacnet discover` and `read` against simulated devices (in a loop thread)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from emulators.bacnet_device import BacnetDevice

from gateway.cli import main
from tests.modbus.conftest import LoopThread

from .conftest import free_udp_port


@pytest.fixture
def devices() -> Iterator[tuple[LoopThread, list[BacnetDevice], int]]:
    """Two devices on 127.0.0.2 and 127.0.0.3 sharing one port, as on a real subnet."""
    lt = LoopThread()
    port = free_udp_port()
    devs = [BacnetDevice(f"127.0.0.2/8:{port}", 2001), BacnetDevice(f"127.0.0.3/8:{port}",
                                                                      2002, rpm=False)]
    try:
        for d in devs:
            lt.run(d.start())
        yield lt, devs, port
    finally:
        for d in devs:
            lt.run(d.stop())
        lt.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["bacnet", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def local(port: int | None = None) -> list[str]:
    return ["--address", "127.0.0.1", "--port", str(port or free_udp_port())]


def test_discover_by_broadcast_finds_both_devices(devices: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _lt, _devs, port = devices
    code, doc, _ = run(capsys, "discover", *local(), "--to", f"127.255.255.255:{port}",
                       "--wait", "700ms")
    assert code == 0
    found = {d["device_id"]: d for d in doc["devices"]}
    assert set(found) == {2001, 2002}
    assert found[2001]["address"] == f"127.0.0.2:{port}"
    assert found[2002]["vendor_id"] == 999


def test_discover_with_a_range(devices: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _lt, _devs, port = devices
    code, doc, _ = run(capsys, "discover", *local(), "--to", f"127.255.255.255:{port}",
                       "--low", "2002", "--high", "2100", "--wait", "500ms")
    assert code == 0
    assert [d["device_id"] for d in doc["devices"]] == [2002]


def test_discover_nobody_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run(capsys, "discover", *local(), "--to", f"127.0.0.1:{free_udp_port()}",
                       "--wait", "300ms")
    assert code == 1
    assert doc == {"devices": []}


def test_read_defaults_and_named_properties(devices: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _lt, _devs, port = devices
    code, doc, _ = run(capsys, "read", *local(), f"127.0.0.2:{port}", "analog-input,1")
    assert code == 0
    assert doc["values"] == {"present-value": 21.5, "status-flags": [0, 0, 0, 0],
                             "units": "degrees-celsius"}
    code, doc, _ = run(capsys, "read", *local(), f"127.0.0.3:{port}", "multi-state-value,6",
                       "present-value", "number-of-states", "object-name")
    assert code == 0
    assert doc["values"] == {"present-value": 2, "number-of-states": 3, "object-name": "mode"}


def test_read_unknown_object_reports_the_device_error(devices: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _lt, _devs, port = devices
    code, doc, _ = run(capsys, "read", *local(), f"127.0.0.2:{port}", "analog-input,99")
    assert code == 1
    assert doc["errors"]["present-value"] == "unknown-object"


def test_read_silent_device_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, _doc, err = run(capsys, "read", *local(), f"127.0.0.1:{free_udp_port()}",
                          "analog-input,1", "--timeout", "200ms")
    assert code == 1
    assert "no answer" in err
    code, _doc, err = run(capsys, "read", *local(), "127.0.0.1", "analog-inputs,1")
    assert code == 1
    assert "unknown object type" in err
    port = free_udp_port()
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        code, _doc, err = run(capsys, "discover", *local(port), "--wait", "100ms")
    assert code == 1
    assert "cannot bind" in err


def test_discover_through_a_bbmd_as_foreign_device(devices: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway is not on the devices' broadcast domain (another port stands in for
    another subnet): it registers with their BBMD, whose broadcast reaches them."""
    lt, _devs, port = devices
    bbmd = BacnetDevice(f"127.0.0.4/8:{port}", 2999, bbmd=True)
    lt.run(bbmd.start())
    try:
        code, doc, err = run(capsys, "discover", *local(), "--bbmd", f"127.0.0.4:{port}",
                             "--wait", "1s")
        assert code == 0, err
        assert {d["device_id"] for d in doc["devices"]} >= {2001, 2002}
    finally:
        lt.run(bbmd.stop())


def test_read_from_any_free_port(devices: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`--port 0` when the agent holds 47808: devices answer the sender's port."""
    _lt, _devs, port = devices
    code, doc, err = run(capsys, "read", "--address", "127.0.0.1", "--port", "0",
                         f"127.0.0.3:{port}", "binary-output,5")
    assert code == 0, err
    assert doc["values"] == {"present-value": True, "status-flags": [0, 0, 0, 0]}


def test_read_the_device_object_lists_what_to_configure(
        devices: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _lt, _devs, port = devices
    code, doc, err = run(capsys, "read", *local(), f"127.0.0.2:{port}", "device,2001")
    assert code == 0, err
    assert doc["values"]["object-name"] == "sim-2001"
    assert doc["values"]["vendor-name"] == "BACpypes"
    assert set(doc["values"]) == {"object-name", "vendor-name", "model-name",
                                  "firmware-revision", "object-list"}
    assert set(doc["values"]["object-list"]) == {
        "device,2001", "analog-input,1", "analog-value,2", "analog-output,3",
        "binary-value,4", "binary-output,5", "multi-state-value,6"}


def test_read_priority_array_and_a_bad_property_name(
        devices: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _lt, devs, port = devices
    from bacpypes3.basetypes import PriorityValue

    devs[0].obj("analog-value,2").priorityArray[7] = PriorityValue(real=23.0)
    code, doc, err = run(capsys, "read", *local(), f"127.0.0.2:{port}", "analog-value,2",
                         "priority-array", "relinquish-default")
    assert code == 0, err
    assert doc["values"]["priority-array"] == [None] * 7 + [23.0] + [None] * 8
    assert doc["values"]["relinquish-default"] == 18.0
    code, _doc, err = run(capsys, "read", *local(), f"127.0.0.2:{port}", "analog-value,2",
                          "presentvalue")
    assert code == 1
    assert "'presentvalue' is not a BACnet property name" in err
