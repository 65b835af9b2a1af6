"""Shared fixtures: real brokers on free ports, and the gateways a test starts."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FAULT_ROW, FaultRow, summary_table
from tests.support import Collector, GatewayProcess, Mosquitto

_FAULT_ROWS: list[dict[str, Any]] = []
"""Rows of the fault table (tests/faults), from the reports of every worker."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _FAULT_ROWS.extend(value for key, value in report.user_properties if key == FAULT_ROW)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault table, also with -q and under pytest-xdist."""
    if not _FAULT_ROWS:
        return
    terminalreporter.section("fault injection summary")
    for line in summary_table([FaultRow(**row) for row in _FAULT_ROWS]):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def _run_lock_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """Under pytest-xdist: a directory every worker of this run shares (else None)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    # each worker's basetemp is <run's root>/popen-gwN; the root is this run's own
    return tmp_path_factory.getbasetemp().parent


@contextlib.contextmanager
def _run_lock(folder: Path, alone: bool) -> Iterator[None]:
    """Shared for ordinary tests, exclusive for `alone` ones, across the workers of a run.

    The gate makes it writer-preferring: a test waiting to run alone holds the gate, so no
    new test starts beside it, and it runs once the tests already running have finished.
    """
    with (folder / "alone.gate").open("a") as gate, (folder / "alone.lock").open("a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # closing the file releases the lock


@pytest.fixture(autouse=True)
def _alone_under_xdist(request: pytest.FixtureRequest, _run_lock_dir: Path | None
                       ) -> Iterator[None]:
    """Tests marked `alone` (they measure rates, latency or CPU) run with no test beside them."""
    if _run_lock_dir is None:
        yield
        return
    with _run_lock(_run_lock_dir, request.node.get_closest_marker("alone") is not None):
        yield


@pytest.fixture(scope="session")
def shared_broker() -> Iterator[Mosquitto]:
    """A private broker for tests that do not stop or pause it (one per xdist worker)."""
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
