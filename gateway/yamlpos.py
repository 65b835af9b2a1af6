"""Where things are in a loaded YAML document: (line, col) of any key, value or item.

Kept apart from the loader (gateway/yamlload.py): the loader fills `Pos` records while it
builds the values, and `Positions` answers a location's place only when a problem must be
reported.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

Loc = tuple[str | int, ...]
"""A dotted location in a document: keys and item indexes."""


@dataclass(slots=True)
class Pos:
    """Where a mapping's keys and values, or a sequence's items, are (packed line, col)."""

    keys: dict[Hashable, tuple[int, int]] | None
    """key -> (key position, value position) for a mapping."""
    items: list[int] | None
    """Item positions for a sequence."""


def unpack(packed: int) -> tuple[int, int]:
    return packed >> 24, packed & (2**24 - 1)


class Positions:
    """(line, col) of any location in a loaded document, 1-based, found on demand.

    Holds the document's containers alive; drop it once the problems are reported.
    """

    def __init__(self, root: Any, index: dict[int, Pos]) -> None:
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
        return None if found is None else unpack(found)


def _lookup(keys: dict[Hashable, tuple[int, int]], part: str | int
            ) -> tuple[Hashable, tuple[int, int]] | None:
    if part in keys:
        return part, keys[part]
    for k, v in keys.items():  # a location from pydantic names a key by its str()
        if str(k) == str(part):
            return k, v
    return None
