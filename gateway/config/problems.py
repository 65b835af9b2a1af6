"""What is wrong with a config file: `Problem`s placed at FILE:LINE:COL, secrets masked.

A `Reporter` collects them for one file (pydantic's errors made friendly, did-you-mean
hints for misspelt keys, at most MAX_PROBLEMS listed); `ConfigProblems` carries them out.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.errors import ConfigError
from gateway.redact import Masker
from gateway.yamlload import YamlProblem
from gateway.yamlpos import Loc, Positions


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        # one problem is one line whatever a key, a value or a parser message holds, and no
        # character of the file reaches the terminal as a control sequence (ESC, BEL, ...)
        return (f"{printable(self.file)}:{self.line}:{self.col}: {printable(self.path)}: "
                f"{printable(self.message)}")


def printable(text: str) -> str:
    """`text` with every control, format and line-separator character escaped the way
    Python writes it in a string literal (\\n, \\x1b, \\u2028)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] if char in "\t\n\r"
                   else ascii(char)[1:-1] for char in text)


class ConfigProblems(ConfigError):
    """A config file with one or more problems; `str()` lists them one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _friendly(err: Mapping[str, Any], model_fields: list[str]) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        close = difflib.get_close_matches(key, model_fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found at `loc` (for did-you-mean hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type)
                                         and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            break
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type)
                        and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


MAX_PROBLEMS = 100
"""Problems listed in full; past them a file is not worth reading further (and a machine-made
file with 35,000 misspelt keys would cost seconds of did-you-mean searches)."""


class Reporter:
    """Collects `Problem`s for one file: placed by position (found only when needed),
    secrets masked, at most MAX_PROBLEMS listed."""

    def __init__(self, file: str, positions: Callable[[], Positions] | None = None) -> None:
        self.file = file
        self.find_positions = positions
        self.positions: Positions | None = None
        self.problems: list[Problem] = []
        self.mask = Masker()
        self.unlisted = 0

    @property
    def full(self) -> bool:
        """MAX_PROBLEMS listed: count the rest, do not place or explain them."""
        return len(self.problems) >= MAX_PROBLEMS

    def result(self) -> ConfigProblems:
        """The problems in file order, and a last line when some were not listed."""
        problems = sorted(self.problems, key=lambda p: (p.line, p.col))
        if self.full:
            more = f"{self.unlisted:,} more problems" if self.unlisted else "more problems"
            problems.append(Problem(self.file, 1, 1, "(file)",
                                    f"{more} not listed after the first {MAX_PROBLEMS}: fix "
                                    "these and check again"))
        return ConfigProblems(problems)

    def where(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        if self.positions is None and self.find_positions is not None:
            self.positions = self.find_positions()  # only a file with problems pays for them
        found = self.positions.find(loc, key=key) if self.positions else None
        return found or (1, 1)

    def add(self, loc: Loc, message: str, *, key: bool = False) -> None:
        if self.full:
            self.unlisted += 1
            return
        line, col = self.where(loc, key=key)
        path = ".".join(str(p) for p in loc) or "(top)"
        # messages may echo a value (in a repr, too); never a substituted secret
        self.problems.append(Problem(self.file, line, col, self.mask(path), self.mask(message)))

    def add_validation(self, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
        for err in exc.errors(include_url=False, include_input=False):
            if self.full:
                self.unlisted += 1
                continue
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(
                "function-")))
            parent = loc[:-1] if loc else ()
            fields = _fields_at(model, parent) if err["type"] == "extra_forbidden" else []
            if err["type"] == "missing":
                # point at the mapping that lacks the key, not at its first child
                line, col = self.where((*prefix, *parent), key=True)
                path = ".".join(str(p) for p in (*prefix, *loc))
                self.problems.append(Problem(self.file, line, col, self.mask(path),
                                             "required key is missing"))
                continue
            self.add((*prefix, *loc), _friendly(err, fields),
                     key=err["type"] == "extra_forbidden")


def yaml_problem(path: Path, text: str, exc: YamlProblem) -> ConfigProblems:
    """A YAML syntax or limit error as the one problem of its file."""
    message = exc.message
    lines = text.splitlines()
    if "syntax error" in message and 0 < exc.line <= len(lines) and "${" in lines[exc.line - 1]:
        message += (" (inside {...} or [...], put quotes around a value that uses "
                    '${...}, as in "${NAME}")')
    return ConfigProblems([Problem(str(path), exc.line, exc.col, "(yaml)", message)])
