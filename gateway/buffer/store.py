"""The SQLite store: schema, migrations, integrity check, recovery, chunk rows and totals.

Used only from the buffer's SQLite thread (see gateway/buffer/core.py). One row per
*chunk* (a run of up to `max_readings` consecutive readings of one device, stored as the
JSON text of its items, gateway/buffer/encoder.py); `meta.next_seq` is committed with them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from gateway import notices
from gateway.buffer.encoder import Row
from gateway.buffer.seqfile import (
    read_side_file,
    reserve,
    resume_seq,
    seq_side_path,
)
from gateway.buffer.source import Chunk
from gateway.config import BufferSection
from gateway.errors import FatalError
from gateway.metrics import Metrics
from gateway.model import now_ms
from gateway.sqlitedb import (
    connect_checked,
    create_private,
    is_corruption,
    migrate,
    move_aside,
)

SCHEMA_VERSION = 2
TOTALS_SQL = ("SELECT COALESCE(SUM(last-first+1),0), COUNT(*), COALESCE(SUM(LENGTH(body)),0),"
              " MIN(accepted) FROM chunks")
"""Readings, chunks, bytes and the oldest accept time of a buffer (also `buffer stats`)."""


@dataclass(frozen=True, slots=True)
class StoredStats:
    """What a buffer file holds, read in one go (the agent at open, `buffer stats`)."""

    readings: int
    chunks: int
    bytes: int
    oldest_ms: int | None
    db_next: int
    """The next seq by the database: its `meta.next_seq`, at least above its last chunk."""
    has_meta: bool
    """Whether the database recorded a `next_seq` (it committed readings at least once)."""

    def next_seq(self, reserved: int, *, synchronous: str, fresh: bool = False) -> int:
        """The first seq an agent opening this file hands out (see `resume_seq`)."""
        return resume_seq(self.db_next, reserved,
                          trust_db=not fresh and self.has_meta and synchronous == "full")


def read_stats(db: sqlite3.Connection) -> StoredStats:
    """Totals and next seq of an open buffer database (read only)."""
    readings, chunks, size, oldest = db.execute(TOTALS_SQL).fetchone()
    last = db.execute("SELECT MAX(last) FROM chunks").fetchone()[0]
    row = db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
    db_next = int(row[0]) if row else 1
    if last is not None:
        db_next = max(db_next, int(last) + 1)
    return StoredStats(int(readings), int(chunks), int(size),
                       None if oldest is None else int(oldest), db_next, row is not None)


def _schema(db: sqlite3.Connection, version: int) -> None:
    """The buffer's DDL from schema `version` up (inside `migrate`'s transaction)."""
    if version < 1:
        db.execute("CREATE TABLE IF NOT EXISTS chunks (first INTEGER PRIMARY KEY,"
                   " last INTEGER NOT NULL, device TEXT NOT NULL,"
                   " accepted INTEGER NOT NULL, body TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY,"
                   " value INTEGER NOT NULL)")
    if version < 2:  # seqs dropped on purpose, until their notice is acknowledged
        notices.create_table(db)


class Store:
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
            create_private(self.path)
        # Keep the WAL small: checkpoint every 256 pages (1 MiB) rather than SQLite's 4 MiB,
        # and shrink the file back after a checkpoint. On a nearly full disk a large WAL
        # fills it alone, and no checkpoint can then find room to free it.
        db = connect_checked(self.path, check_same_thread=True, pragmas=(
            f"synchronous={self.cfg.synchronous.upper()}", "busy_timeout=5000",
            "wal_autocheckpoint=256", "journal_size_limit=2097152"))
        try:
            migrate(db, SCHEMA_VERSION, f"buffer {self.path}", _schema)
        except BaseException:
            db.close()
            raise
        self.db = db
        stats = read_stats(db)
        side = read_side_file(self.seq_path, self.log)
        self.next_seq = stats.next_seq(side, synchronous=self.cfg.synchronous, fresh=fresh)
        self.reserved = side
        self._reserve(0)
        self.readings, self.chunks, self.bytes, self.oldest_ms = (
            stats.readings, stats.chunks, stats.bytes, stats.oldest_ms)
        self.log.info("buffer opened", path=str(self.path), readings=self.readings,
                      next_seq=self.next_seq, fresh=fresh)

    def recover(self, reason: str) -> None:
        """Close a damaged database, move it aside and open a new one (readings in it are
        not sent; seqs continue above the side file's reservation)."""
        self.close()
        self._move_aside(reason)
        self.open()

    def _move_aside(self, reason: str) -> None:
        aside = move_aside(self.path)
        self.metrics.buffer_corruptions.inc()
        self.log.error("buffer file is corrupt or unreadable: moved aside, starting a new one;"
                       " readings in it are not sent", reason=reason, moved_to=str(aside))

    def _reserve(self, count: int) -> None:
        """Make sure seqs up to next_seq+count are covered by the fsynced side file."""
        self.reserved = reserve(self.seq_path, self.next_seq, count, self.reserved)

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
    def commit(self, rows: list[Row], acks: list[int]) -> int:
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
