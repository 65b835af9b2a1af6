"""assess(): old holes are missing, young ones pending, announced drops neither."""

from __future__ import annotations

from gateway.ingest.gaps import Hole, assess, describe, merge, subtract


def test_subtract_and_merge() -> None:
    assert subtract([(1, 10)], [(3, 4), (8, 12)]) == [(1, 2), (5, 7)]
    assert subtract([(1, 10)], [(0, 20)]) == []
    assert subtract([(5, 6)], []) == [(5, 6)]
    assert merge([(5, 6), (1, 2), (3, 3), (9, 9), (4, 4)]) == [(1, 6), (9, 9)]


def test_a_hole_older_than_after_is_missing_and_holds_the_watermark() -> None:
    a = assess([Hole(11, 20, edge_age=120.0)], [], max_seq=100, after=60.0)
    assert a.missing == [(11, 20)] and a.missing_count == 10
    assert a.checked_from == 10  # the row below the hole is scanned again next time


def test_a_draining_backlog_is_not_a_gap() -> None:
    # the lower edge arrived a moment ago: the backlog is still catching up
    a = assess([Hole(11, 20, edge_age=0.5)], [], max_seq=100, after=60.0)
    assert a.missing == [] and a.pending == [(11, 20)]
    assert a.checked_from == 10


def test_announced_drops_are_not_missing_and_let_the_watermark_pass() -> None:
    a = assess([Hole(11, 20, 999.0), Hole(31, 32, 999.0)], [(11, 20)], max_seq=50, after=1.0)
    assert a.missing == [(31, 32)] and a.checked_from == 30
    a = assess([Hole(11, 20, 999.0)], [(5, 25)], max_seq=50, after=1.0)
    assert a.missing == [] and a.checked_from == 50


def test_partly_announced() -> None:
    a = assess([Hole(11, 20, 999.0)], [(11, 15)], max_seq=50, after=1.0)
    assert a.missing == [(16, 20)]


def test_describe() -> None:
    assert describe([(5, 9), (12, 12)]) == "5-9, 12"
    assert describe([(i, i) for i in range(12)], limit=2) == "0, 1, ... (+10 more)"
