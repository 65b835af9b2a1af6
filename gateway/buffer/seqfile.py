"""The seq reservation: a side file `<buffer>.seq` above every seq ever handed out.

The next `seq` lives in the database (`meta.next_seq`, committed with the chunks); a
reservation above it lives in this side file, fsynced before any seq beyond it is handed
out, so a database that is deleted or found corrupt restarts above every seq ever issued.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from structlog.typing import FilteringBoundLogger

SEQ_RESERVE = 1_000_000
"""How far above the next seq the side file reserves; one fsync per this many readings."""

CREATE_PRIVATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
"""Flags for files the buffer creates: new, owner-only (mode 0600), never through a link."""


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


def reserve(seq_path: Path, next_seq: int, count: int, reserved: int) -> int:
    """Make sure seqs up to `next_seq + count` are covered by the fsynced side file.

    Returns the reservation now on disk (`reserved` when it covers them already).
    """
    if next_seq + count <= reserved:
        return reserved
    target = next_seq + count + SEQ_RESERVE
    tmp = seq_path.with_name(seq_path.name + ".tmp")
    # A leftover (a crash between write and rename) or a planted symlink goes first;
    # unlinking a symlink removes the link, never its target. O_EXCL then refuses
    # anything created in between instead of writing through it.
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, CREATE_PRIVATE, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{target}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, seq_path)
    dir_fd = os.open(seq_path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
