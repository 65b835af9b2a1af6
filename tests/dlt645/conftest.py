"""Fixtures for the DL/T 645 driver: a driver context and a meter bus on a pty."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.dlt645_meter import Meter, MeterBus
from emulators.line_sensor import PtyPort

from drivers.dlt645 import Dlt645Driver, Dlt645Options
from gateway.driver import DriverContext
from tests.support import driver_context as make_ctx

A1 = "000012345678"
A2 = "000012345679"


@pytest.fixture
def port(tmp_path: Path) -> Iterator[PtyPort]:
    """The RS-485 adapter: a pty behind tmp/by-id/usb-rs485."""
    p = PtyPort(tmp_path / "by-id" / "usb-rs485")
    yield p
    p.close()


@pytest.fixture
async def bus(port: PtyPort) -> AsyncIterator[MeterBus]:
    """Two live meters on the pty."""
    b = await MeterBus(Meter(A1), Meter(A2, values={0x02010100: 228.6, 0x02800002: 49.98})
                       ).serve_pty(port)
    yield b
    await b.stop()


@pytest.fixture
def make_driver() -> Callable[..., Dlt645Driver]:
    """Build a Dlt645Driver from a config dict."""
    def build(cfg: dict[str, Any], ctx: DriverContext | None = None) -> Dlt645Driver:
        opts = Dlt645Options.model_validate({"name": "m1", "driver": "dlt645", **cfg})
        return Dlt645Driver(opts, ctx or make_ctx(opts.name))

    return build
