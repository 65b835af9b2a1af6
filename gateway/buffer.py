"""The durable buffer: readings accepted into SQLite, handed to the uplink, deleted on PUBACK.

Layout (measured, see bench/pipeline.py): one row per *chunk*, a run of up to
`max_readings` consecutive readings of one device, stored as the JSON text of its items.
A row per reading costs an index entry, a Python tuple and a JSON encode per reading on
every pass; a chunk is written once and published as is, so the uplink only joins strings.

Sequence numbers are assigned when a chunk is committed: strictly increasing, never reused.
The next `seq` lives in the database (`meta.next_seq`, committed with the chunks) and a
reservation above it lives in a side file `<path>.seq` (fsynced before any seq beyond it is
handed out), so a database that is deleted or found corrupt restarts above every seq ever
issued.

All SQLite work runs on one dedicated thread: a commit with `synchronous=full` waits for
fsync, which must not stall the event loop and every device poll with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from structlog.typing import FilteringBoundLogger

from gateway import notices
from gateway.config import BufferSection
from gateway.errors import FatalError
from gateway.metrics import Metrics
from gateway.model import Reading, now_ms

SCHEMA_VERSION = 2
SEQ_RESERVE = 1_000_000
"""How far above the next seq the side file reserves; one fsync per this many readings."""
TOTALS_SQL = ("SELECT COALESCE(SUM(last-first+1),0), COUNT(*), COALESCE(SUM(LENGTH(body)),0),"
              " MIN(accepted) FROM chunks")
"""Readings, chunks, bytes and the oldest accept time of a buffer (also `buffer stats`)."""

YIELD_S = 0.002
"""Longest stretch of encoding in a commit before other tasks get the loop."""

MAX_PENDING = 500_000
"""Readings held in memory while SQLite cannot write (disk full); beyond it the oldest go."""

T = TypeVar("T")

_CREATE_PRIVATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags for files the buffer creates: new, owner-only (mode 0600), never through a link."""

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive readings of one device, as stored: seqs `first..last`, JSON items text."""

    first: int
    last: int
    device: str
    accepted_ms: int
    body: str

    @property
    def count(self) -> int:
        """Readings in the chunk."""
        return self.last - self.first + 1


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


_QUALITIES = frozenset({"good", "uncertain", "bad"})


class ChunkEncoder:
    """Encodes the readings of one device as the JSON items of a chunk, without dicts.

    Formatting strings directly is 2.4x faster than `json.dumps` of a list of dicts
    (measured 1.9 vs 4.7 us per reading). The device is encoded once per chunk and each
    (metric, unit) pair once per agent, as two ready fragments; the readings of one poll
    share one `ts` object, so its text and the `quality` tail are made once per poll, not
    per reading. A reading then costs one dict lookup, its value's text and one f-string
    (0.9 us measured, from 1.2). Floats that JSON cannot hold (NaN, infinity) become `null`
    with quality `bad`; values of other types become JSON strings.
    """

    def __init__(self) -> None:
        self._fragments: dict[tuple[str, str | None], tuple[str, str]] = {}

    def _fragment(self, metric: str, unit: str | None) -> tuple[str, str]:
        frag = (f',"metric":{_dumps(metric)},"value":',
                f',"unit":{"null" if unit is None else _dumps(unit)},"ts":')
        if len(self._fragments) < 200_000:  # bounded: names come from config, not data
            self._fragments[(metric, unit)] = frag
        return frag

    def encode(self, first: int, readings: Sequence[Reading]) -> str:
        """Comma-separated JSON objects for seqs `first`, `first+1`, ... (one device)."""
        if not readings:
            return ""
        head = f',"device":{_dumps(readings[0].device)}'
        fragments = self._fragments
        isfinite = math.isfinite
        parts: list[str] = []
        append = parts.append
        seq = first
        last_ts: object = None
        tails: dict[str, str] = {}
        for _device, metric, v, ts, unit, given in readings:
            quality = given
            frag = fragments.get((metric, unit))
            if frag is None:
                frag = self._fragment(metric, unit)
            tv = type(v)
            if tv is float:
                if isfinite(v):  # type: ignore[arg-type]
                    vs = repr(v)
                else:
                    vs, quality = "null", "bad"
            elif tv is int:
                vs = repr(v)
            elif v is None:
                vs = "null"
            elif tv is bool:
                vs = "true" if v else "false"
            elif tv is str:
                vs = _dumps(v)
            else:
                vs = _dumps(str(v))
            if ts is not last_ts:
                # `:d` makes a ts that is not an int raise instead of writing invalid JSON;
                # the same object again (one poll's readings) was checked already
                tails = {"good": f'{ts:d},"quality":"good"}}'}
                last_ts = ts
            tail = tails.get(quality)
            if tail is None:
                if quality not in _QUALITIES:
                    raise ValueError(f"quality {quality!r}")
                tail = tails[quality] = f'{ts:d},"quality":"{quality}"}}'
            append(f'{{"seq":{seq}{head}{frag[0]}{vs}{frag[1]}{tail}')
            seq += 1
        return ",".join(parts)


def sanitize(r: Reading) -> Reading:
    """A reading with fields of the types the payload needs (driver bugs); quality `bad`."""
    try:
        ts = int(r.ts)
    except (TypeError, ValueError, OverflowError):
        ts = now_ms()
    return Reading(str(r.device), str(r.metric), None if r.value is None else str(r.value), ts,
                   None if r.unit is None else str(r.unit), "bad")


def group_chunks(pending: Sequence[Reading], chunk_max: int) -> list[list[Reading]]:
    """Readings split into runs of one device, at most `chunk_max` long, arrival order kept."""
    by_device: dict[str, list[Reading]] = defaultdict(list)
    for r in pending:
        by_device[r.device].append(r)
    return [readings[i:i + chunk_max] for readings in by_device.values()
            for i in range(0, len(readings), chunk_max)]


def read_side_file(seq_path: Path, log: FilteringBoundLogger | None = None) -> int:
    """The seq reservation in `<buffer>.seq` (0 when missing or unreadable)."""
    try:
        return int(seq_path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:
        if log is not None:
            log.warning("seq reservation file unreadable; trusting the database",
                        path=str(seq_path), error=str(exc))
        return 0


def resume_seq(db_next: int, reserved: int, *, trust_db: bool) -> int:
    """The first seq an agent opening the buffer hands out.

    `db_next` is what the database says (its `next_seq`, above its last chunk), `reserved`
    the side file's reservation. A new (or reset) database knows nothing, and with
    synchronous=normal a power cut may have rolled back commits already published: then
    the agent starts above every seq ever reserved (the side file is fsynced before any seq
    beyond it is issued). Only a database committed with synchronous=full is trusted.
    """
    return db_next if trust_db else max(db_next, reserved)


def seq_side_path(path: Path) -> Path:
    """The seq reservation file beside a buffer file."""
    return path.with_name(path.name + ".seq")


class _Corrupt(sqlite3.DatabaseError):
    """The integrity check failed."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Whether an SQLite error means the file is damaged (not busy, read-only or full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, _Corrupt) or code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class _Store:
    """The SQLite file and the seq side file; used only from the buffer's thread."""

    def __init__(self, cfg: BufferSection, log: FilteringBoundLogger, metrics: Metrics) -> None:
        self.cfg = cfg
        self.path = cfg.path
        self.seq_path = seq_side_path(cfg.path)
        self.log = log
        self.metrics = metrics
        self.db: sqlite3.Connection | None = None
        self.next_seq = 1
        self.reserved = 0
        self.readings = 0
        self.chunks = 0
        self.bytes = 0
        self.oldest_ms: int | None = None

    # -- open, check, recover ----------------------------------------------------------------
    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalError(f"cannot create the buffer directory {self.path.parent}: "
                             f"{exc.strerror}") from None
        try:
            self._open_checked()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                # read-only, locked, disk full, I/O error: the readings in it are fine;
                # stop with a clear message rather than set the backlog aside
                raise FatalError(f"cannot open the buffer {self.path}: {exc}") from None
            self._move_aside(str(exc))
            self._open_checked()

    def _open_checked(self) -> None:
        fresh = not self.path.exists()
        if fresh:
            # SQLite creates files 0644 (less the umask) and its -wal and -shm files copy
            # the database's mode: create the database owner-only first, outside systemd too
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, _CREATE_PRIVATE, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.cfg.synchronous.upper()}")
            db.execute("PRAGMA busy_timeout=5000")
            # Keep the WAL small: checkpoint every 256 pages (1 MiB) rather than SQLite's 4 MiB,
            # and shrink the file back after a checkpoint. On a nearly full disk a large WAL
            # fills it alone, and no checkpoint can then find room to free it.
            db.execute("PRAGMA wal_autocheckpoint=256")
            db.execute("PRAGMA journal_size_limit=2097152")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Corrupt(f"quick_check: {check}")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        self.db = db
        row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        db_next = int(row[0]) if row else 1
        last = db.execute("SELECT MAX(last) FROM chunks").fetchone()[0]
        if last is not None:
            db_next = max(db_next, int(last) + 1)
        side = read_side_file(self.seq_path, self.log)
        self.next_seq = resume_seq(db_next, side, trust_db=not fresh and row is not None
                                   and self.cfg.synchronous == "full")
        self.reserved = side
        self._reserve(0)
        self.readings, self.chunks, self.bytes, self.oldest_ms = db.execute(
            TOTALS_SQL).fetchone()
        self.log.info("buffer opened", path=str(self.path), readings=self.readings,
                      next_seq=self.next_seq, fresh=fresh)

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise FatalError(f"buffer {self.path} has schema {version}, newer than this "
                             f"parkgate understands ({SCHEMA_VERSION}); upgrade parkgate")
        db.execute("BEGIN IMMEDIATE")
        try:
            if version < 1:
                db.execute("CREATE TABLE IF NOT EXISTS chunks (first INTEGER PRIMARY KEY,"
                           " last INTEGER NOT NULL, device TEXT NOT NULL,"
                           " accepted INTEGER NOT NULL, body TEXT NOT NULL)")
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY,"
                           " value INTEGER NOT NULL)")
            if version < 2:  # seqs dropped on purpose, until their notice is acknowledged
                notices.create_table(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        self.metrics.buffer_corruptions.inc()
        self.log.error("buffer file is corrupt or unreadable: moved aside, starting a new one;"
                       " readings in it are not sent", reason=reason, moved_to=str(aside))

    def _reserve(self, count: int) -> None:
        """Make sure seqs up to next_seq+count are covered by the fsynced side file."""
        if self.next_seq + count <= self.reserved:
            return
        target = self.next_seq + count + SEQ_RESERVE
        tmp = self.seq_path.with_name(self.seq_path.name + ".tmp")
        # A leftover (a crash between write and rename) or a planted symlink goes first;
        # unlinking a symlink removes the link, never its target. O_EXCL then refuses
        # anything created in between instead of writing through it.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, _CREATE_PRIVATE, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{target}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.seq_path)
        dir_fd = os.open(self.seq_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.reserved = target

    def relieve(self) -> None:
        """After "disk full": move the WAL into the database file and truncate it.

        On a small disk the WAL can fill it before SQLite's automatic checkpoint (at 1,000
        pages) ever runs; then every write fails, even after space is freed elsewhere.
        """
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.db.close()
            self.db = None

    # -- write ---------------------------------------------------------------------------------
    def commit(self, rows: list[tuple[int, int, str, int, str]], acks: list[int]
               ) -> int:
        """Insert encoded chunks and delete acknowledged ones in one transaction.

        Returns the readings deleted by acks. Raises sqlite3 errors with nothing changed
        (the transaction is rolled back).
        """
        db = self.db
        assert db is not None
        next_seq = rows[-1][1] + 1 if rows else self.next_seq
        added = next_seq - self.next_seq
        self._reserve(added)
        added_bytes = sum(len(r[4]) for r in rows)
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = deleted_bytes = deleted_chunks = 0
            if acks:
                deleted, deleted_bytes, deleted_chunks = self._delete(db, acks)
            if rows:
                db.executemany("INSERT INTO chunks VALUES (?,?,?,?,?)", rows)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (next_seq,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.next_seq = next_seq
        self.readings += added - deleted
        self.chunks += len(rows) - deleted_chunks
        self.bytes += added_bytes - deleted_bytes
        if rows and self.oldest_ms is None:
            self.oldest_ms = rows[0][3]
        if deleted:
            self._refresh_oldest(db)
        return int(deleted)

    def _delete(self, db: sqlite3.Connection, firsts: list[int]) -> tuple[int, int, int]:
        readings = nbytes = chunks = 0
        for i in range(0, len(firsts), 500):
            part = firsts[i:i + 500]
            marks = ",".join("?" * len(part))
            # only "?" placeholders are formatted into these statements
            where = f" FROM chunks WHERE first IN ({marks})"
            n, b, c = db.execute("SELECT COALESCE(SUM(last-first+1),0),"
                                 " COALESCE(SUM(LENGTH(body)),0), COUNT(*)" + where,
                                 part).fetchone()
            db.execute("DELETE" + where, part)
            readings += n
            nbytes += b
            chunks += c
        return readings, nbytes, chunks

    def _refresh_oldest(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT accepted FROM chunks ORDER BY first LIMIT 1").fetchone()
        self.oldest_ms = int(row[0]) if row else None

    def enforce_limits(self, max_bytes: int, max_age: float | None) -> dict[str, int]:
        """Drop the oldest chunks beyond the size cap or age; returns readings per reason."""
        db = self.db
        assert db is not None
        dropped: dict[str, int] = {}
        if max_age is not None and self.oldest_ms is not None:
            cutoff = now_ms() - int(max_age * 1000)
            if self.oldest_ms < cutoff:
                firsts = [r[0] for r in db.execute(
                    "SELECT first FROM chunks WHERE accepted < ? ORDER BY first", (cutoff,))]
                dropped["max_age"] = self._drop(db, firsts, "max_age")
        if self.bytes > max_bytes:
            excess = self.bytes - int(max_bytes * 0.95)  # hysteresis: not one chunk per commit
            firsts, total = [], 0
            for first, size in db.execute("SELECT first, LENGTH(body) FROM chunks ORDER BY first"):
                firsts.append(first)
                total += size
                if total >= excess:
                    break
            dropped["max_bytes"] = self._drop(db, firsts, "max_bytes")
        return {k: v for k, v in dropped.items() if v}

    def _drop(self, db: sqlite3.Connection, firsts: list[int], reason: str) -> int:
        """Delete chunks and record their seqs for a drop notice, in one transaction."""
        if not firsts:
            return 0
        db.execute("BEGIN IMMEDIATE")
        try:
            notices.record(db, [notices.DropRange(f, la, reason)
                                for f, la in notices.chunk_ranges(db, firsts)])
            n, b, c = self._delete(db, firsts)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.readings -= n
        self.bytes -= b
        self.chunks -= c
        self._refresh_oldest(db)
        return int(n)

    # -- read ----------------------------------------------------------------------------------
    def fetch(self, start: int, stop: int | None, limit: int,
              device: str | None = None) -> list[Chunk]:
        db = self.db
        assert db is not None
        if device is not None:  # rare (a re-read after a refusal): a scan is fine
            cur = db.execute("SELECT first, last, device, accepted, body FROM chunks"
                             " WHERE first >= ? AND first < ? AND device = ?"
                             " ORDER BY first LIMIT ?",
                             (start, stop if stop is not None else 2**63 - 1, device, limit))
        elif stop is None:
            cur = db.execute("SELECT first, last, device, accepted, body FROM chunks"
                             " WHERE first >= ? ORDER BY first LIMIT ?", (start, limit))
        else:
            cur = db.execute("SELECT first, last, device, accepted, body FROM chunks"
                             " WHERE first >= ? AND first < ? ORDER BY first LIMIT ?",
                             (start, stop, limit))
        return [Chunk(*row) for row in cur]

    def readings_outside(self, devices: Sequence[str]) -> int:
        db = self.db
        assert db is not None
        total = self.readings
        for device in devices:
            total -= db.execute("SELECT COALESCE(SUM(last - first + 1), 0) FROM chunks"
                                " WHERE device = ?", (device,)).fetchone()[0]
        return int(total)

    def file_bytes(self) -> int:
        return file_bytes(self.path)


def file_bytes(path: Path) -> int:
    """Size of a buffer file with its write-ahead log."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += Path(str(path) + suffix).stat().st_size
    return total


class Buffer:
    """Accepts readings from drivers, commits them durably, serves them to the uplink.

    `add()` is synchronous and cheap; `run()` is the commit task. The uplink awaits
    `changed`, reads with `fetch()` and reports PUBACKs with `ack()`.
    """

    def __init__(self, cfg: BufferSection, *, chunk_max: int, metrics: Metrics,
                 log: FilteringBoundLogger) -> None:
        self.cfg = cfg
        self.chunk_max = chunk_max
        self.metrics = metrics
        self.log = log
        self._store = _Store(cfg, log, metrics)
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
        self.changed = asyncio.Event()
        """Set after every commit that added readings; the uplink clears it."""
        self.is_open = False
        self._write_failures = 0
        self.drops_changed = asyncio.Event()
        """Set when seqs were dropped on purpose (a drop notice to send); the uplink clears it."""

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        """Open (and check, or recover) the database."""
        await self._call(self._store.open)
        self.is_open = True
        self._update_gauges()
        if self._store.readings:
            self.changed.set()  # resume sending what was not acknowledged before

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

    def ack(self, firsts: Sequence[int]) -> None:
        """Chunks (by first seq) the broker acknowledged; deleted at the next commit."""
        self._acks.extend(firsts)

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
        queue never ends, and the uplink (which flushes its acks before reading) would wait
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
        size = self.cfg.commit_readings
        pending = self._pending[:size]
        del self._pending[:size]
        acks, self._acks = self._acks, []
        self._acks_committing = acks
        if len(self._pending) < self.high_water:
            self._room.set()
        started = time.perf_counter()
        # Encoding runs here on the loop, a slice at a time with a yield in between: in
        # the SQLite thread it holds the GIL in long stretches, and in one piece it blocks
        # the loop for tens of ms; both make device polls late (see bench/pipeline.py).
        # A yield after every YIELD_S of encoding, not after every chunk: with 100 meters
        # that was a full loop pass for every 100 readings encoded.
        rows: list[tuple[int, int, str, int, str]] = []
        seq = self._store.next_seq
        accepted = now_ms()
        clock = time.perf_counter
        slice_end = clock() + YIELD_S
        try:
            for part in group_chunks(pending, self.chunk_max):
                try:
                    body = self._encoder.encode(seq, part)
                except (TypeError, ValueError):  # a driver bug must not stop the agent
                    body = self._encoder.encode(seq, [sanitize(r) for r in part])
                    self.log.error("a driver produced malformed readings; sent as bad "
                                   "quality", device=str(part[0].device))
                rows.append((seq, seq + len(part) - 1, str(part[0].device), accepted, body))
                seq += len(part)
                if clock() >= slice_end:
                    await asyncio.sleep(0)
                    slice_end = clock() + YIELD_S
        except asyncio.CancelledError:
            # nothing was handed to SQLite yet: keep the readings for close() to commit
            self._pending[:0] = pending
            self._acks[:0] = acks
            self._acks_committing = []
            raise
        commit = asyncio.ensure_future(self._call(self._store.commit, rows, acks))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            # The SQLite thread ends this commit whatever happens to this task: wait for it,
            # or the next flush numbers readings from the old seq (a UNIQUE failure) while
            # these are neither pending nor known to be stored.
            await asyncio.wait([commit])
            if commit.exception() is not None:  # nothing was written: back in front
                self._pending[:0] = pending
                self._acks[:0] = acks
            raise
        except (sqlite3.DatabaseError, OSError) as exc:  # OSError: the seq side file (ENOSPC)
            # nothing was written: put it back in front of what arrived meanwhile
            self._pending[:0] = pending
            self._acks[:0] = acks
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
                await self._call(self._recover, str(exc))
            return False
        finally:
            self._acks_committing = []
        if self._write_failures:
            self.log.info("buffer writes recovered", after_failures=self._write_failures)
        self._write_failures = 0
        self.metrics.buffer_commits.inc()
        self.metrics.buffer_commit_duration.observe(time.perf_counter() - started)
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
        if rows:
            self.changed.set()
        self._update_gauges()
        return True

    def _over_limits(self) -> bool:
        """Whether `enforce_limits` may drop something: saves a trip to the SQLite thread
        per commit (it checks again there, on the same figures)."""
        s = self._store
        if s.bytes > self.cfg.max_bytes:
            return True
        max_age = self.cfg.max_age
        return max_age is not None and s.oldest_ms is not None and \
            s.oldest_ms < now_ms() - int(max_age * 1000)

    def _recover(self, reason: str) -> None:
        self._store.close()
        self._store._move_aside(reason)
        self._store.open()

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

    # -- drop notices (gateway/notices.py) -----------------------------------------------------
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

    async def pending_drops(self, limit: int) -> list[notices.DropRange]:
        """Up to `limit` dropped seq ranges whose notice the broker has not acknowledged."""
        ranges: list[notices.DropRange] = await self._call(self._on_db, notices.pending, limit)
        return ranges

    async def drops_sent(self, ranges: Sequence[notices.DropRange]) -> None:
        """The broker acknowledged a notice of these ranges: forget them."""
        await self._call(self._on_db, self._in_transaction, notices.acknowledged, list(ranges))

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
