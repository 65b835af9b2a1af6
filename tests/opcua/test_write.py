"""Commands: writes encoded with the node's own variant type, refusals, verify, read_point."""

from __future__ import annotations

import pytest
from asyncua import ua
from emulators.opcua_server import PlantServer

from gateway.errors import DeviceRejected, VerifyFailed, WriteRefused
from gateway.model import Reading
from tests.opcua.conftest import Drivers, node

W: dict[str, object] = {"write": {}}


async def test_writes_with_the_nodes_own_type_and_reads_back(plant: PlantServer,
                                                             drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [
        node("Int16", **W), node("Float", **W), node("Boolean", **W), node("String", **W),
        node("UInt64", **W), node("Double")])
    assert set(drv.writable()) == {"int16", "float", "boolean", "string", "uint64"}
    assert await drv.write("int16", 300) == 300
    assert await drv.write("float", 21.5) == 21.5
    assert await drv.write("boolean", False) is False
    assert await drv.write("string", "stop") == "stop"
    assert await drv.write("uint64", 2**64 - 1) == 2**64 - 1
    dv = await plant.vars["Int16"].read_data_value()
    assert dv.Value.VariantType == ua.VariantType.Int16 and dv.Value.Value == 300
    assert (await plant.vars["Float"].read_data_value()).Value.VariantType == ua.VariantType.Float
    r = await drv.read_point("int16")
    assert (r.metric, r.value, r.quality) == ("int16", 300, "good")


async def test_values_that_do_not_fit_are_refused_and_the_server_keeps_its_value(
        plant: PlantServer, drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [node("Int16", **W), node("Byte", **W),
                                         node("Boolean", **W), node("Double")])
    with pytest.raises(WriteRefused, match=r"40000 does not fit Int16 \(-32768..32767\)"):
        await drv.write("int16", 40000)
    with pytest.raises(WriteRefused, match="not a whole number"):
        await drv.write("int16", 1.5)
    with pytest.raises(WriteRefused, match="does not fit Byte"):
        await drv.write("byte", -1)
    with pytest.raises(WriteRefused, match="not a Boolean"):
        await drv.write("boolean", "yes")
    with pytest.raises(WriteRefused, match="not writable"):
        await drv.write("double", 1.0)
    with pytest.raises(WriteRefused, match="not writable"):
        await drv.write("nope", 1.0)
    assert await plant.get("Int16") == -1234
    assert await plant.get("Byte") == 200
    assert await plant.get("Boolean") is True
    with pytest.raises(WriteRefused, match="no such node"):
        await drv.read_point("nope")


async def test_a_bad_write_status_is_device_rejected(plant: PlantServer,
                                                     drivers: Drivers) -> None:
    await plant.vars["Int32"].set_read_only()
    drv = await drivers.open(plant.url, [node("Int32", **W)])
    with pytest.raises(DeviceRejected) as err:
        await drv.write("int32", 5)
    # asyncua's server answers a read-only node with BadUserAccessDenied
    assert err.value.code == ua.StatusCodes.BadUserAccessDenied
    assert "BadUserAccessDenied (0x801F0000)" in str(err.value)
    assert await plant.get("Int32") == -123456


async def test_verify_fails_when_the_server_holds_something_else(plant: PlantServer,
                                                                 drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [node("Double", write={}),
                                         node("Int32", write={"verify": False})])
    assert await drv.write("int32", 7) is None  # verify off: nothing read back
    assert await plant.get("Int32") == 7
    # the server accepts the write, then its own logic sets another value (a PLC clamping
    # a setpoint) before the read-back
    real = drv.read_point

    async def clamped(point: str) -> Reading:
        await plant.set("Double", 50.0, ua.VariantType.Double)
        return await real(point)

    drv.read_point = clamped  # type: ignore[method-assign]
    with pytest.raises(VerifyFailed, match=r"wrote 70\.0, read back 50\.0"):
        await drv.write("double", 70.0)
