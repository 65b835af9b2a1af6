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
        # GatewayProcess keeps its log file open after the process ends.
        logf = getattr(gw, "_logf", None)
        if logf is not None:
            logf.close()


@pytest.fixture(scope="module")
def ops_broker() -> Iterator[Mosquitto]:
    """A private broker; unlike `shared_broker` it closes mosquitto's stderr pipe."""
    b = Mosquitto().start()
    pipe = b.proc.stderr if b.proc else None
    yield b
    b.close()
    if pipe is not None:
        pipe.close()
