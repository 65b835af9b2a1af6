"""The seam between the durable buffer and the uplink: `ChunkSource` and `DropSource`.

The uplink reads stored chunks through these two small protocols only, so its scheduling
(backlog and live streams, holds of refused devices) is tested against an in-memory fake
(gateway/buffer/memory.py) and every implementation passes one contract suite
(tests/core/test_chunk_source_contract.py).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.notices import DropRange


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive readings of one device, as stored: seqs `first..last`, JSON items text."""

    first: int
    last: int
    device: str
    accepted_ms: int
    body: str

    @property
    def count(self) -> int:
        """Readings in the chunk."""
        return self.last - self.first + 1


class ChunkSource(Protocol):
    """Stored chunks, oldest first, for the uplink to publish and acknowledge."""

    @property
    def next_seq(self) -> int:
        """The seq the next stored reading will get: the backlog is everything below it."""
        ...

    async def wait_new(self) -> None:
        """Return once chunks were stored since the previous call returned (at once when
        some were, also when stored chunks were found at open)."""
        ...

    async def read(self, start: int, stop: int | None, limit: int,
                   device: str | None = None) -> list[Chunk]:
        """Up to `limit` chunks with `start <= first < stop` (of `device`), oldest first.

        Chunks already acknowledged (`ack`) are never returned, also before they are deleted.
        Fewer than `limit` chunks means none more were stored in that range.
        """
        ...

    def ack(self, firsts: Sequence[int]) -> None:
        """The broker has these chunks (by first seq): delete them (at the next commit)."""
        ...

    async def settle(self, excluding: Collection[str] = ()) -> int:
        """Commit what is waiting (readings and acks); readings still unsent, not counting
        the stored ones of the devices in `excluding`."""
        ...


class DropSource(Protocol):
    """Seq ranges dropped on purpose whose drop notice the broker has not acknowledged."""

    async def record_dropped(self, ranges: Sequence[tuple[int, int]], reason: str) -> None:
        """Record seqs (inclusive ranges) dropped on purpose, durably, before their `ack`."""
        ...

    async def pending_drops(self, limit: int) -> list[DropRange]:
        """Up to `limit` dropped ranges whose notice the broker has not acknowledged."""
        ...

    async def drops_sent(self, ranges: Sequence[DropRange]) -> None:
        """The broker acknowledged a notice of these ranges: forget them."""
        ...

    async def wait_drops(self) -> None:
        """Return once drops were recorded since the previous call returned."""
        ...
