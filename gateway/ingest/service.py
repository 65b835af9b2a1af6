"""`parkgate ingest`: sources -> batches -> PostgreSQL -> PUBACKs, gap checks, /metrics.

One TaskGroup owns a task per broker, the writer, the gap checker and the HTTP server.
The writer takes what the sources received, commits it in one transaction and only then
acknowledges each message on the connection it came from. If PostgreSQL fails, the batch is
kept and retried on a new connection with backoff; nothing is acknowledged meanwhile, and
the brokers stop sending once `receive_maximum` messages wait per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path
from typing import Any, cast

import psycopg
from structlog.typing import FilteringBoundLogger

from gateway import logs
from gateway.backoff import Backoff
from gateway.health import Heartbeat, HttpServer
from gateway.ingest.gaps import describe
from gateway.ingest.metrics import IngestMetrics
from gateway.ingest.payload import Data, DropNotice, Rejected, Status, classify
from gateway.ingest.schema import Tables
from gateway.ingest.settings import IngestConfig, LoadedIngestConfig
from gateway.ingest.sink import Batch, GatewayState, Sink, is_transient
from gateway.ingest.source import Delivery, Source
from gateway.metrics import Metrics
from gateway.model import now_ms
from gateway.uplink import Broker


def default_client_id(instance: str | None) -> str:
    """`parkgate-ingest-{hostname}[-{instance}]`: stable across restarts of one process."""
    base = f"parkgate-ingest-{socket.gethostname().split('.')[0]}"[:56]
    return f"{base}-{instance}" if instance else base


class Ingest:
    """One ingest process."""

    def __init__(self, loaded: LoadedIngestConfig, *, instance: str | None = None,
                 log: FilteringBoundLogger | None = None) -> None:
        self.cfg: IngestConfig = loaded.config
        self.log = log or logs.get_logger(component="ingest")
        self.metrics = IngestMetrics()
        src = self.cfg.source
        client_id = src.client_id or default_client_id(instance)
        if src.client_id and instance:
            client_id = f"{src.client_id}-{instance}"
        self.client_id = client_id
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self.sources: list[Source] = []
        sink = self.cfg.sink
        # pg_stat_activity shows which process and which of its two connections
        self.sink, self.gap_sink = (
            Sink(sink.postgres.get_secret_value(), Tables(sink.db_schema, sink.table),
                 timescale=sink.timescale, statement_timeout=sink.statement_timeout,
                 application_name=f"parkgate-ingest {role} {client_id}")
            for role in ("writer", "gaps"))
        self._stop = asyncio.Event()
        self._open_gaps: dict[str, list[tuple[int, int]]] = {}
        self.states: dict[str, GatewayState] = {}

    # -- writer ---------------------------------------------------------------------------
    async def _collect(self) -> list[Delivery]:
        """The next batch: waits for one message, then up to batch_delay or batch_rows."""
        first = await self.queue.get()
        got = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.sink.batch_delay
        # rows are counted roughly by payload size until classified (~120 bytes a reading)
        budget = self.cfg.sink.batch_rows * 120 - len(first.payload)
        while budget > 0:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        item = await self.queue.get()
                except TimeoutError:
                    break
            got.append(item)
            budget -= len(item.payload)
        self.metrics.unacked.set(len(got) + self.queue.qsize())
        return got

    def _one(self, d: Delivery) -> tuple[Batch, str]:
        """One message as what it writes, and its kind."""
        batch = Batch()
        msg = classify(d.payload)
        if isinstance(msg, Data):
            batch.rows.extend(msg.rows)
            for reason, reading in msg.bad:
                batch.rejected.append((d.topic, reason, reading.encode()))
                self.metrics.rejected.labels(reason=reason).inc()
        elif isinstance(msg, DropNotice):
            batch.drops.extend((msg.gateway, f, la, r) for f, la, r in msg.ranges)
            for f, la, r in msg.ranges:
                self.log.info("gateway announced dropped readings", gateway=msg.gateway,
                              first=f, last=la, reason=r)
        elif isinstance(msg, Status):
            self.metrics.online.labels(gateway=msg.gateway).set(
                1 if msg.state == "online" else 0)
        elif isinstance(msg, Rejected):
            batch.rejected.append((d.topic, msg.reason, d.payload))
            self.metrics.rejected.labels(reason=msg.reason).inc()
            self.log.warning("message rejected: kept in the rejected table",
                             topic=d.topic, reason=msg.reason, bytes=len(d.payload))
        return batch, type(msg).__name__.lower()

    async def _write(self, deliveries: list[Delivery]) -> dict[str, int]:
        """Commit what the messages carry; returns messages per kind."""
        parts = [self._one(d) for d in deliveries]
        kinds: dict[str, int] = {}
        batch = Batch()
        for part, kind in parts:
            kinds[kind] = kinds.get(kind, 0) + 1
            batch.rows.extend(part.rows)
            batch.drops.extend(part.drops)
            batch.rejected.extend(part.rejected)
        if not len(batch):
            return kinds
        try:
            await self._commit(batch)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            # data PostgreSQL refuses (a NUL character in a text): one message at a time,
            # and the one it refuses goes to the rejected table instead of blocking the rest
            self.log.warning("database refused a batch; retrying message by message",
                             error=str(exc).strip())
            for d, (part, _kind) in zip(deliveries, parts, strict=True):
                try:
                    await self._commit(part)
                except (psycopg.DataError, psycopg.IntegrityError) as one:
                    reason = f"database refused: {str(one).strip()}"[:500]
                    self.metrics.rejected.labels(reason="database refused").inc()
                    self.log.warning("message rejected: kept in the rejected table",
                                     topic=d.topic, reason=reason)
                    await self._commit(Batch(rejected=[(d.topic, reason, d.payload)]))
        return kinds

    async def _commit(self, batch: Batch) -> None:
        """Commit `batch`, reconnecting and retrying until it is in (or cancelled)."""
        backoff = Backoff(base=0.5, cap=15.0)
        while True:
            try:
                if self.sink.conn is None or self.sink.conn.closed:
                    await self.sink.open()
                    self.metrics.db_connected.set(1)
                started = time.perf_counter()
                written = await self.sink.write(batch)
            except psycopg.Error as exc:
                if not is_transient(exc):
                    raise
                self.metrics.db_errors.labels(kind=type(exc).__name__).inc()
                self.metrics.db_connected.set(0)
                self.log.warning("database write failed; the batch is retried, nothing is "
                                 "acknowledged meanwhile", error=str(exc).strip())
                with contextlib.suppress(psycopg.Error):
                    await self.sink.close()
                await asyncio.sleep(backoff.next_delay())
                continue
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.metrics.rows.inc(written.inserted)
            self.metrics.duplicates.inc(written.duplicates)
            self.metrics.batch_rows.observe(len(batch.rows))
            if batch.rows:
                self.metrics.lag.set(max(0.0, (now_ms() - max(r[5] for r in batch.rows))
                                         / 1000))
            return

    async def _writer(self) -> None:
        while True:
            deliveries = await self._collect()
            kinds = await self._write(deliveries)
            for d in deliveries:
                d.source.ack(d)
            for kind, n in kinds.items():
                self.metrics.messages.labels(kind=kind).inc(n)
            self.metrics.unacked.set(self.queue.qsize())

    # -- gaps -----------------------------------------------------------------------------
    async def _gaps(self) -> None:
        gaps = self.cfg.gaps
        backoff = Backoff(base=1.0, cap=60.0)
        while True:
            try:
                if self.gap_sink.conn is None or self.gap_sink.conn.closed:
                    await self.gap_sink.open()
                states = await self.gap_sink.check_gaps(gaps.after)
            except psycopg.Error as exc:
                if not is_transient(exc) and not isinstance(exc, psycopg.errors.UndefinedTable):
                    raise
                self.log.warning("gap check failed; retrying", error=str(exc).strip())
                with contextlib.suppress(psycopg.Error):
                    await self.gap_sink.close()
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            self._report(states)
            self.metrics.gap_checks.inc()
            await asyncio.sleep(gaps.interval)

    def _report(self, states: list[GatewayState]) -> None:
        for s in states:
            self.states[s.gateway] = s
            a = s.assessment
            self.metrics.last_seq.labels(gateway=s.gateway).set(s.last_seq)
            self.metrics.missing.labels(gateway=s.gateway).set(a.missing_count)
            self.metrics.dropped.labels(gateway=s.gateway).set(s.dropped)
            before = self._open_gaps.get(s.gateway, [])
            if a.missing and a.missing != before:
                self.log.warning("readings missing: seqs neither stored nor announced as "
                                 "dropped", gateway=s.gateway, missing=a.missing_count,
                                 ranges=describe(a.missing))
            elif before and not a.missing:
                self.log.info("gap closed: the seqs arrived or were announced as dropped",
                              gateway=s.gateway, ranges=describe(before))
            self._open_gaps[s.gateway] = a.missing

    # -- run ------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when PostgreSQL and every broker are connected."""
        brokers = {s.broker.url: s.client is not None for s in self.sources}
        db = self.sink.conn is not None and not self.sink.conn.closed
        return db and all(brokers.values()), {"database": db, "brokers": brokers,
                                              "client_id": self.client_id}

    async def run(self) -> int:
        """Until SIGTERM/SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        self.log.info("ingest starting", client_id=self.client_id,
                      table=f"{self.sink.t.schema}.{self.sink.t.table}")
        await self.sink.open()  # a wrong DSN or schema fails the start, loudly
        self.metrics.db_connected.set(1)
        self.sources = [Source(self.cfg.source, Broker.parse(url), self.client_id,
                               out=self.queue, metrics=self.metrics, log=self.log)
                        for url in self.cfg.source.brokers]
        # HttpServer and Heartbeat read only `.registry` and `.loop_lag`
        shared = cast(Metrics, self.metrics)
        heartbeat = Heartbeat(shared)
        http = None
        if self.cfg.metrics.listen:
            http = HttpServer(self.cfg.metrics.listen, shared, heartbeat, self.ready, self.log)
            await http.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(s.run(), name=f"ingest.source[{s.broker.url}]")
                         for s in self.sources]
                tasks.append(tg.create_task(self._writer(), name="ingest.writer"))
                tasks.append(tg.create_task(self._gaps(), name="ingest.gaps"))
                tasks.append(tg.create_task(heartbeat.run(), name="ingest.heartbeat"))
                if http is not None:
                    tasks.append(tg.create_task(http.serve(), name="ingest.http"))
                await self._stop.wait()
                self.log.info("ingest stopping: unacknowledged messages stay with the broker")
                for task in tasks:
                    task.cancel()
        finally:
            await self.sink.close()
            await self.gap_sink.close()
        return 0


def run_file(path: Path, *, instance: str | None = None, debug: bool = False) -> int:
    """`parkgate ingest -c FILE`."""
    from gateway.ingest.settings import load_ingest_config  # noqa: PLC0415

    loaded = load_ingest_config(path)
    cfg = loaded.config
    logs.configure("debug" if debug else cfg.logging.level, cfg.logging.format,
                   loaded.secrets | {cfg.sink.postgres.get_secret_value()})
    return asyncio.run(Ingest(loaded, instance=instance).run())
