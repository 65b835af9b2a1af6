"""Opening a SQLite file of ours: owner-only creation, WAL, integrity check, schema version.

Shared by the buffer (gateway/buffer/store.py) and the command ledger
(gateway/commands/ledger.py); each keeps its own schema, error wording and recovery policy.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from gateway.errors import FatalError

_CREATE_PRIVATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Corrupt(sqlite3.DatabaseError):
    """The integrity check failed."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Whether an SQLite error means the file is damaged (not busy, read-only or full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, Corrupt) or code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def create_private(path: Path) -> None:
    """Create `path` empty and owner-only if it does not exist yet.

    SQLite creates files 0644 (less the umask) and its -wal and -shm files copy the
    database's mode: create the database owner-only first, outside systemd too.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, _CREATE_PRIVATE, 0o600))


def connect_checked(path: Path, *, pragmas: tuple[str, ...],
                    check_same_thread: bool) -> sqlite3.Connection:
    """Connect in WAL mode (autocommit), apply `pragmas`, run quick_check (`Corrupt`)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        for pragma in pragmas:
            db.execute(f"PRAGMA {pragma}")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise Corrupt(f"quick_check: {check}")
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, version: int, what: str,
            steps: Callable[[sqlite3.Connection, int], None]) -> None:
    """Bring `db` to schema `version` in one transaction: `steps(db, current)` runs the DDL.

    A newer schema than `version` is a `FatalError` naming `what` (e.g. "buffer PATH").
    """
    current = db.execute("PRAGMA user_version").fetchone()[0]
    if current == version:
        return
    if current > version:
        raise FatalError(f"{what} has schema {current}, newer than this parkgate "
                         f"understands ({version}); upgrade parkgate")
    db.execute("BEGIN IMMEDIATE")
    try:
        steps(db, current)
        db.execute(f"PRAGMA user_version={version}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def move_aside(path: Path) -> Path:
    """Rename a database and its -wal and -shm files to `<name>.corrupt-<UTC stamp>`."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside
