"""PostgreSQL: a batch of readings in one transaction, exactly once per (gateway, seq).

Each batch is COPYed into a temporary staging table, then inserted into the readings table
ordered by (gateway, seq) with `ON CONFLICT DO NOTHING`: a redelivered reading is counted as
a duplicate and dropped, and two processes inserting overlapping batches lock rows in the
same order (no deadlock cycle; PostgreSQL's detector and a retry cover the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from gateway.ingest.gaps import Assessment, Hole, Range, assess
from gateway.ingest.payload import Row
from gateway.ingest.schema import Tables, migrate

STAGE_COLUMNS = ("gateway", "seq", "site", "device", "metric", "ts_ms", "value",
                 "value_text", "unit", "quality")


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    rows: list[Row] = field(default_factory=list)
    drops: list[tuple[str, int, int, str]] = field(default_factory=list)
    """(gateway, first, last, reason)."""
    rejected: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(topic, reason, payload)."""

    def __len__(self) -> int:
        return len(self.rows) + len(self.drops) + len(self.rejected)


@dataclass(frozen=True, slots=True)
class Written:
    """What a committed batch did."""

    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class GatewayState:
    """One gateway after a gap check."""

    gateway: str
    last_seq: int
    assessment: Assessment
    dropped: int
    """Readings the agent announced as dropped by policy and that never arrived (all time;
    a seq both announced and received counts as received)."""


class Sink:
    """One connection to PostgreSQL; `open()`, then `write()` and `check_gaps()`."""

    def __init__(self, dsn: str, tables: Tables, *, timescale: bool,
                 statement_timeout: float, application_name: str = "parkgate-ingest") -> None:
        self.dsn = dsn
        self.application_name = application_name[:63]
        self.t = tables
        self.timescale = timescale
        self.statement_timeout_ms = int(statement_timeout * 1000)
        self.conn: AsyncConnection[Any] | None = None
        self.known: set[str] = set()
        t = tables
        self._insert = sql.SQL(
            "INSERT INTO {r} (gateway, seq, site, device, metric, ts, value, value_text, unit,"
            " quality) SELECT gateway, seq, site, device, metric,"
            " timestamptz 'epoch' + ts_ms * interval '1 millisecond', value, value_text, unit,"
            " quality FROM parkgate_stage ORDER BY gateway, seq ON CONFLICT DO NOTHING"
        ).format(r=t.readings)
        self._insert_drop = sql.SQL(
            "INSERT INTO {d} (gateway, first, last, reason) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING").format(d=t.dropped)
        self._insert_rejected = sql.SQL(
            "INSERT INTO {x} (topic, reason, payload) VALUES (%s, %s, %s)").format(x=t.rejected)
        self._insert_progress = sql.SQL(
            "INSERT INTO {p} (gateway, checked_from) VALUES (%s, %s) ON CONFLICT DO NOTHING"
        ).format(p=t.progress)

    async def open(self) -> None:
        """Connect, migrate the schema and create the staging table."""
        await self.close()
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=10,
            options=f"-c statement_timeout={self.statement_timeout_ms}",
            application_name=self.application_name)
        try:
            await migrate(conn, self.t, use_timescale=self.timescale)
            await conn.execute(
                "CREATE TEMP TABLE parkgate_stage (gateway text, seq bigint, site text,"
                " device text, metric text, ts_ms bigint, value double precision,"
                " value_text text, unit text, quality text) ON COMMIT DELETE ROWS")
        except BaseException:
            await conn.close()
            raise
        self.conn = conn

    async def close(self) -> None:
        """Close the connection (an open transaction is rolled back)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.close()

    async def write(self, batch: Batch) -> Written:
        """Commit a batch; raises psycopg errors (the caller reconnects and retries)."""
        conn = self.conn
        assert conn is not None, "open() first"
        inserted = 0
        async with conn.transaction(), conn.cursor() as cur:
            if batch.rows:
                async with cur.copy(sql.SQL("COPY parkgate_stage ({}) FROM STDIN").format(
                        sql.SQL(", ").join(map(sql.Identifier, STAGE_COLUMNS)))) as copy:
                    for row in batch.rows:
                        await copy.write_row(row)
                await cur.execute(self._insert)
                inserted = max(0, cur.rowcount)
            if batch.drops:
                await cur.executemany(self._insert_drop, batch.drops)
            if batch.rejected:
                await cur.executemany(self._insert_rejected, batch.rejected)
            new = sorted({r[0] for r in batch.rows} - self.known)
            if new:
                # a gateway seen for the first time: gaps are looked for from its lowest seq
                firsts = {g: min(r[1] for r in batch.rows if r[0] == g) for g in new}
                await cur.executemany(self._insert_progress, [(g, firsts[g]) for g in new])
        self.known.update(r[0] for r in batch.rows)
        return Written(inserted, len(batch.rows) - inserted)

    async def check_gaps(self, after: float) -> list[GatewayState]:
        """Scan each gateway above its watermark; persist the advanced watermarks."""
        conn = self.conn
        assert conn is not None, "open() first"
        t = self.t
        holes: dict[str, list[Hole]] = {}
        max_seq: dict[str, int] = {}
        dropped: dict[str, list[Range]] = {}
        dropped_total: dict[str, int] = {}
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(sql.SQL("""
                SELECT p.gateway, m.max_seq, h.seq, h.nxt,
                       extract(epoch FROM now() - greatest(h.received, h.nxt_received))
                FROM {p} p
                CROSS JOIN LATERAL (SELECT max(seq) AS max_seq FROM {r} r
                                    WHERE r.gateway = p.gateway) m
                LEFT JOIN LATERAL (
                    SELECT seq, nxt, received, nxt_received FROM (
                        SELECT seq, received, lead(seq) OVER w AS nxt,
                               lead(received) OVER w AS nxt_received
                        FROM {r} r WHERE r.gateway = p.gateway AND r.seq >= p.checked_from
                        WINDOW w AS (ORDER BY seq)) s
                    WHERE nxt > seq + 1) h ON true
                ORDER BY p.gateway, h.seq""").format(p=t.progress, r=t.readings))
            for gateway, top, seq, nxt, age in await cur.fetchall():
                max_seq[gateway] = int(top) if top is not None else 0
                if seq is not None:
                    holes.setdefault(gateway, []).append(
                        Hole(int(seq) + 1, int(nxt) - 1, float(age)))
            await cur.execute(sql.SQL("""
                SELECT d.gateway, d.first, d.last FROM {d} d JOIN {p} p USING (gateway)
                WHERE d.last >= p.checked_from""").format(d=t.dropped, p=t.progress))
            for gateway, first, last in await cur.fetchall():
                dropped.setdefault(str(gateway), []).append((int(first), int(last)))
            # announced seqs that never arrived: the union of the announced ranges (an agent
            # may announce a range twice, or in other pieces, after a lost PUBACK) minus the
            # rows stored in it (a publish on its way when the agent's buffer dropped the
            # chunk still arrives: received, not dropped)
            await cur.execute(sql.SQL("""
                WITH o AS (
                    SELECT gateway, first, last,
                           max(last) OVER (PARTITION BY gateway ORDER BY first, last
                                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                                           ) AS reach
                    FROM {d}),
                g AS (
                    SELECT gateway, first, last,
                           count(*) FILTER (WHERE reach IS NULL OR first > reach + 1)
                               OVER (PARTITION BY gateway ORDER BY first, last
                                     ROWS UNBOUNDED PRECEDING) AS island
                    FROM o),
                m AS (SELECT gateway, min(first) AS first, max(last) AS last
                      FROM g GROUP BY gateway, island)
                SELECT m.gateway, sum(m.last - m.first + 1 - (
                    SELECT count(*) FROM {r} r
                    WHERE r.gateway = m.gateway AND r.seq BETWEEN m.first AND m.last))
                FROM m GROUP BY m.gateway""").format(d=t.dropped, r=t.readings))
            for gateway, count in await cur.fetchall():
                dropped_total[str(gateway)] = int(count)
            states = [GatewayState(g, top, assess(holes.get(g, []), dropped.get(g, []), top,
                                                  after), dropped_total.get(g, 0))
                      for g, top in sorted(max_seq.items())]
            await cur.executemany(sql.SQL(
                "UPDATE {p} SET checked_from = GREATEST(checked_from, %s) WHERE gateway = %s"
            ).format(p=t.progress), [(s.assessment.checked_from, s.gateway) for s in states
                                     if s.last_seq])
        return states


def is_transient(exc: BaseException) -> bool:
    """Errors after which the same batch is retried on a fresh connection."""
    return isinstance(exc, psycopg.OperationalError | psycopg.errors.DeadlockDetected
                      | psycopg.errors.SerializationFailure | psycopg.InterfaceError)

