"""Shared fixtures: real brokers on free ports, and the gateways a test starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Collector, GatewayProcess, Mosquitto


@pytest.fixture(scope="session")
def shared_broker() -> Iterator[Mosquitto]:
    """A private broker for tests that do not stop or pause it."""
    b = Mosquitto().start()
    yield b
    b.close()


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A broker of this test's own, free to stop, pause and restart."""
    b = Mosquitto().start()
    yield b
    b.close()


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[Collector]:
    c = Collector(broker.port)
    yield c
    c.close()


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    """`parkgate run` processes a test started (it appends them); none outlives the test."""
    procs: list[GatewayProcess] = []
    yield procs
    for gw in procs:
        gw.kill()
