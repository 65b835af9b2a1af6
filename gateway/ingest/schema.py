"""The ingest's tables, created and migrated by `parkgate ingest` itself.

The version of each table set lives in `parkgate_ingest_schema` (one row per main table);
migrations run in one transaction under an advisory lock, so N processes starting together
apply each step once. Names are validated identifiers (settings.py) quoted with sql.Identifier.

With TimescaleDB the readings table becomes a hypertable on `ts`; TimescaleDB requires every
unique index to contain the partitioning column, so the primary key there is
(gateway, seq, ts). That is still exactly once per (gateway, seq): a redelivered reading
carries the same `ts` as the first copy (the agent never reuses a seq).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from gateway.errors import FatalError

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Tables:
    """The qualified names of one ingest's tables."""

    schema: str
    table: str

    def ident(self, suffix: str = "") -> sql.Identifier:
        """`schema.table[_suffix]`."""
        return sql.Identifier(self.schema, self.table + suffix)

    @property
    def readings(self) -> sql.Identifier:
        return self.ident()

    @property
    def dropped(self) -> sql.Identifier:
        return self.ident("_dropped")

    @property
    def rejected(self) -> sql.Identifier:
        return self.ident("_rejected")

    @property
    def progress(self) -> sql.Identifier:
        return self.ident("_progress")


def _v1(t: Tables, timescale: bool) -> list[sql.Composed]:
    key = "gateway, seq, ts" if timescale else "gateway, seq"
    return [
        sql.SQL("""CREATE TABLE {r} (
            gateway text NOT NULL, seq bigint NOT NULL, site text NOT NULL,
            device text NOT NULL, metric text NOT NULL, ts timestamptz NOT NULL,
            value double precision, value_text text, unit text, quality text NOT NULL,
            received timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY ({key}))""").format(r=t.readings, key=sql.SQL(key)),
        sql.SQL("CREATE INDEX ON {r} (device, metric, ts)").format(r=t.readings),
        sql.SQL("""CREATE TABLE {d} (
            gateway text NOT NULL, first bigint NOT NULL, last bigint NOT NULL,
            reason text NOT NULL, received timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (gateway, first, last))""").format(d=t.dropped),
        sql.SQL("""CREATE TABLE {x} (
            id bigserial PRIMARY KEY, received timestamptz NOT NULL DEFAULT now(),
            topic text NOT NULL, reason text NOT NULL, payload bytea NOT NULL)"""
                ).format(x=t.rejected),
        sql.SQL("""CREATE TABLE {p} (
            gateway text PRIMARY KEY, checked_from bigint NOT NULL)""").format(p=t.progress),
    ]


MIGRATIONS = {1: _v1}
"""version -> statements that bring version-1 to it; append, never edit a released step."""


async def timescale_available(conn: AsyncConnection[Any]) -> bool:
    """Whether the timescaledb extension is installed in this database."""
    cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    return await cur.fetchone() is not None


async def migrate(conn: AsyncConnection[Any], t: Tables, *, use_timescale: bool) -> int:
    """Create or upgrade the tables to SCHEMA_VERSION; returns the version found before."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('parkgate_ingest_schema'))")
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
            sql.Identifier(t.schema)))
        await conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
            tbl text PRIMARY KEY, version integer NOT NULL, hypertable boolean NOT NULL)"""
                                   ).format(sql.Identifier(t.schema, "parkgate_ingest_schema")))
        cur = await conn.execute(sql.SQL("SELECT version, hypertable FROM {} WHERE tbl = %s"
                                         ).format(sql.Identifier(t.schema,
                                                                 "parkgate_ingest_schema")),
                                 (t.table,))
        found = await cur.fetchone()
        version = int(found[0]) if found else 0
        if version > SCHEMA_VERSION:
            raise FatalError(f"table {t.schema}.{t.table} has schema version {version}, "
                               f"newer than this parkgate ({SCHEMA_VERSION}): upgrade parkgate")
        timescale = bool(found[1]) if found else (
            use_timescale and await timescale_available(conn))
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step](t, timescale):
                await conn.execute(statement)
            if step == 1 and timescale:
                await conn.execute("SELECT create_hypertable(%s, 'ts')",
                                   (f"{t.schema}.{t.table}",))
        await conn.execute(sql.SQL("""INSERT INTO {} (tbl, version, hypertable)
            VALUES (%s, %s, %s) ON CONFLICT (tbl) DO UPDATE SET version = EXCLUDED.version"""
                                   ).format(sql.Identifier(t.schema, "parkgate_ingest_schema")),
                           (t.table, SCHEMA_VERSION, timescale))
        return version
