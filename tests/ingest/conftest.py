"""The machine's PostgreSQL (a schema of each test's own) and `parkgate ingest` processes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import ROOT, GatewayProcess, free_port, write_config

PG_DSN = os.environ.get("PARKGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Pg:
    """A schema of this test's own in the test database."""

    dsn: str
    schema: str

    def query(self, q: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(q.replace("{s}", self.schema), args or None)
            return cur.fetchall() if cur.description else []


@pytest.fixture
def pg() -> Iterator[Pg]:
    try:
        conn = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_DSN} unreachable (set PARKGATE_TEST_PG): {exc}")
    schema = f"pgtest_{uuid.uuid4().hex[:12]}"
    conn.close()
    yield Pg(PG_DSN, schema)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        # a connection a failed test left open must not hang the run: fail the drop instead
        conn.execute("SET lock_timeout = '20s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class IngestProcess(GatewayProcess):
    """`parkgate ingest -c FILE --instance N` as a real subprocess."""

    def __init__(self, config: Path, instance: str) -> None:
        super().__init__(config)
        self.instance = instance
        self.log = config.with_name(f"{config.stem}-{instance}.log")

    def start(self) -> IngestProcess:
        self._close_log()
        self._logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "ingest", "-c", str(self.config),
             "--instance", self.instance], stdout=self._logf, stderr=subprocess.STDOUT,
            env=self.env, cwd=ROOT)
        return self


def ingest_config(tmp: Path, pg: Pg, broker_urls: list[str], *, name: str = "ingest",
                  after: str = "1s", **sink: Any) -> tuple[Path, str]:
    """An ingest config file and its metrics listen address."""
    listen = f"127.0.0.1:{free_port()}"
    cfg = {
        "source": {"brokers": broker_urls, "share": "pgtest", "session_expiry": "10m",
                   "client_id": f"ing-{pg.schema[-8:]}"},
        "sink": {"postgres": pg.dsn, "schema": pg.schema, "table": "readings",
                 "batch_delay": "50ms", "timescale": False, **sink},
        "gaps": {"after": after, "interval": "300ms"},
        "metrics": {"listen": listen},
        "logging": {"level": "info", "format": "json"},
    }
    return write_config(tmp / f"{name}.yaml", cfg), listen


@pytest.fixture
def ingests() -> Iterator[list[IngestProcess]]:
    """Ingest processes a test started; none outlives the test."""
    procs: list[IngestProcess] = []
    yield procs
    for p in procs:
        p.kill()
