"""Shared fixtures: real brokers on free ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Collector, Mosquitto


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
