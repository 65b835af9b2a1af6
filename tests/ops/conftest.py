"""Fixtures for the operations tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import GatewayProcess, Mosquitto

StartGateway = Callable[..., GatewayProcess]


@pytest.fixture
def start_gateway() -> Iterator[StartGateway]:
    """Start `parkgate run -c FILE`; killed and its log handle closed at teardown."""
    started: list[GatewayProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> GatewayProcess:
        gw = GatewayProcess(config, env=env).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.kill()


@pytest.fixture(scope="module")
def ops_broker() -> Iterator[Mosquitto]:
    """A private broker for the tests of one module."""
    b = Mosquitto().start()
    yield b
    b.close()
