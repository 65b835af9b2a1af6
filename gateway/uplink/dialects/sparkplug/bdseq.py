"""The Sparkplug `bdSeq`: one value per MQTT session, never the previous session's.

A host pairs an NDEATH with the NBIRTH of the same `bdSeq`; a will still pending at the
broker from the session before a restart must not match the new session's birth, or the
host would take the old session's death for the new one's. So the value is taken *before*
each CONNECT and written to a small file next to the buffer (temporary file, fsync,
rename, fsync of the directory): after a kill -9 or a power cut the next start reads the
last value taken and goes on from there. A file that cannot be read starts again from a
random value, which makes a match with a pending will unlikely, not impossible: logged.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def bdseq_path(buffer_path: Path) -> Path:
    """`{buffer}.sparkplug-bdseq` next to the buffer."""
    return buffer_path.with_name(buffer_path.name + ".sparkplug-bdseq")


class BdSeq:
    """The persisted counter; `next()` before each CONNECT."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.problem: str | None = None
        """Why the last value could not be read or written (None when it could)."""
        self.last = self._read()

    def _read(self) -> int | None:
        if self.path is None:
            return None
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            self.problem = f"cannot read {self.path}: {exc}"
            return secrets.randbelow(256)
        if text.isdigit() and int(text) < 256:
            return int(text)
        self.problem = f"{self.path} holds {text[:20]!r}, not a bdSeq: starting anew"
        return secrets.randbelow(256)

    def next(self) -> int:
        """The next value (0-255, wrapping), durably written before it is returned."""
        value = 0 if self.last is None else (self.last + 1) % 256
        self.last = value
        if self.path is not None:
            try:
                self._write(value)
                self.problem = None
            except OSError as exc:
                self.problem = f"cannot write {self.path}: {exc}"
        return value

    def _write(self, value: int) -> None:
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):  # the rename is durable once the directory is
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
