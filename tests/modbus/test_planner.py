"""Read planning: coalescing, limits, gaps, learned boundaries."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.planner import covering, plan
from drivers.modbus.registermap import Point


def pt(address: int, width: int = 2, table: str = "holding", name: str | None = None) -> Point:
    return Point(name=name or f"r{table}{address}", table=table, address=address,  # type: ignore[arg-type]
                 width=width, type="float32" if width == 2 else "uint16", order="ABCD",
                 bit=None, scale=None, offset=None, decimals=None, unit=None, every=1)


def spans(reads):
    return [(r.table, r.start, r.count) for r in reads]


def test_adjacent_registers_are_one_read() -> None:
    reads = plan([pt(0), pt(2), pt(4)], max_registers=125, max_gap=0)
    assert spans(reads) == [("holding", 0, 6)]
    assert [p.address for p in reads[0].points] == [0, 2, 4]


def test_gap_up_to_max_gap_is_bridged_beyond_it_is_not() -> None:
    assert spans(plan([pt(0), pt(12)], max_registers=125, max_gap=10)) == [("holding", 0, 14)]
    assert spans(plan([pt(0), pt(13)], max_registers=125, max_gap=10)) == [
        ("holding", 0, 2), ("holding", 13, 2)]


def test_max_registers_splits_and_a_value_never_straddles_reads() -> None:
    points = [pt(a) for a in range(0, 200, 2)]
    reads = plan(points, max_registers=125, max_gap=10)
    assert spans(reads) == [("holding", 0, 124), ("holding", 124, 76)]
    reads = plan(points, max_registers=80, max_gap=10)
    assert [r.count for r in reads] == [80, 80, 40]


def test_tables_never_mix_and_come_out_in_table_order() -> None:
    reads = plan([pt(0, table="input"), pt(0, table="holding"), pt(2, table="input")],
                 max_registers=125, max_gap=10)
    assert spans(reads) == [("holding", 0, 2), ("input", 0, 4)]


def test_bits_coalesce_up_to_2000_and_bridge_wider_gaps() -> None:
    coils = [pt(a, 1, "coil") for a in (0, 100, 1999, 2000)]
    reads = plan(coils, max_registers=10, max_gap=10)
    assert spans(reads) == [("coil", 0, 101), ("coil", 1999, 2)]


def test_isolated_register_is_read_alone_and_never_bridged() -> None:
    points = [pt(0), pt(2), pt(4), pt(6)]
    reads = plan(points, max_registers=125, max_gap=10, isolated={("holding", 4)})
    assert spans(reads) == [("holding", 0, 4), ("holding", 4, 2), ("holding", 6, 2)]


def test_points_sharing_an_isolated_register_share_its_read() -> None:
    a = pt(4, 1, name="a")
    b = pt(4, 1, name="b")
    reads = plan([pt(0), a, b, pt(6)], max_registers=125, max_gap=10,
                 isolated={("holding", 4)})
    assert spans(reads) == [("holding", 0, 2), ("holding", 4, 1), ("holding", 6, 2)]
    assert {p.name for p in reads[1].points} == {"a", "b"}


def test_cut_starts_a_new_read() -> None:
    reads = plan([pt(0), pt(4), pt(8)], max_registers=125, max_gap=10,
                 cuts={("holding", 8)})
    assert spans(reads) == [("holding", 0, 6), ("holding", 8, 2)]


def test_overlapping_points_share_a_read() -> None:
    reads = plan([pt(10, 2), pt(11, 1)], max_registers=125, max_gap=0)
    assert spans(reads) == [("holding", 10, 2)]


def test_covering() -> None:
    r = covering([pt(8), pt(2)])
    assert (r.start, r.count, r.describe()) == (2, 8, "holding 2..9")


@settings(max_examples=100, deadline=None)
@given(addresses=st.lists(st.integers(0, 600), min_size=1, max_size=30, unique=True),
       widths=st.lists(st.sampled_from([1, 2, 4]), min_size=30, max_size=30),
       max_registers=st.integers(4, 125), max_gap=st.integers(0, 20))
def test_plan_properties(addresses: list[int], widths: list[int], max_registers: int,
                         max_gap: int) -> None:
    points = [pt(a, w) for a, w in zip(addresses, widths, strict=False)]
    reads = plan(points, max_registers=max_registers, max_gap=max_gap)
    # every point exactly once, inside its read, each read within the limit
    seen = [p for r in reads for p in r.points]
    assert sorted(seen, key=lambda p: p.address) == sorted(points, key=lambda p: p.address)
    for r in reads:
        assert r.count <= max_registers
        for p in r.points:
            assert r.start <= p.address
            assert p.end <= r.start + r.count
        ordered = sorted(r.points, key=lambda p: p.address)
        for a, b in itertools.pairwise(ordered):
            assert b.address - max(q.end for q in ordered if q.address <= a.address) <= max_gap
    # optimal: the fewest contiguous runs of points that fit (dynamic programming)
    pts = sorted(points, key=lambda p: p.address)

    def feasible(run: list[Point]) -> bool:
        end = run[0].end
        for q in run[1:]:
            if q.address - end > max_gap:
                return False
            end = max(end, q.end)
        return end - run[0].address <= max_registers

    best = [0] + [len(pts) + 1] * len(pts)
    for k in range(1, len(pts) + 1):
        best[k] = min(best[j] + 1 for j in range(k) if feasible(pts[j:k]))
    assert len(reads) == best[-1]
