"""Gaps in a gateway's seqs: which are missing, which the agent dropped on purpose.

The table is the set of seqs that arrived: with N ingest processes on one shared
subscription each process sees only its share, so no process's memory can know the gaps.
Per gateway the sink keeps a watermark (`checked_from`, persisted) below which every seq
arrived or was announced dropped; each check scans only the rows above it and hands the
holes it finds (with when their two edges arrived) to `assess()`, a pure function.

A hole whose edges arrived recently is not (yet) a gap: during a backlog drain the agent
sends old seqs oldest first while live ones arrive above them, so the lower edge keeps
moving. Only a hole both of whose edges are older than `after` is reported missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Range = tuple[int, int]
"""Inclusive (first, last)."""


@dataclass(frozen=True, slots=True)
class Hole:
    """Seqs first..last absent from the table; the edges arrived `edge_age` seconds ago."""

    first: int
    last: int
    edge_age: float
    """Seconds since the more recent of the two edge rows (seq first-1, seq last+1) arrived."""


@dataclass(frozen=True, slots=True)
class Assessment:
    """One gateway's state after a check."""

    missing: list[Range]
    """Reported gaps: old enough, not announced as dropped."""
    pending: list[Range]
    """Holes too young to call (backlog drain, messages in flight)."""
    checked_from: int
    """The new watermark: everything at or below it arrived or was dropped on purpose."""

    @property
    def missing_count(self) -> int:
        """Readings in the reported gaps."""
        return sum(last - first + 1 for first, last in self.missing)


def subtract(ranges: Iterable[Range], covered: Sequence[Range]) -> list[Range]:
    """`ranges` minus `covered` (both inclusive), in order."""
    out: list[Range] = []
    cov = sorted(covered)
    for first, last in ranges:
        lo = first
        for cf, cl in cov:
            if cl < lo or cf > last:
                continue
            if cf > lo:
                out.append((lo, cf - 1))
            lo = max(lo, cl + 1)
            if lo > last:
                break
        if lo <= last:
            out.append((lo, last))
    return out


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Overlapping or adjacent ranges joined, in order."""
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def assess(holes: Sequence[Hole], dropped: Sequence[Range], max_seq: int, after: float
           ) -> Assessment:
    """Split a gateway's holes into missing and pending, and advance its watermark."""
    missing: list[Range] = []
    pending: list[Range] = []
    for hole in holes:
        rest = subtract([(hole.first, hole.last)], dropped)
        (missing if hole.edge_age >= after else pending).extend(rest)
    open_ = merge(missing + pending)
    # the row just below the lowest open hole stays in the next scan, so lead() finds it
    checked_from = open_[0][0] - 1 if open_ else max_seq
    return Assessment(merge(missing), merge(pending), checked_from)


def describe(ranges: Sequence[Range], limit: int = 10) -> str:
    """`5-9, 12, 40-41` (at most `limit` ranges, then `... (+N more)`)."""
    parts = [str(f) if f == last else f"{f}-{last}" for f, last in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"... (+{len(ranges) - limit} more)")
    return ", ".join(parts)
