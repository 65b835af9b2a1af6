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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from gateway.yamlpos import Loc, Pos, Positions, unpack

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
_PLAIN_CACHE = 4096
_INTERN_MAX = 64
"""Short strings are interned: a site repeats `holding`, `uint16` and `r17` thousands of
times, and the resolved register map keeps some of them."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one config file may cost."""

    nodes: int = 250_000
    """Keys and values in all, counting every alias use as the size of what it stands for
    (a site of 100 devices x 100 inline registers has 92,000)."""
    depth: int = 32
    """Nesting of mappings and sequences (a config needs 6)."""


class YamlProblem(Exception):
    """The text is not YAML we load; `line` and `col` are 1-based."""

    def __init__(self, line: int, col: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.col = col
        self.message = message


@dataclass(slots=True)
class _Frame:
    container: dict[Any, Any] | list[Any]
    pos: Pos
    loc: Loc
    anchor: str | None
    start: int
    """`_Builder.count` when the container started: its size is the difference at its end."""
    start_pos: int
    is_list: bool
    key: Any = None
    key_pos: int = 0
    has_key: bool = False
    merges: list[tuple[Any, int]] | None = None


_MISSING = object()
_SCALAR = yaml.ScalarEvent
_ALIAS = yaml.AliasEvent
_MAP_START = yaml.MappingStartEvent
_SEQ_START = yaml.SequenceStartEvent
_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
_PLAIN_STRING_START = frozenset("0123456789+-.tTfFnN~")


class _NeedPositions(Exception):  # control flow inside this module, not an error
    """Raised by a pass that keeps no positions when its message needs them."""


_NO_POS = Pos(None, None)


class _Builder:
    """One pass over the events; a loop with locals because it runs once per value."""

    def __init__(self, text: str, limits: Limits, scalars: Scalars | None, track: bool
                 ) -> None:
        self.text = text
        self.limits = limits
        self.scalars = scalars
        self.track = track
        self.count = 0
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.index: dict[int, Pos] = {}
        self.stack: list[_Frame] = []

    def fail(self, mark: Any, message: str) -> YamlProblem:
        return YamlProblem(mark.line + 1, mark.column + 1, message)

    def too_many(self, mark: Any) -> YamlProblem:
        return self.fail(mark, f"more than {self.limits.nodes:,} values (counting what each "
                               "alias * repeats): a config this large is a mistake, or "
                               "aliases that multiply")

    def loc(self) -> Loc:
        """Where the next value goes."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.is_list:
            return (*top.loc, len(top.container))
        if top.has_key:
            return (*top.loc, top.key if isinstance(top.key, str | int) else str(top.key))
        return top.loc

    def build(self) -> tuple[Any, Positions]:
        loader = _Loader(self.text)
        try:
            root = self._run(loader.get_event)
        finally:
            loader.dispose()
        return root, Positions(root, self.index)

    def _run(self, get_event: Callable[[], Any]) -> Any:
        stack = self.stack
        anchors = self.anchors
        index = self.index
        max_nodes = self.limits.nodes
        max_depth = self.limits.depth
        scalars = self.scalars
        track = self.track
        intern = sys.intern
        plain: dict[str, Any] = {}  # a site repeats `holding`, `uint16`, `1s` and `0`..`99`
        root: Any = None
        documents = 0
        while True:
            event = get_event()
            cls = type(event)
            mark = event.start_mark
            if cls is _SCALAR:
                tag = event.tag
                text = event.value
                if tag is None and event.implicit[0]:  # plain: the YAML 1.2 core schema
                    value = plain.get(text, _MISSING)
                    if value is _MISSING:
                        value = _resolve(text) if (not text or text[0] in _PLAIN_STRING_START) \
                            else text
                        if value.__class__ is str and len(value) <= _INTERN_MAX:
                            value = intern(value)
                        if len(plain) < _PLAIN_CACHE and "$" not in text:
                            plain[text] = value
                elif tag is None or tag in (_STR, "!"):
                    value = text
                else:
                    self.check_tag(tag, mark)
                    value = _typed(tag, text)
                    if value is _MISSING:
                        raise self.fail(mark, f"{text!r} is not a valid {tag.rsplit(':')[-1]}")
                if value.__class__ is str:
                    if scalars is not None and "$" in value and stack and (
                            stack[-1].is_list or stack[-1].has_key):  # values, not keys
                        value = scalars(value, self.loc())
                    if len(value) <= _INTERN_MAX:
                        value = intern(value)
                self.count += 1
                if self.count > max_nodes:
                    raise self.too_many(mark)
                if event.anchor:
                    anchors[event.anchor] = (value, 1)
            elif cls is _ALIAS:
                target = anchors.get(event.anchor)
                if target is None:
                    raise self.fail(mark, f"alias *{event.anchor} has no anchor "
                                          f"&{event.anchor} before it")
                value, size = target
                self.count += size
                if self.count > max_nodes:
                    raise self.too_many(mark)
            elif cls is _MAP_START or cls is _SEQ_START:
                self.check_tag(event.tag, mark)
                if len(stack) >= max_depth:
                    raise self.fail(mark, f"nested deeper than {max_depth} levels")
                self.count += 1
                if self.count > max_nodes:
                    raise self.too_many(mark)
                is_list = cls is _SEQ_START
                container: dict[Any, Any] | list[Any] = [] if is_list else {}
                if track:
                    pos = Pos(None, []) if is_list else Pos({}, None)
                    index[id(container)] = pos
                else:
                    pos = _NO_POS
                stack.append(_Frame(container, pos, self.loc(), event.anchor, self.count - 1,
                                    ((mark.line + 1) << 24) | (mark.column + 1), is_list))
                continue
            elif cls in _ENDS:
                frame = stack.pop()
                if frame.merges:
                    self.merge(frame)
                value = frame.container
                if frame.anchor:
                    anchors[frame.anchor] = (value, self.count - frame.start)
                packed = frame.start_pos
                if not stack:
                    root = value
                    continue
                self.add(stack[-1], value, packed)
                continue
            elif cls is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise self.fail(mark, "only one YAML document is allowed (a second one "
                                          "starts here)")
                continue
            elif cls is yaml.StreamEndEvent or event is None:
                return root
            else:
                continue
            # a scalar or an alias: into the open container
            packed = ((mark.line + 1) << 24) | (mark.column + 1)
            if not stack:
                root = value
                continue
            top = stack[-1]
            if top.is_list:
                top.container.append(value)  # type: ignore[union-attr]
                if track:
                    top.pos.items.append(packed)  # type: ignore[union-attr]
            elif not top.has_key:
                if value.__class__ is dict or value.__class__ is list:
                    raise self.fail(mark, "a key must be a plain value, not a mapping or a list")
                top.key, top.key_pos, top.has_key = value, packed, True
            else:
                self.add(top, value, packed)

    def check_tag(self, tag: str | None, mark: Any) -> None:
        if tag is not None and tag not in _TAGS:
            raise self.fail(mark, f"YAML tag {tag} is not supported here (write the value "
                                  "without a tag)")

    def add(self, top: _Frame, value: Any, packed: int) -> None:
        """Put a finished value into the open container."""
        if top.is_list:
            top.container.append(value)  # type: ignore[union-attr]
            if self.track:
                top.pos.items.append(packed)  # type: ignore[union-attr]
            return
        if not top.has_key:
            line, col = unpack(packed)
            raise YamlProblem(line, col, "a key must be a plain value, not a mapping or a list")
        key, kpos = top.key, top.key_pos
        top.has_key = False
        keys = top.pos.keys
        assert isinstance(top.container, dict)
        if key == "<<":
            top.merges = [*(top.merges or []), (value, kpos)]
            return
        if key in top.container:
            if keys is None:
                raise _NeedPositions  # to say where the first one is
            kline, kcol = unpack(keys[key][0])
            line, col = unpack(kpos)
            raise YamlProblem(line, col, f"duplicate key {key!r} (first at line {kline}, "
                                         f"column {kcol})")
        top.container[key] = value
        if keys is not None:
            keys[key] = (kpos, packed)

    def merge(self, frame: _Frame) -> None:
        """`<<: *defaults` (or a list of them): keys the mapping does not set itself."""
        assert isinstance(frame.container, dict)
        for value, kpos in frame.merges or ():
            sources = value if isinstance(value, list) else [value]
            for source in sources:
                if not isinstance(source, dict):
                    line, col = unpack(kpos)
                    raise YamlProblem(line, col, "<< merges mappings only (write <<: *name "
                                                 "with an anchored mapping)")
                for k, v in source.items():
                    if k not in frame.container:
                        frame.container[k] = v
                        if frame.pos.keys is not None:
                            frame.pos.keys[k] = (kpos, kpos)


def _resolve(text: str) -> Any:
    """A plain scalar by the YAML 1.2 core schema."""
    if text in _NULL:
        return None
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


def load_yaml(text: str, *, limits: Limits | None = None, scalars: Scalars | None = None,
              positions: bool = True) -> tuple[Any, Positions]:
    """Parse one YAML document into dicts, lists and scalars, with positions.

    Without `positions` the pass keeps none (a third faster; a valid file needs none):
    the Positions returned then know nothing, and `load_yaml(text)` again finds them
    when a problem must be placed. Raises `YamlProblem` for text that is not YAML, or that
    breaks `limits`.
    """
    try:
        try:
            return _Builder(text, limits or Limits(), scalars, positions).build()
        except _NeedPositions:
            return _Builder(text, limits or Limits(), scalars, True).build()
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
