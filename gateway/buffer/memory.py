"""An in-memory `ChunkSource` and `DropSource`: nothing durable, for tests and fakes.

It passes the same contract suite as the SQLite buffer (tests/core/test_chunk_source_contract.py),
so the uplink's scheduling is unit tested against it (tests/core/test_scheduler.py), and
work on commands or dialects can drive an uplink without SQLite.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Collection, Sequence

from gateway import notices
from gateway.buffer.encoder import ChunkEncoder, group_chunks
from gateway.buffer.source import Chunk
from gateway.model import Reading, now_ms


class MemorySource:
    """Chunks in a sorted list; acks applied at `settle()`, like the buffer's next commit."""

    def __init__(self, *, chunk_max: int = 500) -> None:
        self.chunk_max = chunk_max
        self._firsts: list[int] = []
        self._chunks: dict[int, Chunk] = {}
        self._next = 1
        self._acks: list[int] = []
        self._new = asyncio.Event()
        self._drops: list[notices.DropRange] = []
        self._drops_new = asyncio.Event()
        self._encoder = ChunkEncoder()
        self.reads = 0
        """Calls of `read` (how often the uplink went to the store)."""

    # -- filling (what drivers and the commit loop do for the real buffer) -------------------
    def store(self, readings: Sequence[Reading], *, accepted_ms: int | None = None
              ) -> list[Chunk]:
        """Readings stored at once, as the buffer's commit would: chunks of one device."""
        accepted = now_ms() if accepted_ms is None else accepted_ms
        out: list[Chunk] = []
        for part in group_chunks(readings, self.chunk_max):
            first = self._next
            chunk = Chunk(first, first + len(part) - 1, part[0].device, accepted,
                          self._encoder.encode(first, part))
            self._firsts.append(first)
            self._chunks[first] = chunk
            self._next = chunk.last + 1
            out.append(chunk)
        if out:
            self._new.set()
        return out

    def chunks(self) -> list[Chunk]:
        """Every stored chunk, acknowledged ones until `settle()` included."""
        return [self._chunks[f] for f in self._firsts]

    # -- ChunkSource ---------------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The seq the next stored reading gets."""
        return self._next

    async def wait_new(self) -> None:
        """Return once chunks were stored since the previous call returned."""
        await self._new.wait()
        self._new.clear()

    async def read(self, start: int, stop: int | None, limit: int,
                   device: str | None = None) -> list[Chunk]:
        """Up to `limit` chunks in `[start, stop)`, acknowledged ones left out."""
        self.reads += 1
        acked = set(self._acks)
        out: list[Chunk] = []
        for first in self._firsts[bisect.bisect_left(self._firsts, start):]:
            if len(out) >= limit or (stop is not None and first >= stop):
                break
            chunk = self._chunks[first]
            if first in acked or (device is not None and chunk.device != device):
                continue
            out.append(chunk)
        return out

    def ack(self, firsts: Sequence[int]) -> None:
        """Delete these chunks at the next `settle()`."""
        self._acks.extend(firsts)

    async def settle(self, excluding: Collection[str] = ()) -> int:
        """Apply acks; readings left, not counting those of `excluding`."""
        for first in self._acks:
            if self._chunks.pop(first, None) is not None:
                self._firsts.remove(first)
        self._acks.clear()
        return sum(c.count for c in self._chunks.values() if c.device not in excluding)

    # -- DropSource ------------------------------------------------------------------------------
    async def record_dropped(self, ranges: Sequence[tuple[int, int]], reason: str) -> None:
        """Record seqs dropped on purpose."""
        if ranges:
            self._drops = notices.coalesce([*self._drops, *(notices.DropRange(f, la, reason)
                                                            for f, la in ranges)])
            self._drops_new.set()

    async def pending_drops(self, limit: int) -> list[notices.DropRange]:
        """The oldest `limit` ranges not yet announced."""
        return self._drops[:limit]

    async def drops_sent(self, ranges: Sequence[notices.DropRange]) -> None:
        """Forget what an acknowledged notice announced."""
        self._drops = notices.subtract(self._drops, ranges)

    async def wait_drops(self) -> None:
        """Return once drops were recorded since the previous call returned."""
        await self._drops_new.wait()
        self._drops_new.clear()
