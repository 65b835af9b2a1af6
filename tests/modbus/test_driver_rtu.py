"""The driver on an RTU bus: a pty null-modem line to the emulator's serial server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from emulators.modbus_meter import MeterEmulator, SerialLine

from gateway.errors import TransientError

from .conftest import Rig


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[SerialLine]:
    ln = SerialLine(tmp_path / "by-id")
    yield ln
    ln.close()


def rtu(line: SerialLine, **extra: Any) -> dict[str, Any]:
    return {"type": "rtu", "port": line.device_path, "baudrate": 9600, "parity": "N",
            "delay": "5ms", **extra}


async def serve(line: SerialLine, units: list[int], **kw: Any) -> MeterEmulator:
    emu = MeterEmulator("eastron-sdm120", units, **kw)
    await emu.start_rtu(line.server_path)
    return emu


async def test_meters_on_one_serial_bus_share_one_port(rig: Rig, line: SerialLine) -> None:
    emu = await serve(line, [1, 2], values={"voltage": 229.5, "frequency": 49.98})
    try:
        ds = [await rig.driver(f"m{u}", transport=rtu(line), unit=u, profile="eastron-sdm120")
              for u in (1, 2)]
        assert len(rig.pool) == 2  # one port, and the decoders the meters share
        for rs in await asyncio.gather(*(d.poll() for d in ds)):
            got = {r.metric: r.value for r in rs}
            assert (got["voltage"], got["frequency"]) == (229.5, 49.98)
            assert len(got) == 14
        assert rig.sample("parkgate_modbus_link_up", bus=f"rtu:{line.device_path}") == 1
    finally:
        await emu.stop()


async def timed_poll_loop(d: Any, interval: float, start: float, until: float,
                          out: list[tuple[bool, float]]) -> None:
    """Polls like the supervisor from `start` on, recording (succeeded, seconds it took).

    Ticks on the monotonic clock; a poll that overruns its tick skips the ticks missed.
    """
    loop = asyncio.get_running_loop()
    deadline = start
    await asyncio.sleep(max(0.0, deadline - loop.time()))
    while deadline < until:
        t0 = loop.time()
        try:
            await d.poll()
            out.append((True, loop.time() - t0))
        except TransientError:
            out.append((False, loop.time() - t0))
        deadline += interval
        now = loop.time()
        if now > deadline:
            deadline += ((now - deadline) // interval + 1) * interval
        await asyncio.sleep(deadline - now)


@pytest.mark.alone  # poll latency behind a dead unit
async def test_a_dead_meter_costs_the_bus_only_its_timeout(rig: Rig, line: SerialLine) -> None:
    """A unit that never answers holds the shared bus for its request timeout, no longer.

    A pty has no baud-rate timing, so counting polls proves little: the live meters' polls
    are timed directly. Each tick the dead unit asks first and the live meters queue
    behind it (5 ms later), so each live poll takes the dead unit's hold of the bus plus
    the live transactions, measured alone beforehand. The interval leaves no slack either:
    a hold beyond ~1.2x the timeout makes the live polls too long and skips ticks.
    """
    emu = await serve(line, [1, 2])  # unit 3 is wired but dead
    try:
        timeout, delay = 0.25, 0.005
        common = {"transport": rtu(line), "profile": "eastron-sdm120", "only": ["voltage",
                  "current", "power"], "request_timeout": f"{timeout}s", "retries": 0}
        ds = {u: await rig.driver(f"m{u}", unit=u, **common) for u in (1, 2, 3)}
        loop = asyncio.get_running_loop()
        own = 0.0  # one live poll alone, the worst of a few
        for _ in range(4):
            for u in (1, 2):
                t0 = loop.time()
                await ds[u].poll()
                own = max(own, loop.time() - t0)
        # the dead unit's hold (at most 1.2x its timeout), then both live meters
        allowed = 1.2 * timeout + 2 * (own + delay)
        interval, ticks = allowed, 10
        start = loop.time() + 0.05
        until = start + ticks * interval - 0.01
        results: dict[int, list[tuple[bool, float]]] = {u: [] for u in ds}
        await asyncio.gather(*(timed_poll_loop(d, interval, start + (0.0 if u == 3 else 0.005),
                                               until, results[u])
                               for u, d in ds.items()))
        assert not any(ok for ok, _ in results[3])
        for u in (1, 2):  # the live meters keep every tick and never fail
            assert all(ok for ok, _ in results[u]), results
            took = max(t for _, t in results[u])
            assert took <= allowed, (
                f"m{u}: a poll took {took * 1000:.0f} ms behind a dead unit with a "
                f"{timeout * 1000:.0f} ms timeout (a live poll alone: {own * 1000:.0f} ms)")
            assert len(results[u]) == ticks, results
        assert rig.sample("parkgate_modbus_request_errors_total", device="m3",
                          kind="timeout") == len(results[3])
    finally:
        await emu.stop()


async def test_garbage_on_the_line_is_survived_and_counted(rig: Rig, line: SerialLine) -> None:
    emu = await serve(line, [1], values={"voltage": 230.0})
    bus = f"rtu:{line.device_path}"
    try:
        d = await rig.driver(transport=rtu(line), profile="eastron-sdm120",
                             request_timeout="200ms", retries=1)
        assert {r.metric: r.value for r in await d.poll()}["voltage"] == 230.0
        rng = __import__("random").Random(7)
        for _ in range(8):  # noise between polls: counted, then cleared by the next request
            line.inject(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
            await asyncio.sleep(0.02)
            assert {r.metric: r.value for r in await d.poll()}["voltage"] == 230.0
        assert rig.sample("parkgate_modbus_garbage_total", bus=bus) >= 8
    finally:
        await emu.stop()


async def test_crc_errors_are_retried_then_reported(rig: Rig, line: SerialLine) -> None:
    emu = await serve(line, [1], values={"voltage": 230.0})
    try:
        d = await rig.driver(transport=rtu(line), profile="eastron-sdm120",
                             request_timeout="200ms", retries=1)
        emu.corrupt_next = 1
        assert {r.metric: r.value for r in await d.poll()}["voltage"] == 230.0
        assert rig.sample("parkgate_modbus_request_errors_total", device="m1",
                          kind="crc") == 1
        emu.corrupt_next = 2
        with pytest.raises(TransientError, match=r"garbled answer for input 0\.\.37") as info:
            await d.poll()
        assert info.value.kind == "crc"
        assert rig.sample("parkgate_modbus_request_errors_total", device="m1",
                          kind="crc") == 3
        assert {r.metric: r.value for r in await d.poll()}["voltage"] == 230.0
    finally:
        await emu.stop()


NASTY_NOISE = bytes.fromhex(
    "ca2917dc92e6519ce460e983cece04dea698151dc5cbbb51fba0e01ed933ccccbb91224fae6b8e2ec60a1be0"
    "da302fdb2b9203ef4bfb7337cb28f6597d01bf1e")


async def test_noise_towards_the_meters_too(rig: Rig, line: SerialLine) -> None:
    emu = await serve(line, [1], values={"voltage": 230.0})
    try:
        d = await rig.driver(transport=rtu(line), profile="eastron-sdm120",
                             request_timeout="200ms", retries=2)
        # a burst once drawn from os.urandom: from its 2nd byte it reads as the start of a
        # 144-byte Read/Write Multiple Registers request; a meter resyncs by the pause
        line.inject(NASTY_NOISE + os.urandom(16), to="both")
        await asyncio.sleep(0.3)
        for _ in range(3):
            assert {r.metric: r.value for r in await d.poll()}["voltage"] == 230.0
    finally:
        await emu.stop()


async def test_usb_adapter_unplugged_and_plugged_back(rig: Rig, line: SerialLine) -> None:
    emu = await serve(line, [1], values={"voltage": 230.0})
    bus = f"rtu:{line.device_path}"
    try:
        d = await rig.driver(transport=rtu(line, reconnect_max="300ms"),
                             profile="eastron-sdm120", request_timeout="200ms", retries=0)
        assert {r.metric: r.value for r in await d.poll()}["voltage"] == 230.0
        line.unplug()
        await asyncio.sleep(0.05)
        for _ in range(3):
            with pytest.raises(TransientError) as info:
                await d.poll()
            assert info.value.kind == "disconnected"
            await asyncio.sleep(0.1)
        assert rig.sample("parkgate_modbus_link_up", bus=bus) == 0
        line.replug()
        for _ in range(30):
            try:
                got = {r.metric: r.value for r in await d.poll()}
                break
            except TransientError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("never reopened the port")
        assert got["voltage"] == 230.0
        assert rig.sample("parkgate_modbus_reconnects_total", bus=bus) == 1
    finally:
        await emu.stop()
