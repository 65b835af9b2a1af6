"""Writes through `Commandable.write()`: priority, relinquish, encoding, refusals, read-back."""

from __future__ import annotations

import pytest

from gateway.errors import DeviceRejected, VerifyFailed, WriteRefused

from .conftest import Rig


def slot(dev: object, ref: str, priority: int) -> object:
    """What the device holds at `priority` (1-based) of the object's priority array."""
    pv = dev.obj(ref).priorityArray[priority - 1]  # type: ignore[attr-defined]
    for name in ("real", "enumerated", "unsigned", "integer", "null"):
        value = getattr(pv, name, None)
        if value is not None:
            return None if name == "null" else value
    return None


async def test_writable_lists_only_objects_with_a_write_block(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    assert set(d.writable()) == {"setpoint", "valve", "enable", "pump", "mode"}
    assert d.writable()["setpoint"].max == 30
    with pytest.raises(WriteRefused):
        await d.write("supply_temp", 1.0)


async def test_analog_write_at_default_priority_then_relinquish(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    back = await d.write("setpoint", 22.5)
    assert back == 22.5
    assert slot(dev, "analog-value,2", 8) == 22.5
    assert dev.obj("analog-value,2").presentValue == 22.5
    back = await d.write("setpoint", None)  # relinquish priority 8
    assert back == 18.0, "relinquish-default once no priority holds a value"
    assert slot(dev, "analog-value,2", 8) is None


async def test_configured_priority_is_used(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    assert await d.write("valve", 55.0) == 55.0
    assert slot(dev, "analog-output,3", 10) == 55.0
    assert slot(dev, "analog-output,3", 8) is None


async def test_binary_and_multistate_encoding(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    assert await d.write("enable", True) is True
    assert str(dev.obj("binary-value,4").presentValue) == "active"
    assert await d.write("pump", "inactive") is False
    assert await d.write("pump", 1) is True
    assert await d.write("mode", 3) == 3
    assert dev.obj("multi-state-value,6").presentValue == 3


@pytest.mark.parametrize(("point", "value"), [
    ("setpoint", "warm"), ("setpoint", True), ("setpoint", float("nan")),
    ("enable", 2), ("enable", "on"), ("mode", 0), ("mode", 4), ("mode", 1.5),
])
async def test_values_that_do_not_fit_are_refused_before_the_device(
        rig: Rig, point: str, value: object) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    before = rig.sample("parkgate_bacnet_requests_total", device="ahu", service="write")
    with pytest.raises(WriteRefused):
        await d.write(point, value)  # type: ignore[arg-type]
    assert rig.sample("parkgate_bacnet_requests_total", device="ahu", service="write") == before


async def test_higher_priority_in_control_fails_verification(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    from bacpypes3.basetypes import PriorityValue

    dev.obj("analog-value,2").priorityArray[2] = PriorityValue(real=12.0)  # priority 3
    with pytest.raises(VerifyFailed, match="higher priority"):
        await d.write("setpoint", 25.0)
    assert slot(dev, "analog-value,2", 8) == 25.0


async def test_device_error_becomes_device_rejected_with_its_code(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    dev.delete("analog-output,3")
    with pytest.raises(DeviceRejected) as err:
        await d.write("valve", 10.0)
    assert "unknown-object" in str(err.value)
    assert err.value.code == 31  # BACnet error code unknown-object


async def test_read_point(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    r = await d.read_point("supply_temp")
    assert (r.value, r.unit, r.quality) == (21.5, "°C", "good")
    with pytest.raises(WriteRefused):
        await d.read_point("nope")
