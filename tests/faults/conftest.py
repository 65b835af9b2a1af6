"""Collects one summary row per fault; tests/conftest.py prints the table at the end."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from tests.faults.harness import FAULT_ROW, FaultRow


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[FaultRow], None]:
    """Adds a row to the end-of-session fault table.

    The row travels in the test's report (`user_properties`), so that under pytest-xdist it
    reaches the controller, which prints the table.
    """
    def add(row: FaultRow) -> None:
        request.node.user_properties.append((FAULT_ROW, dataclasses.asdict(row)))

    return add
