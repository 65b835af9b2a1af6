"""The durable buffer: readings accepted into SQLite, handed to the uplink, deleted on PUBACK.

Layout (measured, see bench/pipeline.py): one row per *chunk*, a run of up to
`max_readings` consecutive readings of one device, stored as the JSON text of its items.
A row per reading costs an index entry, a Python tuple and a JSON encode per reading on
every pass; a chunk is written once and published as is, so the uplink only joins strings.

Sequence numbers are assigned when a chunk is committed: strictly increasing, never reused
(gateway/buffer/seqfile.py).

All SQLite work runs on one dedicated thread (gateway/buffer/store.py): a commit with
`synchronous=full` waits for fsync, which must not stall the event loop and every device
poll with it. The uplink sees this class only as a `ChunkSource` and a `DropSource`
(gateway/buffer/source.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from structlog.typing import FilteringBoundLogger

from gateway import notices
from gateway.buffer.encoder import ChunkEncoder, Row, encode_rows
from gateway.buffer.source import Chunk
from gateway.buffer.store import Store
from gateway.config import BufferSection
from gateway.metrics import Metrics
from gateway.model import Reading, now_ms
from gateway.sqlitedb import is_corruption

MAX_PENDING = 500_000
"""Readings held in memory while SQLite cannot write (disk full); beyond it the oldest go."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BufferStats:
    """What `parkgate buffer stats` prints."""

    readings: int
    chunks: int
    bytes: int
    file_bytes: int
    oldest_age_seconds: float | None
    next_seq: int
    pending: int


class Buffer:
    """Accepts readings from drivers, commits them durably, serves them to the uplink.

    `add()` is synchronous and cheap; `run()` is the commit task. The uplink uses the
    `ChunkSource` and `DropSource` members (`wait_new`, `read`, `ack`, `settle`, ...).
    """

    def __init__(self, cfg: BufferSection, *, chunk_max: int, metrics: Metrics,
                 log: FilteringBoundLogger) -> None:
        self.cfg = cfg
        self.chunk_max = chunk_max
        self.metrics = metrics
        self.log = log
        self._store = Store(cfg, log, metrics)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parkgate-sqlite")
        self._pending: list[Reading] = []
        self._acks: list[int] = []
        self._acks_committing: list[int] = []
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._encoder = ChunkEncoder()
        self._room = asyncio.Event()
        self._room.set()
        self.high_water = max(2 * cfg.commit_readings, 10_000)
        """Pending readings above which polling devices wait (see `wait_for_room`)."""
        self._new = asyncio.Event()
        """Set after every commit that added readings; cleared by `wait_new`."""
        self.is_open = False
        self._write_failures = 0
        self.drops_changed = asyncio.Event()
        """Set when seqs were dropped on purpose (a drop notice to send); see `wait_drops`."""

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        """Open (and check, or recover) the database."""
        await self._call(self._store.open)
        self.is_open = True
        self._update_gauges()
        if self._store.readings:
            self._new.set()  # resume sending what was not acknowledged before

    @property
    def next_seq(self) -> int:
        """The seq the next committed reading will get."""
        return self._store.next_seq

    def add(self, readings: Sequence[Reading]) -> None:
        """Queue readings for the next commit (called from device tasks)."""
        self._pending.extend(readings)
        if len(self._pending) >= self.cfg.commit_readings:
            self._wake.set()
            # backpressure only while SQLite writes: when it cannot (disk full), waiting
            # would stall every poll until the next retry; MAX_PENDING bounds memory then
            if len(self._pending) >= self.high_water and not self._write_failures:
                self._room.clear()
        if len(self._pending) > MAX_PENDING:
            # SQLite has not been able to write for a long time (disk full): keep the newest
            drop = len(self._pending) - MAX_PENDING
            del self._pending[:drop]
            self.metrics.buffer_dropped.labels(reason="write_failed").inc(drop)
            self.log.error("buffer cannot write; dropped readings waiting in memory",
                           dropped=drop)

    async def wait_for_room(self) -> None:
        """Backpressure for polling devices: wait while too many readings await a commit.

        When devices produce faster than SQLite can take readings, polls wait (and count
        as overruns) instead of piling readings up in memory. While commits fail, polls go
        on and the oldest readings in memory beyond `MAX_PENDING` are dropped and counted.
        """
        if not self._room.is_set():
            await self._room.wait()

    # -- ChunkSource (gateway/buffer/source.py) ------------------------------------------------
    async def wait_new(self) -> None:
        """Return once chunks were committed since the previous call returned."""
        await self._new.wait()
        self._new.clear()

    async def read(self, start: int, stop: int | None, limit: int,
                   device: str | None = None) -> list[Chunk]:
        """Up to `limit` stored chunks in `[start, stop)`, acknowledged ones left out."""
        acked = self.unflushed_acks()
        if acked:
            top = stop if stop is not None else 2**63
            acked = {f for f in acked if start <= f < top}
        chunks = await self.fetch(start, stop, limit + len(acked), device)
        if acked:
            # fetched as many more as may be left out: fewer than `limit` still means "no more"
            chunks = [c for c in chunks if c.first not in acked][:limit]
        return chunks

    def ack(self, firsts: Sequence[int]) -> None:
        """Chunks (by first seq) the broker acknowledged; deleted at the next commit."""
        self._acks.extend(firsts)

    async def settle(self, excluding: Collection[str] = ()) -> int:
        """Commit what is pending; readings unsent, not counting stored ones of `excluding`."""
        await self.flush()
        stored = self._store.readings
        if excluding and stored:
            stored = await self.readings_outside(list(excluding))
        return len(self._pending) + stored

    # -- DropSource ------------------------------------------------------------------------------
    async def record_dropped(self, ranges: Sequence[tuple[int, int]], reason: str) -> None:
        """Record seqs (inclusive ranges) dropped on purpose for a drop notice, durably.

        For readings that leave the buffer with their chunk's ack but never reach the broker
        (`too_large`: no message can carry them). Await it before `ack()`: the chunk is
        deleted only at a later commit, so a crash in between sends the chunk and records
        its drops again rather than losing the notice.
        """
        if ranges:
            await self._call(self._on_db, self._in_transaction, notices.record,
                             [notices.DropRange(f, la, reason) for f, la in ranges])
            self.drops_changed.set()

    async def pending_drops(self, limit: int) -> list[notices.DropRange]:
        """Up to `limit` dropped seq ranges whose notice the broker has not acknowledged."""
        ranges: list[notices.DropRange] = await self._call(self._on_db, notices.pending, limit)
        return ranges

    async def drops_sent(self, ranges: Sequence[notices.DropRange]) -> None:
        """The broker acknowledged a notice of these ranges: forget them."""
        await self._call(self._on_db, self._in_transaction, notices.acknowledged, list(ranges))

    async def wait_drops(self) -> None:
        """Return once drops were recorded since the previous call returned."""
        await self.drops_changed.wait()
        self.drops_changed.clear()

    # -- direct reads (tests, tools) -----------------------------------------------------------
    async def readings_outside(self, devices: Sequence[str]) -> int:
        """Buffered readings of devices other than these."""
        return await self._call(self._store.readings_outside, devices)

    def unflushed_acks(self) -> set[int]:
        """Chunks acknowledged but not yet deleted (their commit may be under way)."""
        return {*self._acks, *self._acks_committing}

    async def fetch(self, start: int, stop: int | None, limit: int,
                    device: str | None = None) -> list[Chunk]:
        """Up to `limit` chunks with `start <= first < stop` (of `device`), oldest first."""
        return await self._call(self._store.fetch, start, stop, limit, device)

    # -- the commit loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """The commit loop: every `commit_interval`, or sooner when many readings wait."""
        interval = self.cfg.commit_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._write_failures:
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(self._write_failures, 5)))

    async def flush(self) -> None:
        """Commit everything pending now, in bounded transactions (also used on shutdown).

        Only what is pending when it starts: under a sustained flood, waiting for an empty
        queue never ends, and the uplink (which settles its acks before reading) would wait
        for the lock forever.
        """
        async with self._flush_lock:  # seqs are assigned here, so one flush at a time
            rounds = 1 + len(self._pending) // self.cfg.commit_readings
            while rounds > 0 and (self._pending or self._acks) and await self._flush():
                rounds -= 1

    async def _flush(self) -> bool:
        """Commit the acks and up to `commit_readings` pending readings; False on failure.

        Bounded slices keep one transaction small enough to fit in whatever space a full
        disk frees up; a backlog in memory then drains slice by slice.
        """
        if not self._pending and not self._acks:
            return False
        pending, acks = self._take(self.cfg.commit_readings)
        started = time.perf_counter()
        try:
            rows = await encode_rows(self._encoder, pending, self.chunk_max,
                                     self._store.next_seq, self.log)
        except asyncio.CancelledError:
            # nothing was handed to SQLite yet: keep the readings for close() to commit
            self._put_back(pending, acks)
            self._acks_committing = []
            raise
        try:
            await self._write(rows, pending, acks)
        except (sqlite3.DatabaseError, OSError) as exc:  # OSError: the seq side file (ENOSPC)
            self._put_back(pending, acks)  # nothing was written
            await self._write_failed(exc, pending, acks)
            return False
        finally:
            self._acks_committing = []
        self._written(started)
        await self._enforce_limits()
        if rows:
            self._new.set()
        self._update_gauges()
        return True

    def _take(self, size: int) -> tuple[list[Reading], list[int]]:
        """The next slice of pending readings and every ack, now committing."""
        pending = self._pending[:size]
        del self._pending[:size]
        acks, self._acks = self._acks, []
        self._acks_committing = acks
        if len(self._pending) < self.high_water:
            self._room.set()
        return pending, acks

    def _put_back(self, pending: list[Reading], acks: list[int]) -> None:
        """Not committed: back in front of what arrived meanwhile, order kept."""
        self._pending[:0] = pending
        self._acks[:0] = acks

    async def _write(self, rows: list[Row], pending: list[Reading], acks: list[int]) -> None:
        """One SQLite transaction in the buffer's thread; raises with nothing written."""
        commit = asyncio.ensure_future(self._call(self._store.commit, rows, acks))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            # The SQLite thread ends this commit whatever happens to this task: wait for it,
            # or the next flush numbers readings from the old seq (a UNIQUE failure) while
            # these are neither pending nor known to be stored.
            await asyncio.wait([commit])
            if commit.exception() is not None:  # nothing was written: back in front
                self._put_back(pending, acks)
            raise

    async def _write_failed(self, exc: sqlite3.DatabaseError | OSError,
                            pending: list[Reading], acks: list[int]) -> None:
        """Count and log a failed commit; free space after "disk full"; recover corruption."""
        # devices keep polling while SQLite cannot write: the oldest readings waiting in
        # memory are dropped (and counted) at MAX_PENDING, never a device's fresh ones
        self._room.set()
        self._write_failures += 1
        self.metrics.buffer_write_errors.inc()
        self.log.error("buffer commit failed; keeping readings in memory and retrying",
                       error=str(exc), pending=len(self._pending),
                       attempt=self._write_failures)
        if "full" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
            await self._call(self._store.relieve)
            if acks and pending:
                # deleting what the broker already has frees pages for the rest
                with contextlib.suppress(sqlite3.DatabaseError, OSError):
                    await self._call(self._store.commit, [], acks)
                    self._acks = self._acks[len(acks):]
        if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
            await self._call(self._store.recover, str(exc))

    def _written(self, started: float) -> None:
        """A commit succeeded: count it, and say so once after failures."""
        if self._write_failures:
            self.log.info("buffer writes recovered", after_failures=self._write_failures)
        self._write_failures = 0
        self.metrics.buffer_commits.inc()
        self.metrics.buffer_commit_duration.observe(time.perf_counter() - started)

    async def _enforce_limits(self) -> None:
        """Drop the oldest chunks beyond `max_bytes`/`max_age`, counted, for a drop notice."""
        try:
            dropped = await self._call(self._store.enforce_limits, self.cfg.max_bytes,
                                       self.cfg.max_age) if self._over_limits() else {}
        except (sqlite3.DatabaseError, OSError) as exc:
            dropped = {}
            self.metrics.buffer_write_errors.inc()
            self.log.error("buffer could not drop old readings; will retry", error=str(exc))
        if dropped:
            self.drops_changed.set()
        for reason, n in dropped.items():
            self.metrics.buffer_dropped.labels(reason=reason).inc(n)
            self.log.warning("buffer over its limit: dropped the oldest readings",
                             reason=reason, dropped=n, max_bytes=self.cfg.max_bytes)

    def _over_limits(self) -> bool:
        """Whether `enforce_limits` may drop something: saves a trip to the SQLite thread
        per commit (it checks again there, on the same figures)."""
        s = self._store
        if s.bytes > self.cfg.max_bytes:
            return True
        max_age = self.cfg.max_age
        return max_age is not None and s.oldest_ms is not None and \
            s.oldest_ms < now_ms() - int(max_age * 1000)

    # -- figures -----------------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        s = self._store
        m = self.metrics
        m.buffer_readings.set(s.readings)
        m.buffer_bytes.set(s.bytes)
        m.buffer_pending.set(len(self._pending))
        m.buffer_oldest_age.set(0 if s.oldest_ms is None
                                else max(0.0, (now_ms() - s.oldest_ms) / 1000))

    async def refresh_gauges(self) -> None:
        """Update the gauges that change with time (oldest age, file size)."""
        self._update_gauges()
        self.metrics.buffer_file_bytes.set(await self._call(self._store.file_bytes))

    async def stats(self) -> BufferStats:
        """Current figures."""
        s = self._store
        return BufferStats(readings=s.readings, chunks=s.chunks, bytes=s.bytes,
                           file_bytes=await self._call(s.file_bytes),
                           oldest_age_seconds=None if s.oldest_ms is None
                           else max(0.0, (now_ms() - s.oldest_ms) / 1000),
                           next_seq=s.next_seq, pending=len(self._pending))

    @staticmethod
    def _in_transaction(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection, T], None],
                        arg: T) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db, arg)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _on_db(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(db, *args)` on the SQLite thread, with the database open now (after recovery)."""
        db = self._store.db
        assert db is not None
        return fn(db, *args)

    async def close(self) -> None:
        """Commit what is pending, then close the database and its thread."""
        if self.is_open:
            await self.flush()
            await self._call(self._store.close)
            self.is_open = False
        self._pool.shutdown(wait=True)
