"""pymodbus's own log records are dropped for our links only, not for the whole process."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pymodbus.logging import Log

from drivers.modbus.transport import Bus, LinkSettings
from gateway.errors import DeviceError


async def _garbage_server(done: asyncio.Event) -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(256):
            writer.write(b"\xff" * 12)  # protocol id 0xffff: pymodbus logs it at error level
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_bus_leaves_the_pymodbus_level_alone_and_quiets_only_its_own_links(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("pymodbus.logging")
    level = logger.level
    caplog.set_level(logging.DEBUG, logger="pymodbus.logging")
    done = asyncio.Event()
    server, port = await _garbage_server(done)
    bus = Bus(LinkSettings("tcp", "127.0.0.1", port=port))
    try:
        assert logger.level == logging.DEBUG  # what the test set, not CRITICAL
        with pytest.raises(DeviceError):
            await bus.read(1, "holding", 0, 1, reply_timeout=0.3)
        ours = [r for r in caplog.records if r.name == "pymodbus.logging"
                and r.levelno >= logging.WARNING]
        assert ours == []
        Log.error("someone else's pymodbus client: {}", "lost")  # not inside a Bus request
        theirs = [r.getMessage() for r in caplog.records if r.name == "pymodbus.logging"]
        assert any("someone else's pymodbus client: lost" in m for m in theirs)
    finally:
        await bus.aclose()
        await asyncio.wait_for(done.wait(), 5)
        server.close()
        await server.wait_closed()
    assert logging.getLogger("pymodbus.logging").level == logging.DEBUG
    logger.setLevel(level)
