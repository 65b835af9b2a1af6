"""Polled reads against a real asyncua server: every scalar type, statuses, timestamps."""

from __future__ import annotations

from asyncua.common.callback import CallbackType, ServerItemCallback
from emulators.opcua_server import SOURCE_TS, PlantServer

from tests.opcua.conftest import Drivers, node


async def test_every_scalar_type_in_one_read(plant: PlantServer, drivers: Drivers) -> None:
    names = ["Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64",
             "UInt64", "Float", "Double", "String", "DateTime", "ByteString"]
    drv = await drivers.open(plant.url, [node(n, unit="u") for n in names]
                             + [{"name": "by_path", "path": "2:Plant/2:Double"}])
    readings = {r.metric: r for r in await drv.poll()}  # type: ignore[attr-defined]
    assert {k: r.value for k, r in readings.items()} == {
        "boolean": True, "sbyte": -5, "byte": 200, "int16": -1234, "uint16": 54321,
        "int32": -123456, "uint32": 4_000_000_000, "int64": -(2**40), "uint64": 2**63 + 5,
        "float": 1.2, "double": 2.5, "string": "läuft",
        "datetime": "2026-11-30T08:00:00.123Z", "bytestring": "01ab", "by_path": 2.5}
    assert all(r.quality == "good" and r.device == "plc" for r in readings.values())
    assert readings["int16"].unit == "u"
    assert isinstance(readings["boolean"].value, bool)


async def test_status_maps_to_quality_and_source_timestamp_to_ts(
        plant: PlantServer, drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [node("Broken"), node("Shaky"), node("Double")])
    got = {r.metric: r for r in await drv.poll()}  # type: ignore[attr-defined]
    assert (got["broken"].value, got["broken"].quality) == (None, "bad")
    assert (got["shaky"].value, got["shaky"].quality) == (3.0, "uncertain")
    assert got["shaky"].ts == int(SOURCE_TS.timestamp() * 1000)
    assert got["double"].quality == "good"


async def test_one_read_call_per_poll_unless_the_server_needs_smaller_ones(
        plant: PlantServer, drivers: Drivers) -> None:
    assert plant.server is not None
    reads: list[int] = []

    def count(event: ServerItemCallback, _dispatcher: object) -> None:
        if event.is_external:  # the clients' Reads, not the server's own
            reads.append(len(event.request_params.NodesToRead))

    plant.server.subscribe_server_callback(CallbackType.PreRead, count)
    names = ["Boolean", "Int16", "Int32", "Float", "Double"]
    drv = await drivers.open(plant.url, [node(n) for n in names], keepalive="60s")
    reads.clear()
    for _ in range(3):
        assert len(await drv.poll()) == 5  # type: ignore[attr-defined]
    assert reads == [5, 5, 5]
    small = await drivers.open(plant.url, [node(n) for n in names], name="small",
                               max_nodes_per_read=2, keepalive="60s")
    reads.clear()
    got = await small.poll()  # type: ignore[attr-defined]
    assert reads == [2, 2, 1]
    assert [r.metric for r in got] == [n.lower() for n in names]
    assert all(r.quality == "good" for r in got)
