"""The sink against the machine's PostgreSQL: schema, exactly-once writes, gap checks."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from gateway.errors import FatalError
from gateway.ingest.payload import Row
from gateway.ingest.schema import SCHEMA_VERSION, Tables
from gateway.ingest.sink import Batch, Sink
from tests.ingest.conftest import Pg


def rows(gw: str, seqs: range | list[int]) -> list[Row]:
    return [(gw, s, "site", "dev", "m", 1764345600123 + s, float(s), None, "V", "good")
            for s in seqs]


async def sink(pg: Pg, **kw: object) -> Sink:
    s = Sink(pg.dsn, Tables(pg.schema, "readings"), timescale=bool(kw.get("timescale", False)),
             statement_timeout=10)
    await s.open()
    return s


async def test_schema_is_created_versioned_and_reopened(pg: Pg) -> None:
    s = await sink(pg, timescale=True)  # no extension here: a plain table, recorded as such
    await s.close()
    s = await sink(pg)
    await s.close()
    assert pg.query("SELECT tbl, version, hypertable FROM {s}.parkgate_ingest_schema") == [
        ("readings", SCHEMA_VERSION, False)]
    cols = {c for (c,) in pg.query(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
        " AND table_name = 'readings'", pg.schema)}
    assert {"gateway", "seq", "site", "device", "metric", "ts", "value", "value_text", "unit",
            "quality"} <= cols
    pg.query("UPDATE {s}.parkgate_ingest_schema SET version = 99")
    with pytest.raises(FatalError, match="newer than this parkgate"):
        await sink(pg)


async def test_a_batch_twice_is_stored_once_and_counted_as_duplicates(pg: Pg) -> None:
    s = await sink(pg)
    batch = Batch(rows=[*rows("gw", range(1, 6)),
                        ("gw", 6, "site", "dev", "state", 1764345600000, None, "on", None,
                         "uncertain")])
    first = await s.write(batch)
    again = await s.write(batch)
    await s.close()
    assert (first.inserted, first.duplicates) == (6, 0)
    assert (again.inserted, again.duplicates) == (0, 6)
    assert pg.query("SELECT count(*) FROM {s}.readings") == [(6,)]
    (ts, value, text, quality), = pg.query(
        "SELECT ts, value, value_text, quality FROM {s}.readings WHERE seq = 6")
    assert ts == dt.datetime(2025, 11, 28, 16, 0, tzinfo=dt.UTC)
    assert (value, text, quality) == (None, "on", "uncertain")


async def test_two_sinks_writing_overlapping_batches_at_once(pg: Pg) -> None:
    a, b = await sink(pg), await sink(pg)
    results = []
    for g in range(3):  # a connection runs one transaction at a time: pairs at once
        results += await asyncio.gather(a.write(Batch(rows=rows(f"gw{g}", range(1, 2001)))),
                                        b.write(Batch(rows=rows(f"gw{g}", range(1001, 3001)))))
    await a.close()
    await b.close()
    assert sum(r.inserted for r in results) == 3 * 3000
    assert sum(r.duplicates for r in results) == 3 * 1000
    assert pg.query("SELECT count(*), count(DISTINCT (gateway, seq)) FROM {s}.readings") == [
        (9000, 9000)]


async def test_rejected_messages_and_drop_notices_are_kept(pg: Pg) -> None:
    s = await sink(pg)
    await s.write(Batch(drops=[("gw", 5, 9, "max_bytes")],
                        rejected=[("parkgate/a/b/c", "not UTF-8 JSON", b"\xff")]))
    await s.close()
    assert pg.query("SELECT topic, reason, payload FROM {s}.readings_rejected") == [
        ("parkgate/a/b/c", "not UTF-8 JSON", b"\xff")]
    assert pg.query("SELECT gateway, first, last, reason FROM {s}.readings_dropped") == [
        ("gw", 5, 9, "max_bytes")]


async def test_gap_check_finds_holes_minus_drops_and_advances(pg: Pg) -> None:
    s = await sink(pg)
    await s.write(Batch(rows=rows("gw", [*range(1, 6), *range(9, 11), *range(20, 31)])))
    states = await s.check_gaps(after=0.0)
    assert [(st.gateway, st.last_seq, st.assessment.missing) for st in states] == [
        ("gw", 30, [(6, 8), (11, 19)])]
    young = await s.check_gaps(after=3600.0)
    assert young[0].assessment.missing == [] and young[0].assessment.pending == [(6, 8),
                                                                                 (11, 19)]
    await s.write(Batch(rows=rows("gw", range(6, 9)), drops=[("gw", 11, 19, "max_age")]))
    states = await s.check_gaps(after=0.0)
    assert states[0].assessment.missing == [] and states[0].dropped == 9
    assert pg.query("SELECT checked_from FROM {s}.readings_progress") == [(30,)]
    await s.close()


async def test_a_seq_both_announced_and_received_counts_as_received(pg: Pg) -> None:
    # the agent's buffer dropped 1-100 while the publish of 1-10 was on its way: the notice
    # announces 1-100, the readings 1-10 arrive too; an announcement repeated in other
    # pieces (a lost PUBACK, ranges coalesced since) is counted once
    s = await sink(pg)
    await s.write(Batch(rows=rows("gw", [*range(1, 11), *range(101, 121)]),
                        drops=[("gw", 1, 100, "max_bytes"), ("gw", 1, 50, "max_bytes"),
                               ("gw", 51, 100, "max_bytes"), ("gw", 110, 112, "max_age"),
                               ("gw", 130, 131, "max_age")]))
    await s.write(Batch(rows=rows("gw", [*range(121, 130), 132])))
    (state,) = await s.check_gaps(after=0.0)
    assert state.assessment.missing == []
    assert state.dropped == 90 + 2  # 11-100 and 130-131; 110-112 arrived
    await s.write(Batch(rows=rows("other", range(1, 3)), drops=[("other", 5, 6, "max_age")]))
    states = await s.check_gaps(after=0.0)
    assert [(st.gateway, st.dropped) for st in states] == [("gw", 92), ("other", 2)]
    await s.close()
