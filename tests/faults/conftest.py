"""Collects one summary row per fault and prints the table at the end of the session."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.harness import FaultRow

ROWS: list[FaultRow] = []


@pytest.fixture
def report() -> Callable[[FaultRow], None]:
    """Adds a row to the end-of-session fault table."""
    return ROWS.append


def _fmt(row: FaultRow) -> list[str]:
    rec = "-" if row.recover_s is None else f"{row.recover_s:.1f}"
    dups = str(row.duplicates)
    if row.duplicate_bound is not None:
        dups += f" (<= {row.duplicate_bound})"
    return [row.fault, str(row.injections), str(row.issued), str(row.lost),
            dups, rec, row.stayed_up, row.notes]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault table, also with -q."""
    if not ROWS:
        return
    head = ["fault", "injected", "issued", "lost", "dups (bound)", "recover s (max)", "up", "notes"]
    table = [head, *(_fmt(r) for r in ROWS)]
    widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]
    terminalreporter.section("fault injection summary")
    for r in table:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        terminalreporter.write_line(" | ".join([*cells, r[-1]]))
