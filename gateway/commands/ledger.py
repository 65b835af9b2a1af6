"""Which requests were seen, and what became of them: a small SQLite file of its own.

A request id is written (status unknown) *before* the request is carried out and its
outcome after. A crash between the two (kill -9, power cut while a write is on the bus)
leaves an id without an outcome; a later delivery of that id is answered `duplicate` with
"outcome unknown" and is not carried out. That makes commands at most once rather than at
least once, on purpose: a repeated write can do harm (a relative step, a pump started
twice, a min_interval broken), while a command that may have been lost is visible to the
operator, who reads the point and sends a new request with a new id.

Rows are kept while a request could still be valid: `max(ts, received) + max_age` plus
`MARGIN_MS` for clock steps, then pruned. The file uses WAL and `synchronous=FULL`, not
NORMAL as the buffer may: NORMAL survives kill -9 but may lose the last commit on power
loss, and losing the "started" row would let a re-delivered write run twice. Commands are
rare; one fsync each costs milliseconds. If the file is corrupt it is moved aside and a
new one remembers since when it knows every request: older requests are refused, since
nobody can tell whether they ran.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from structlog.typing import FilteringBoundLogger

from gateway.commands.request import Outcome, Request
from gateway.errors import FatalError
from gateway.model import now_ms
from gateway.sqlitedb import connect_checked, create_private, is_corruption, migrate, move_aside

SCHEMA_VERSION = 1
MARGIN_MS = 3_600_000
"""Rows outlive their validity by an hour: a clock stepped back must not revive an id."""
PRUNE_EVERY_MS = 60_000
T = TypeVar("T")


def _schema(db: sqlite3.Connection, since: int) -> None:
    """The ledger's DDL (inside `migrate`'s transaction); `since` starts its memory."""
    db.execute("CREATE TABLE requests (id TEXT PRIMARY KEY, digest BLOB NOT NULL,"
               " device TEXT NOT NULL, action TEXT NOT NULL, ts INTEGER NOT NULL,"
               " received INTEGER NOT NULL, keep_until INTEGER NOT NULL,"
               " outcome TEXT) WITHOUT ROWID")
    db.execute("CREATE INDEX requests_keep ON requests (keep_until)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    # a file at version 0 recorded no request yet (the schema commits first)
    db.execute("INSERT INTO meta VALUES ('since', ?)", (since,))


def ledger_path(buffer_path: Path) -> Path:
    """The ledger next to the buffer: `<buffer>.commands.db`."""
    return buffer_path.with_name(buffer_path.name + ".commands.db")


@dataclass(frozen=True, slots=True)
class Seen:
    """A request id met before."""

    outcome: Outcome | None
    """The first delivery's outcome; None if the gateway stopped before it was known."""
    same: bool
    """The same request (same canonical form) rather than another one reusing the id."""
    received: int


class Ledger:
    """Request ids and their first outcome; every call runs in the ledger's own thread."""

    def __init__(self, path: Path, max_age: float, log: FilteringBoundLogger, *,
                 clock: Any = now_ms) -> None:
        self.path = path
        self.keep_ms = round(max_age * 1000) + MARGIN_MS
        self.log = log
        self.clock = clock
        self.since = 0
        """Epoch ms since which every request seen is recorded (0: since the beginning)."""
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parkgate-ledger")
        self._last_prune = 0

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- open --------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open (create, migrate, check) the file; a corrupt one is moved aside."""
        await self._call(self._open)

    def _open(self) -> None:
        try:
            try:
                self._open_checked()
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                self._move_aside(str(exc))
                self._open_checked(since=self.clock())
        except (sqlite3.DatabaseError, OSError) as exc:
            # locked, read-only, no space, no permission: the file is fine, we cannot use it
            raise FatalError(f"cannot open the command ledger {self.path}: {exc}") from None

    def _open_checked(self, since: int = 0) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)
        db = connect_checked(self.path, check_same_thread=False,
                             pragmas=("synchronous=FULL", "busy_timeout=2000"))
        try:
            migrate(db, SCHEMA_VERSION, f"command ledger {self.path}",
                    lambda db, _version: _schema(db, since))
            self.since = int(db.execute("SELECT value FROM meta WHERE key='since'")
                             .fetchone()[0])
        except BaseException:
            db.close()
            raise
        self._db = db
        self._prune()

    def _move_aside(self, reason: str) -> None:
        aside = move_aside(self.path)
        self.log.error("command ledger is corrupt: moved aside, starting a new one; requests "
                       "signed before now are refused (whether they ran is unknown)",
                       reason=reason, moved_to=str(aside))

    # -- use ---------------------------------------------------------------------------------
    async def claim(self, req: Request) -> Seen | None:
        """Record `req` as started (durably) and return None, or return what was seen."""
        result: Seen | None = await self._call(self._claim, req)
        return result

    def _claim(self, req: Request) -> Seen | None:
        db = self._db
        assert db is not None, "open() the ledger first"
        now = self.clock()
        if now - self._last_prune > PRUNE_EVERY_MS:
            self._prune()
        digest = hashlib.sha256(req.canonical).digest()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT digest, outcome, received FROM requests WHERE id=?",
                             (req.id,)).fetchone()
            if row is None:
                db.execute("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                           (req.id, digest, req.device, req.action, req.ts, now,
                            max(req.ts, now) + self.keep_ms))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if row is None:
            return None
        outcome = Outcome.from_json(row[1]) if row[1] is not None else None
        return Seen(outcome, bytes(row[0]) == digest, int(row[2]))

    async def finish(self, req: Request, outcome: Outcome) -> None:
        """Record the outcome of a request claimed before."""
        await self._call(self._finish, req.id, outcome.to_json())

    def _finish(self, req_id: str, outcome: str) -> None:
        assert self._db is not None
        self._db.execute("UPDATE requests SET outcome=? WHERE id=?", (outcome, req_id))

    def _prune(self) -> None:
        assert self._db is not None
        now = self.clock()
        gone = self._db.execute("DELETE FROM requests WHERE keep_until < ?", (now,)).rowcount
        self._last_prune = now
        if gone:
            self.log.debug("command ledger pruned", rows=gone)

    async def count(self) -> int:
        """Rows held (for tests and stats)."""
        def rows() -> int:
            assert self._db is not None
            return int(self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])
        result: int = await self._call(rows)
        return result

    async def close(self) -> None:
        """Close the file and the ledger's thread."""
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._call(close)
        self._pool.shutdown(wait=True)
