"""Fixtures for the serial driver: a driver context and pty ports behind a by-id symlink."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from emulators.line_sensor import PtyPort

from drivers.serial_line import SerialDriver, SerialOptions
from gateway.driver import DriverContext, ResourcePool
from gateway.metrics import Metrics


def make_ctx(name: str, pool: ResourcePool | None = None,
             metrics: Metrics | None = None) -> DriverContext:
    """A driver context like the supervisor's."""
    return DriverContext(device=name, log=structlog.get_logger().bind(device=name),
                         resources=pool if pool is not None else ResourcePool(),
                         metrics=metrics if metrics is not None else Metrics())


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """Current value of a metric sample, 0 if absent."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


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
