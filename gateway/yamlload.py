"""A bounded YAML reader: plain Python values plus the position of every key and item.

Built on PyYAML's event stream (libyaml's C parser where available) instead of a node tree:
one pass, no per-value node or mark kept, so a 10,000-register site loads in a fraction of a
second and leaves nothing behind but the values. Every cost a hostile or careless file can
cause is bounded here, before anything walks the result:

* aliases are shared, never copied, and every use counts the size of what it stands for, so
  a "billion laughs" file stops at `Limits.nodes` after reading a few hundred bytes;
* nesting deeper than `Limits.depth` and more than `Limits.nodes` values in all stop the load;
* scalars resolve by the YAML 1.2 core schema (`yes`, `on` and `0755` stay what they look
  like: a string and the number 755); a tag other than the standard ones is refused.

A `Scalars` callback sees each string value with its dotted location as it is built (the
config uses it for `${...}` substitution, once per written value even when an alias repeats
it).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import yaml

Loc = tuple[str | int, ...]
Scalars = Callable[[str, Loc], str]
"""Called with each string value (not keys) and its location; returns the value to keep."""

# libyaml's parser when the wheel has it (PyYAML wheels for aarch64 and x86_64 do); the
# pure-Python parser gives the same events, only some 30x slower
_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map",
                                           "seq")} | {"!"}
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False,
         "FALSE": False}
_INT = re.compile(r"[-+]?[0-9][0-9_]*|0o[0-7_]+|0x[0-9a-fA-F_]+|0b[01_]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")
_INTERN_MAX = 64
"""Short strings are interned: a site repeats `holding`, `uint16` and `r17` thousands of
times, and the resolved register map keeps some of them."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one config file may cost."""

    nodes: int = 250_000
    """Values in all, counting every alias use as the size of what it stands for
    (10,000 inline registers are about 52,000)."""
    depth: int = 32
    """Nesting of mappings and sequences (a config needs 6)."""


class YamlProblem(Exception):  # noqa: N818 - a problem report, not an error taxonomy entry
    """The text is not YAML we load; `line` and `col` are 1-based."""

    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.col = col
        self.message = message


@dataclass(slots=True)
class _Pos:
    """Where a mapping's keys and values, or a sequence's items, are (packed line, col)."""

    keys: dict[Hashable, tuple[int, int]] | None
    """key -> (key position, value position) for a mapping."""
    items: list[int] | None
    """Item positions for a sequence."""


def _pack(line: int, col: int) -> int:
    return (line << 24) | min(col, 2**24 - 1)


def _unpack(packed: int) -> tuple[int, int]:
    return packed >> 24, packed & (2**24 - 1)


class Positions:
    """(line, col) of any location in a loaded document, 1-based, found on demand.

    Holds the document's containers alive; drop it once the problems are reported.
    """

    def __init__(self, root: Any, index: dict[int, _Pos]) -> None:
        self._root = root
        self._index = index

    def find(self, loc: Loc, *, key: bool = False) -> tuple[int, int] | None:
        """Position of the value at `loc` (of its key with `key`), or of the deepest known
        location above it; None when not even the first step is known."""
        node: Any = self._root
        found: int | None = None
        for depth, part in enumerate(loc):
            pos = self._index.get(id(node))
            last = depth == len(loc) - 1
            if pos is None:
                break
            if pos.keys is not None and isinstance(node, dict):
                hit = _lookup(pos.keys, part)
                if hit is None:
                    break
                real_key, (kpos, vpos) = hit
                found = kpos if (last and key) else vpos
                node = node.get(real_key)
            elif pos.items is not None and isinstance(node, list) and isinstance(part, int):
                if not 0 <= part < len(pos.items):
                    break
                found = pos.items[part]
                node = node[part]
            else:
                break
        return None if found is None else _unpack(found)


def _lookup(keys: dict[Hashable, tuple[int, int]], part: str | int
            ) -> tuple[Hashable, tuple[int, int]] | None:
    if part in keys:
        return part, keys[part]
    for k, v in keys.items():  # a location from pydantic names a key by its str()
        if str(k) == str(part):
            return k, v
    return None


@dataclass(slots=True)
class _Frame:
    container: dict[Any, Any] | list[Any]
    pos: _Pos
    loc: Loc
    anchor: str | None
    start: int
    """`_Builder.count` when the container started: its size is the difference at its end."""
    start_pos: int = 0
    key: Any = None
    key_pos: int = 0
    has_key: bool = False
    merges: list[tuple[Any, int]] | None = None


_MISSING = object()


class _Builder:
    def __init__(self, text: str, limits: Limits, scalars: Scalars | None) -> None:
        self.text = text
        self.limits = limits
        self.scalars = scalars
        self.count = 0
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.index: dict[int, _Pos] = {}
        self.stack: list[_Frame] = []

    def fail(self, mark: Any, message: str) -> YamlProblem:
        return YamlProblem(mark.line + 1, mark.column + 1, message)

    def grow(self, n: int, mark: Any) -> None:
        self.count += n
        if self.count > self.limits.nodes:
            raise self.fail(mark, f"more than {self.limits.nodes:,} values (counting what "
                                  "each alias * repeats): a config this large is a mistake, "
                                  "or aliases that multiply")

    def loc(self) -> Loc:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.container, list):
            return (*top.loc, len(top.container))
        if top.has_key:
            return (*top.loc, top.key if isinstance(top.key, str | int) else str(top.key))
        return top.loc

    def build(self) -> tuple[Any, Positions]:
        loader = _Loader(self.text)
        try:
            root: Any = _MISSING
            documents = 0
            while True:
                event = loader.get_event()
                if event is None or isinstance(event, yaml.StreamEndEvent):
                    break
                if isinstance(event, yaml.DocumentStartEvent):
                    documents += 1
                    if documents > 1:
                        raise self.fail(event.start_mark, "only one YAML document is allowed "
                                                          "(a second one starts here)")
                    continue
                if isinstance(event, yaml.StreamStartEvent | yaml.DocumentEndEvent):
                    continue
                done = self.event(event)
                if done is not _MISSING:
                    root = done
        finally:
            loader.dispose()
        return (None if root is _MISSING else root), Positions(
            None if root is _MISSING else root, self.index)

    def event(self, event: Any) -> Any:
        """Feed one event; returns the root value once it is complete."""
        mark = event.start_mark
        if isinstance(event, yaml.ScalarEvent):
            is_key = bool(self.stack) and isinstance(self.stack[-1].container, dict) and \
                not self.stack[-1].has_key
            value = self.scalar(event, is_key)
            self.grow(1, mark)
            if event.anchor:
                self.anchors[event.anchor] = (value, 1)
            return self.add(value, mark)
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is None:
                raise self.fail(mark, f"alias *{event.anchor} has no anchor &{event.anchor} "
                                      "before it")
            value, size = target
            self.grow(size, mark)
            return self.add(value, mark)
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self.check_tag(event.tag, mark)
            if len(self.stack) >= self.limits.depth:
                raise self.fail(mark, f"nested deeper than {self.limits.depth} levels")
            self.grow(1, mark)
            mapping = isinstance(event, yaml.MappingStartEvent)
            container: dict[Any, Any] | list[Any] = {} if mapping else []
            pos = _Pos({} if mapping else None, None if mapping else [])
            self.index[id(container)] = pos
            # the frame's own position is known to its parent: add() records it at the end
            self.stack.append(_Frame(container, pos, self.loc(), event.anchor, self.count - 1))
            self.stack[-1].start_pos = _pack(mark.line + 1, mark.column + 1)
            return _MISSING
        if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            frame = self.stack.pop()
            if frame.merges:
                self.merge(frame, mark)
            if frame.anchor:
                self.anchors[frame.anchor] = (frame.container, self.count - frame.start)
            line, col = _unpack(frame.start_pos)
            return self.add(frame.container, _Mark(line - 1, col - 1))
        raise self.fail(mark, f"unexpected YAML event {type(event).__name__}")

    def check_tag(self, tag: str | None, mark: Any) -> None:
        if tag is not None and tag not in _TAGS:
            raise self.fail(mark, f"YAML tag {tag} is not supported here (write the value "
                                  "without a tag)")

    def scalar(self, event: Any, is_key: bool) -> Any:
        self.check_tag(event.tag, event.start_mark)
        text: str = event.value
        tag = event.tag
        if tag is None and event.implicit[0]:  # plain: resolve by the YAML 1.2 core schema
            value = _resolve(text)
        elif tag is None or tag in (_STR, "!"):
            value = text
        else:
            value = _typed(tag, text)
            if value is _MISSING:
                raise self.fail(event.start_mark, f"{text!r} is not a valid {tag.rsplit(':')[-1]}")
        if isinstance(value, str):
            if not is_key and self.scalars is not None and "$" in value:
                value = self.scalars(value, self.loc())
            if len(value) <= _INTERN_MAX:
                value = sys.intern(value)
        return value

    def add(self, value: Any, mark: Any) -> Any:
        """Put a finished value into the open container (or return it as the root)."""
        packed = _pack(mark.line + 1, mark.column + 1)
        if not self.stack:
            return value
        top = self.stack[-1]
        if isinstance(top.container, list):
            assert top.pos.items is not None
            top.container.append(value)
            top.pos.items.append(packed)
            return _MISSING
        if not top.has_key:
            if isinstance(value, dict | list):
                raise self.fail(mark, "a key must be a plain value, not a mapping or a list")
            top.key, top.key_pos, top.has_key = value, packed, True
            return _MISSING
        key, kpos = top.key, top.key_pos
        top.has_key = False
        assert top.pos.keys is not None
        if key == "<<":
            top.merges = [*(top.merges or []), (value, kpos)]
            return _MISSING
        if key in top.container:
            kline, kcol = _unpack(top.pos.keys[key][0])
            line, col = _unpack(kpos)
            raise YamlProblem(line, col, f"duplicate key {key!r} (first at line {kline}, "
                                         f"column {kcol})")
        top.container[key] = value
        top.pos.keys[key] = (kpos, packed)
        return _MISSING

    def merge(self, frame: _Frame, mark: Any) -> None:
        """`<<: *defaults` (or a list of them): keys the mapping does not set itself."""
        assert isinstance(frame.container, dict) and frame.pos.keys is not None
        for value, kpos in frame.merges or ():
            sources = value if isinstance(value, list) else [value]
            for source in sources:
                if not isinstance(source, dict):
                    line, col = _unpack(kpos)
                    raise YamlProblem(line, col, "<< merges mappings only (write <<: *name "
                                                 "with an anchored mapping)")
                for k, v in source.items():
                    if k not in frame.container:
                        frame.container[k] = v
                        frame.pos.keys[k] = (kpos, kpos)


@dataclass(frozen=True, slots=True)
class _Mark:
    line: int
    column: int


def _resolve(text: str) -> Any:
    """A plain scalar by the YAML 1.2 core schema."""
    if text in _NULL:
        return None
    first = text[0]
    if first not in "0123456789+-.tTfFnN~":
        return text
    if text in _BOOL:
        return _BOOL[text]
    if _INT.fullmatch(text):
        return _int(text)
    if _FLOAT.fullmatch(text) or _INF.fullmatch(text) or _NAN.fullmatch(text):
        return _float(text)
    return text


def _int(text: str) -> int:
    digits = text.replace("_", "")
    for prefix, base in (("0o", 8), ("0x", 16), ("0b", 2)):
        if digits.startswith(prefix):
            return int(digits[2:] or "0", base)
    return int(digits)


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(text.replace("_", ""))


def _typed(tag: str, text: str) -> Any:
    """A scalar with an explicit standard tag (`!!int 5`); _MISSING when it does not fit."""
    kind = tag.rsplit(":", 1)[-1]
    resolved = _resolve(text)
    if kind == "null":
        return None if text in _NULL else _MISSING
    if kind == "bool":
        return resolved if isinstance(resolved, bool) else _MISSING
    if kind == "int":
        return resolved if isinstance(resolved, int) and not isinstance(resolved, bool) \
            else _MISSING
    if kind == "float":
        if isinstance(resolved, int | float) and not isinstance(resolved, bool):
            return float(resolved)
        return _MISSING
    return _MISSING  # !!map / !!seq on a scalar


def load_yaml(text: str, *, limits: Limits | None = None, scalars: Scalars | None = None
              ) -> tuple[Any, Positions]:
    """Parse one YAML document into dicts, lists and scalars, with positions.

    Raises `YamlProblem` for text that is not YAML, or that breaks `limits`.
    """
    builder = _Builder(text, limits or Limits(), scalars)
    try:
        return builder.build()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise YamlProblem(mark.line + 1 if mark else 1, mark.column + 1 if mark else 1,
                          f"YAML syntax error: {what}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ...)
        pos = max(0, min(int(exc.position), len(text)))
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(str(char)[:1] or "\0")
        raise YamlProblem(line, col, f"character U+{code:04X} is not allowed in a YAML file "
                                     "(a binary or corrupted file?)") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, 1, f"cannot parse YAML: {exc}") from None
