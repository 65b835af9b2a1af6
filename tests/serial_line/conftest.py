"""Fixtures for the serial driver: a driver context and pty ports behind a by-id symlink."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.line_sensor import PtyPort

from drivers.serial_line import SerialDriver, SerialOptions
from gateway.driver import DriverContext
from tests.support import driver_context as make_ctx


@pytest.fixture
def port(tmp_path: Path) -> Iterator[PtyPort]:
    """A pty reachable as tmp/by-id/usb-sensor, like /dev/serial/by-id/..."""
    p = PtyPort(tmp_path / "by-id" / "usb-sensor")
    yield p
    p.close()


@pytest.fixture
def make_driver() -> Callable[..., SerialDriver]:
    """Build a SerialDriver from a config dict."""
    def build(cfg: dict[str, Any], ctx: DriverContext | None = None) -> SerialDriver:
        opts = SerialOptions.model_validate({"name": "s1", "driver": "serial", **cfg})
        return SerialDriver(opts, ctx or make_ctx(opts.name))

    return build
