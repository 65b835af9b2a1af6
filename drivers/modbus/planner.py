"""Read planning: the fewest reads that cover a set of points, within the device's limits.

Greedy per table in address order: a point joins the current read while the read stays
within `max_registers` (2000 bits for coils and discrete inputs), the hole it bridges is at
most `max_gap` registers, and no learned boundary lies between. Greedy is optimal here:
any feasible plan's reads are runs of consecutive points, and extending each run as far as
the limits allow never needs more runs.

Two kinds of learned boundaries come from failed reads (see the driver):

* `isolated`: (table, address) of registers the device rejects; each is read alone and
  no read bridges over it;
* `cuts`: (table, address) of points that must start a new read, because a read that
  bridged the gap before them was rejected although both sides read fine alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

from .registermap import BIT_TABLES, Point, Table

MAX_BITS = 2000


@dataclass(frozen=True, slots=True)
class Read:
    """One request: `count` registers (or bits) of `table` from `start`, and what it holds."""

    table: Table
    start: int
    count: int
    points: tuple[Point, ...]

    def describe(self) -> str:
        """`holding 100..101` style location for messages."""
        last = self.start + self.count - 1
        return f"{self.table} {self.start}" + (f"..{last}" if last != self.start else "")


def covering(points: Iterable[Point]) -> Read:
    """The single read spanning `points` (all of one table)."""
    pts = tuple(sorted(points, key=lambda p: (p.address, p.width)))
    start = pts[0].address
    end = max(p.end for p in pts)
    return Read(pts[0].table, start, end - start, pts)


def plan(points: Iterable[Point], *, max_registers: int, max_gap: int,
         isolated: Set[tuple[str, int]] = frozenset(),
         cuts: Set[tuple[str, int]] = frozenset()) -> list[Read]:
    """Reads covering `points`, fewest first-fit; see the module docstring."""
    by_table: dict[Table, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    reads: list[Read] = []
    for table in sorted(by_table):
        bits = table in BIT_TABLES
        reads += _plan_table(table, by_table[table], limit=MAX_BITS if bits else max_registers,
                             gap=max_gap * 16 if bits else max_gap, isolated=isolated,
                             cuts=cuts)
    return reads


def _plan_table(table: Table, points: list[Point], *, limit: int, gap: int,
                isolated: Set[tuple[str, int]], cuts: Set[tuple[str, int]]) -> list[Read]:
    reads: list[Read] = []
    current: list[Point] = []  # the read being extended
    alone: list[Point] = []  # points of one rejected register, read on their own
    start = end = 0
    for p in sorted(points, key=lambda p: (p.address, p.width)):
        rejected = (table, p.address) in isolated
        joins_alone = rejected and bool(alone) and alone[0].address == p.address
        joins_current = (not rejected and bool(current) and p.address - end <= gap
                         and max(end, p.end) - start <= limit and (table, p.address) not in cuts)
        if not joins_alone and not joins_current:
            if current:
                reads.append(Read(table, start, end - start, tuple(current)))
                current = []
            if alone:
                reads.append(covering(alone))
                alone = []
        if rejected:
            alone.append(p)
        elif current:
            current.append(p)
            end = max(end, p.end)
        else:
            current = [p]
            start, end = p.address, p.end
    if current:
        reads.append(Read(table, start, end - start, tuple(current)))
    if alone:
        reads.append(covering(alone))
    return reads
