"""`${ENV}`, `${ENV:-default}` and `${file:/path}` in config values; `$$` is a literal `$`.

Every substituted value is a secret as far as logs and problem lines go. Reading is bounded:
a secret file must be a regular file of at most `MAX_SECRET_BYTES` of UTF-8 (so
`${file:/dev/zero}` or a FIFO is a clear problem, not gigabytes or a hang), each file is read
once however often it is named, and all substitutions together add at most
`MAX_SUBSTITUTED_BYTES`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from gateway.yamlpos import Loc

MAX_SECRET_BYTES = 64 * 1024
MAX_SUBSTITUTED_BYTES = 1024 * 1024

_SUBST = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretFileError(Exception):
    """A `${file:...}` that cannot be used; the message says why, without its content."""


def read_secret_file(path: Path, limit: int = MAX_SECRET_BYTES) -> str:
    """The text of a secret file, without its trailing line break."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecretFileError(f"secret file {path} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SecretFileError(f"cannot read secret file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise SecretFileError(f"secret file {path} is larger than {limit // 1024} KiB "
                              "(a secret is a line of text)")
    data = b"".join(chunks)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretFileError(f"secret file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x}"
                              f" at offset {exc.start})") from None
    return text.rstrip("\r\n")


class Substituter:
    """Substitutes one string value at a time; collects problems and secrets as it goes."""

    def __init__(self, environ: Mapping[str, str] | None = None,
                 budget: int = MAX_SUBSTITUTED_BYTES) -> None:
        self.environ = os.environ if environ is None else environ
        self.budget = budget
        self.problems: list[tuple[Loc, str]] = []
        self.secrets: set[str] = set()
        self.sources: dict[Loc, list[str]] = {}
        """The files substituted into each value, so a problem with one can name it."""
        self._files: dict[str, str | SecretFileError] = {}

    def __call__(self, text: str, loc: Loc) -> str:
        """`text` with every `${...}` replaced (by "" where it cannot be, with a problem)."""

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            value = self._value(m.group(1), loc)
            if value is None:
                return ""
            if len(value) > self.budget:
                message = f"substitutions add more than {MAX_SUBSTITUTED_BYTES // 1024} KiB in all"
                self.problems.append((loc, message))
                self.budget = -1  # report once
                return ""
            self.budget -= len(value)
            if value:
                self.secrets.add(value)
            return value

        return _SUBST.sub(repl, text)

    def _value(self, expr: str, loc: Loc) -> str | None:
        if self.budget < 0:
            return None
        if expr.startswith("file:"):
            name = expr[5:]
            self.sources.setdefault(loc, []).append(name)
            cached = self._files.get(name)
            if cached is None:
                try:
                    cached = read_secret_file(Path(name)) if name else SecretFileError(
                        "${file:} names no file: write ${file:/path/to/secret}")
                except SecretFileError as exc:
                    cached = exc
                self._files[name] = cached
            if isinstance(cached, SecretFileError):
                self.problems.append((loc, str(cached)))
                return None
            return cached
        name, _, default = expr.partition(":-")
        if not _ENV_NAME.match(name):
            message = f"${{{expr}}} is not ${{NAME}}, ${{NAME:-default}} or ${{file:/path}}"
            self.problems.append((loc, message))
            return None
        env = self.environ.get(name)
        if env is None and ":-" not in expr:
            self.problems.append((loc, f"environment variable {name} is not set"))
            return None
        return env if env is not None else default
