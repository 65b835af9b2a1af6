"""Which stored chunks go out next: backlog and live streams, live share, held devices.

Pure policy against a `ChunkSource` (gateway/buffer/source.py) and a `DialectSession`'s
framing; no MQTT here, so the policy is unit tested against the in-memory source
(tests/core/test_scheduler.py).

Backlog policy: when a connection starts, the source's `next_seq` splits the data into a
*backlog* (accepted before, oldest first) and *live* data (accepted since). While a backlog
drains, live data may hold up to `live_share` of the window (at least one slot), so fresh
readings reach the platform within about one round trip even behind hours of old ones.
The platform therefore sees seqs out of order during a drain; it de-duplicates and sorts by
(gateway, seq) and `ts` as usual.

Message size: a batch never exceeds the packet limit the session gives: batches of several
chunks stop short of it, a larger chunk goes in parts (acknowledged in the buffer when
every part is), and a reading that cannot fit on its own is dropped and counted, never
retried.

Refused devices: a chunk of a held device, or of a device the session withholds (a
platform that refused its login), is dropped from its stream (it stays in the buffer) and
the device is marked skipped. When the hold ends, a stream of that device
alone re-reads the buffer below the live cursor, and the other streams leave the device's
chunks below that point to it, so each chunk is still sent once per connection. Holds
outlast connections (the uplink keeps them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.backoff import Backoff
from gateway.batching import pack, split_items
from gateway.buffer.source import Chunk, ChunkSource
from gateway.model import now_ms
from gateway.uplink.dialect import DialectSession
from gateway.uplink.messages import Outgoing

HOLD_BASE = 2.0
HOLD_CAP = 300.0
"""A refused device is retried after 2, 4, 8 ... s (jittered in the upper half), at most
every 5 minutes: an ACL fix shows within minutes, a permanent refusal costs one publish per
device per 5 minutes."""

NOT_READY_S = 1.0
"""How often the scheduler, drop notices and retained states look again while the session
is not ready (Sparkplug: no primary host; a platform's timed fallback); the uplink also
wakes them after every incoming message."""

MIN_FETCH = 16
"""Chunks read from the source at once: twice the window, at least this many. Chunks can
hold `max_readings` readings each (~65 KB at 500), so this bounds the uplink's memory."""


@dataclass(slots=True)
class Stream:
    """A monotonic cursor over stored chunks in [cursor, stop), with a fetched queue.

    Within one connection a chunk is fetched once and sent once; after a reconnect new
    streams start again from the oldest unacknowledged chunk. A stream with a `device`
    re-reads only that device's chunks (after a hold).
    """

    cursor: int
    stop: int | None
    device: str | None = None
    pending: list[Chunk] = field(default_factory=list)
    inflight: int = 0
    at_end: bool = False
    """The last read found nothing more (live: until the source signals new data)."""

    @property
    def exhausted(self) -> bool:
        """Read to its end and nothing left to send."""
        return self.at_end and not self.pending


@dataclass(slots=True)
class Message:
    """Chunks of one device going out together: one message, or the parts of one chunk
    too large for a message (acknowledged in the buffer once every part is)."""

    device: str
    topic: str
    """The device's data topic (also when no part is left: every reading too large)."""
    parts: list[Outgoing]
    firsts: list[int]
    readings: int
    stream: Stream
    too_large: list[int] = field(default_factory=list)
    """Seqs of readings larger than any message may be: dropped when the chunk is acked."""


@dataclass(slots=True)
class Hold:
    """A device whose publishes the broker refused: skipped until `until` (loop time)."""

    # upper-half jitter: many held devices must not line up into frequent retries
    backoff: Backoff = field(
        default_factory=lambda: Backoff(base=HOLD_BASE, cap=HOLD_CAP, low=0.5))
    until: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What the scheduler needs to know of the configuration and the session."""

    window: int
    live_share: float
    max_readings: int
    max_delay: float
    max_packet: int
    v5: bool


def _parts(framed: Outgoing | Sequence[Outgoing]) -> list[Outgoing]:
    """What `frame` returned as a list (one message, or several in order)."""
    return [framed] if isinstance(framed, Outgoing) else list(framed)


def _utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8; without encoding it when it is ASCII (nearly always)."""
    return len(text) if text.isascii() else len(text.encode())


class Scheduler:
    """One connection's streams over a source; `holds` outlive it (the uplink keeps them)."""

    def __init__(self, source: ChunkSource, session: DialectSession, limits: Limits,
                 holds: dict[str, Hold], *, boundary: int,
                 draining: Callable[[], bool] = lambda: False,
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self.source = source
        self.session = session
        self.limits = limits
        self.holds = holds
        self.draining = draining
        self.clock_ms = clock_ms
        self.backlog = Stream(cursor=0, stop=boundary)
        self.live = Stream(cursor=boundary, stop=None)
        self.live_slots = max(1, int(limits.window * limits.live_share))
        self.fetch = max(MIN_FETCH, 2 * limits.window)
        self.inflight_firsts: set[int] = set()
        self.skipped: set[str] = set()
        self.retries: dict[str, Stream] = {}
        self.retry_below: dict[str, int] = {}
        self.became_ready = False
        self.waited = False

    def _rebase(self) -> None:
        """The session may publish for the first time after waiting: what was stored while
        it waited (a Sparkplug primary host not yet online) is backlog too, historical."""
        boundary = self.source.next_seq
        live = self.live
        if boundary > live.cursor and not live.pending and not live.inflight:
            self.backlog.stop = boundary
            live.cursor = boundary
            live.at_end = False

    # -- events ------------------------------------------------------------------------------
    def new_data(self) -> None:
        """The source stored new chunks: the live stream reads again."""
        self.live.at_end = False

    def started(self, msg: Message) -> None:
        """`msg` is being published."""
        msg.stream.inflight += 1
        self.inflight_firsts.update(msg.firsts)

    def finished(self, msg: Message) -> None:
        """`msg`'s publish ended, whatever its outcome."""
        msg.stream.inflight -= 1

    def settled(self, msg: Message) -> None:
        """`msg`'s publish task is gone: its chunks are no longer in flight."""
        self.inflight_firsts.difference_update(msg.firsts)

    def refused(self, msg: Message, now: float) -> float | None:
        """The broker refused `msg`: hold its device back; the delay when a hold began."""
        self.skipped.add(msg.device)
        hold = self.holds.setdefault(msg.device, Hold())
        if now < hold.until:
            return None  # another message sent before the hold began: held already
        delay = hold.backoff.next_delay()
        hold.until = now + delay
        return delay

    def accepted(self, device: str) -> Hold | None:
        """The broker took a message of `device`: its hold (if it had one) ends."""
        return self.holds.pop(device, None) if self.holds else None

    # -- choosing ----------------------------------------------------------------------------
    def order(self) -> list[Stream]:
        """Which stream may fill the next window slot, in order of preference."""
        older = [self.backlog] if not self.backlog.exhausted else []
        if self.retries:
            for device, stream in list(self.retries.items()):
                if stream.exhausted:
                    del self.retries[device]
                else:
                    older.append(stream)
        if not older:
            return [self.live]
        if self.live.inflight < self.live_slots:
            return [self.live, *older]
        return older

    def release_holds(self, now: float) -> float | None:
        """Re-read the chunks of devices whose hold ended; seconds until the next one ends."""
        next_in: float | None = None
        withheld = self.session.withheld()
        for device in list(self.skipped):
            if device in withheld:  # the session says when: looked at again each second
                next_in = NOT_READY_S if next_in is None else min(next_in, NOT_READY_S)
                continue
            hold = self.holds.get(device)
            if hold is not None and now < hold.until:
                left = hold.until - now
                next_in = left if next_in is None else min(next_in, left)
                continue
            self.skipped.discard(device)
            # the live stream delivers the device's chunks from its cursor on
            self.retries[device] = Stream(cursor=0, stop=self.live.cursor, device=device)
            self.retry_below[device] = self.live.cursor
        return next_in

    async def next(self, now: float) -> tuple[Message | None, float]:
        """The next message to publish, or None and how long until one may be ready."""
        if not self.became_ready:
            if not self.session.ready():
                self.waited = True
                return None, NOT_READY_S  # and when an incoming message makes it ready
            self.became_ready = True
            if self.waited:
                self._rebase()
        elif not self.session.ready():
            return None, NOT_READY_S
        wait_s = 1.0
        for stream in self.order():
            msg, ready_in = await self.next_of(stream, now)
            wait_s = min(wait_s, ready_in)
            if msg is not None:
                return msg, 0.0
        return None, wait_s

    def _held(self, device: str, now: float) -> bool:
        hold = self.holds.get(device)
        return hold is not None and now < hold.until

    def _mine(self, stream: Stream, chunk: Chunk) -> bool:
        """Whether `stream` may send `chunk` (not another stream's re-read)."""
        below = self.retry_below.get(chunk.device)
        return below is None or chunk.first >= below or stream.device == chunk.device

    async def _refill(self, stream: Stream) -> None:
        fetch = self.fetch
        chunks = await self.source.read(stream.cursor, stream.stop, fetch, stream.device)
        if chunks:
            stream.pending.extend(chunks)
            stream.cursor = chunks[-1].last + 1
        stream.at_end = len(chunks) < fetch
        if stream.device is not None and chunks and self.inflight_firsts:
            # a re-read meets chunks sent before the hold and awaiting their PUBACK (the
            # source leaves out the acknowledged ones): neither goes twice
            sent = self.inflight_firsts
            stream.pending[:] = [c for c in stream.pending if c.first not in sent]

    async def next_of(self, stream: Stream, now: float) -> tuple[Message | None, float]:
        """The next ready message of a stream, or None and how long until one may be ready."""
        while True:
            if len(stream.pending) < self.fetch // 2 and not stream.at_end:
                await self._refill(stream)
            pending = stream.pending
            skip = 0
            withheld = self.session.withheld()
            if self.holds or self.retry_below or withheld:
                while skip < len(pending):
                    c = pending[skip]
                    if self._held(c.device, now) or c.device in withheld:
                        self.skipped.add(c.device)  # stays in the buffer for a re-read
                    elif self._mine(stream, c):
                        break
                    skip += 1
            if not skip:
                break
            del pending[:skip]
        if not pending:
            return None, 1.0
        return self._batch(stream, pending)

    def _batch(self, stream: Stream, pending: list[Chunk]) -> tuple[Message | None, float]:
        limits = self.limits
        max_readings = limits.max_readings
        first = pending[0]
        budget = self.session.budget(first.device, limits.max_packet, limits.v5)
        size = _utf8_len(first.body)
        if size > budget:
            del pending[0]
            return self._split(first, budget, stream), 0.0
        taken = [0]
        total = first.count
        full = False
        for i in range(1, len(pending)):
            c = pending[i]
            if c.device != first.device:
                continue
            if total + c.count > max_readings:
                full = True
                break
            nbytes = _utf8_len(c.body)
            if size + 1 + nbytes > budget:
                full = True
                break
            taken.append(i)
            total += c.count
            size += 1 + nbytes
        if stream.stop is None and total < max_readings and not full and not self.draining():
            age = (self.clock_ms() - first.accepted_ms) / 1000
            # a negative age means the wall clock stepped back: send rather than wait on it
            if 0 <= age < limits.max_delay:
                return None, limits.max_delay - age
        if len(taken) == len(pending) or taken[-1] == len(taken) - 1:
            picked = pending[:len(taken)]
            del pending[:len(taken)]
        else:
            chosen = set(taken)
            picked = [pending[i] for i in taken]
            stream.pending = [c for i, c in enumerate(pending) if i not in chosen]
        return self._message(picked, stream), 0.0

    def _message(self, chunks: list[Chunk], stream: Stream) -> Message:
        device = chunks[0].device
        items = ",".join(c.body for c in chunks).encode()
        return Message(device=device, topic=self.session.topic(device),
                       parts=_parts(self.session.frame(device, items, stream.stop is not None)),
                       firsts=[c.first for c in chunks],
                       readings=sum(c.count for c in chunks), stream=stream)

    def _split(self, chunk: Chunk, budget: int, stream: Stream) -> Message:
        """One chunk larger than a message: its readings in parts that fit; a reading
        that cannot fit on its own is left out (and dropped once the parts are acked)."""
        items = [i.encode() for i in split_items(chunk.body)]
        packed = pack([len(i) for i in items], budget)
        historical = stream.stop is not None
        parts = [out for part in packed.parts for out in _parts(
            self.session.frame(chunk.device, b",".join(items[i] for i in part), historical))]
        return Message(device=chunk.device, topic=self.session.topic(chunk.device),
                       parts=parts, firsts=[chunk.first],
                       readings=sum(len(part) for part in packed.parts), stream=stream,
                       too_large=[chunk.first + i for i in packed.too_large])
