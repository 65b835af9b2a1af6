"""GATT characteristic writes, at bleak's backend boundary (the fake GATT client)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from drivers.ble.gatt import decode_value, encode_value
from drivers.ble.options import BleOptions, GattCharacteristic
from gateway.driver import ResourcePool
from gateway.errors import DeviceRejected, VerifyFailed, WriteRefused
from gateway.metrics import Metrics
from gateway.model import Reading
from tests.ble import fakes

from .test_driver import make

CHARS = [
    {"uuid": "2a6e", "metric": "temperature", "type": "int16", "scale": 0.01, "unit": "°C"},
    {"uuid": "ff10", "metric": "setpoint", "type": "int16", "scale": 0.1,
     "write": {"min": 5, "max": 30}},
    {"uuid": "ff11", "metric": "relay", "type": "bool", "write": {}},
    {"uuid": "ff12", "metric": "interval_s", "type": "uint32", "byte_order": "big",
     "write": {"min": 1, "max": 86400}},
    {"uuid": "ff13", "metric": "identify", "type": "uint8", "read": False, "response": False,
     "write": {"values": [1]}},
]
VALUES = {"chars": {"2a6e": "3408", "ff10": "d200", "ff11": "00", "ff12": "0000003c"},
          "write_only": ["ff13"]}


async def driver(cfg: dict[str, Any] | None = None) -> Any:
    d = make({"name": "t1", "address": "A4:C1:38:00:00:01",
              "gatt": {"characteristics": CHARS, "attempts": 1}, **(cfg or {})},
             ResourcePool(), Metrics())
    await d.open()
    return d


async def test_only_characteristics_with_write_are_writable_and_written(replay: Any) -> None:
    replay([], gatt=VALUES)
    d = await driver()
    try:
        assert set(d.writable()) == {"setpoint", "relay", "interval_s", "identify"}
        assert await d.write("setpoint", 22.5) == 22.5
        assert await d.write("relay", True) is True
        assert await d.write("interval_s", 600) == 600
        assert await d.write("identify", 1) is None  # not readable: nothing to verify
        assert fakes.FakeGattClient.writes == [
            ("0000ff10-0000-1000-8000-00805f9b34fb", "e100", True),
            ("0000ff11-0000-1000-8000-00805f9b34fb", "01", True),
            ("0000ff12-0000-1000-8000-00805f9b34fb", "00000258", True),
            ("0000ff13-0000-1000-8000-00805f9b34fb", "01", False)]
        assert fakes.FakeGattClient.active == 0  # connected for each write, then let go
        readings = {r.metric: r.value for r in await d.read_once()}
        assert readings == {"temperature": 21.0, "setpoint": 22.5, "relay": True,
                            "interval_s": 600}  # identify is write-only: never read
        r = await d.read_point("setpoint")
        assert (r.metric, r.value) == ("setpoint", 22.5)
    finally:
        await d.close()


@pytest.mark.parametrize(("point", "value", "words"), [
    ("temperature", 20, "not a writable characteristic"),
    ("nonesuch", 1, "not a writable characteristic"),
    ("setpoint", 3276.8, "outside int16"),
    ("setpoint", "22", "takes a number"),
    ("relay", 2, "takes true/false or 1/0"),
    ("interval_s", -1, "outside uint32"),
])
async def test_what_cannot_be_encoded_never_connects(replay: Any, point: str, value: Any,
                                                     words: str) -> None:
    replay([], gatt=VALUES)
    d = await driver()
    try:
        with pytest.raises(WriteRefused, match=words):
            await d.write(point, value)
        assert fakes.FakeGattClient.connects == 0
        assert fakes.FakeGattClient.writes == []
    finally:
        await d.close()


async def test_refused_and_ignored_writes(replay: Any) -> None:
    replay([], gatt={**VALUES, "refuse_writes": {"ff10": "[org.bluez.Error.NotPermitted] "
                                                         "Write not permitted"}})
    d = await driver()
    try:
        with pytest.raises(DeviceRejected, match=r"refused the write of .*Write not permitted"):
            await d.write("setpoint", 20)
    finally:
        await d.close()
    replay([], gatt={**VALUES, "ignore_writes": True})
    d = await driver()
    try:
        with pytest.raises(VerifyFailed, match=r"wrote 01 to .*, read back 00"):
            await d.write("relay", True)
    finally:
        await d.close()


async def test_in_notify_mode_a_write_uses_the_open_connection(replay: Any) -> None:
    replay([], gatt={**VALUES, "notify": {"2a6e": ["3408"] * 50}, "notify_interval": 0.05})
    chars = [CHARS[0], {**CHARS[1], "read": False}]
    d = await driver({"min_interval": "0s", "gatt": {"mode": "notify",
                                                    "characteristics": chars}})
    got: list[Reading] = []
    task = asyncio.create_task(d.run(got.extend))
    try:
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        assert await d.write("setpoint", 10) is None  # write-only here: no read-back
        assert fakes.FakeGattClient.connects == 1  # no second connection
        assert fakes.FakeGattClient.writes[-1][1] == "6400"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await d.close()


@pytest.mark.parametrize(("spec", "value"), [
    ({"type": "int16", "scale": 0.01}, -12.34), ({"type": "uint24"}, 0xABCDEF),
    ({"type": "int32", "byte_order": "big", "add": -40}, 12.0),
    ({"type": "float32"}, 1.5), ({"type": "float64", "byte_order": "big"}, -2.25),
    ({"type": "utf8"}, "hello"), ({"type": "hex"}, "01ff"), ({"type": "bool"}, False),
])
def test_encode_is_the_inverse_of_decode(spec: dict[str, Any], value: Any) -> None:
    c = GattCharacteristic.model_validate({"uuid": "ff01", "metric": "x", **spec})
    assert decode_value(encode_value(value, c), c) == value


@pytest.mark.parametrize(("spec", "words"), [
    ({"byte_offset": 2, "write": {}}, "byte_offset must be 0"),
    ({"read": False}, "read: false needs a `write:` block"),
])
def test_writable_options_that_cannot_work(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        BleOptions.model_validate({"name": "x", "driver": "ble", "address": "A4:C1:38:00:00:01",
                                   "gatt": {"characteristics": [
                                       {"uuid": "ff01", "metric": "x", **spec}]}})
