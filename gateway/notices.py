"""Drop notices: seq ranges the agent dropped on purpose, announced upstream durably.

When the buffer deletes readings by policy (`max_bytes`, `max_age`) or the uplink gives up
on readings that can never fit a message (`too_large`), their seqs are recorded in the
buffer's SQLite file, in the same transaction that deletes them, in the `dropped` table
(inclusive ranges, adjacent ranges of one reason coalesced). The uplink publishes them
QoS 1 after connecting and whenever new ones appear, as

    {"v": 1, "gateway": ..., "site": ..., "dropped": [{"first": N, "last": M, "reason": R}]}

on the data topic with the device `dropped` (see `notice_topic`), and deletes them only after
the PUBACK. A notice survives a crash or an outage exactly like readings do: a lost notice
would make a deliberate drop look like a loss in transit.

A range may name seqs that still reached the broker (a publish under way when the buffer
dropped the chunk, or sent on an earlier connection whose PUBACK never came): the ingest
counts a seq that both arrived and was announced as received, never as dropped.

SQL here runs on the buffer's SQLite thread, inside the caller's transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter
from structlog.typing import FilteringBoundLogger

from gateway.backoff import Backoff
from gateway.tasks import honour_cancellation

if TYPE_CHECKING:  # the buffer imports this module; only its types are needed here
    from gateway.buffer.source import DropSource
    from gateway.uplink.messages import Outgoing

NOTICE_DEVICE = "dropped"
"""The device part of the notice topic (`parkgate/{site}/{gateway}/dropped` by default)."""

MAX_RANGES = 200
"""Ranges per notice: about 10 KB, far below any broker's packet limit. More wait for the
next notice, sent right after this one's PUBACK."""


@dataclass(frozen=True, slots=True, order=True)
class DropRange:
    """Seqs `first..last` (inclusive) dropped for `reason`."""

    first: int
    last: int
    reason: str

    @property
    def count(self) -> int:
        """Readings in the range."""
        return self.last - self.first + 1


def coalesce(ranges: Iterable[DropRange]) -> list[DropRange]:
    """Overlapping or adjacent ranges of the same reason joined, ordered by first seq.

    Ranges of different reasons are kept apart even when adjacent (the consumer reports
    per reason); they cannot overlap, a seq is dropped once.
    """
    out: list[DropRange] = []
    open_by_reason: dict[str, int] = {}  # reason -> index in out of its latest range
    for r in sorted(ranges):
        i = open_by_reason.get(r.reason)
        if i is not None and r.first <= out[i].last + 1:
            prev = out[i]
            out[i] = DropRange(prev.first, max(prev.last, r.last), r.reason)
            continue
        open_by_reason[r.reason] = len(out)
        out.append(r)
    return sorted(out)


def subtract(ranges: Iterable[DropRange], done: Sequence[DropRange]) -> list[DropRange]:
    """`ranges` minus the seqs of `done` with the same reason (what is left to announce)."""
    out: list[DropRange] = []
    for r in sorted(ranges):
        lo = r.first
        for d in sorted(done):
            if d.reason != r.reason or d.last < lo or d.first > r.last:
                continue
            if d.first > lo:
                out.append(DropRange(lo, d.first - 1, r.reason))
            lo = max(lo, d.last + 1)
        if lo <= r.last:
            out.append(DropRange(lo, r.last, r.reason))
    return out


# -- SQLite (the buffer's thread, inside its transaction) -------------------------------------
def create_table(db: sqlite3.Connection) -> None:
    """The `dropped` table (schema 2 of the buffer)."""
    db.execute("CREATE TABLE IF NOT EXISTS dropped (first INTEGER PRIMARY KEY,"
               " last INTEGER NOT NULL, reason TEXT NOT NULL)")


def chunk_ranges(db: sqlite3.Connection, firsts: Sequence[int]) -> list[tuple[int, int]]:
    """(first, last) of the buffered chunks among `firsts` (call before deleting them)."""
    out: list[tuple[int, int]] = []
    for i in range(0, len(firsts), 500):
        part = list(firsts[i:i + 500])
        # only "?" placeholders are formatted into the statement
        where = f" FROM chunks WHERE first IN ({','.join('?' * len(part))})"
        out.extend(db.execute("SELECT first, last" + where, part))
    return out


def _replace(db: sqlite3.Connection, lo: int, hi: int, reason: str,
             rows: Sequence[DropRange]) -> None:
    """Replace this reason's rows touching `lo..hi` by `rows`."""
    db.execute("DELETE FROM dropped WHERE reason = ? AND first <= ? AND last >= ?",
               (reason, hi, lo))
    db.executemany("INSERT INTO dropped VALUES (?,?,?)",
                   [(r.first, r.last, r.reason) for r in rows])


def record(db: sqlite3.Connection, ranges: Iterable[DropRange]) -> None:
    """Add ranges, coalesced with the stored ranges they touch (same reason)."""
    for r in coalesce(ranges):
        touching = [DropRange(f, la, r.reason) for f, la in db.execute(
            "SELECT first, last FROM dropped WHERE reason = ? AND first <= ? AND last >= ?",
            (r.reason, r.last + 1, r.first - 1))]
        merged = coalesce([*touching, r])
        _replace(db, min(x.first for x in merged), max(x.last for x in merged), r.reason,
                 merged)


def pending(db: sqlite3.Connection, limit: int) -> list[DropRange]:
    """The oldest `limit` ranges not yet acknowledged by the broker."""
    return [DropRange(f, la, reason) for f, la, reason in db.execute(
        "SELECT first, last, reason FROM dropped ORDER BY first LIMIT ?", (limit,))]


def acknowledged(db: sqlite3.Connection, ranges: Sequence[DropRange]) -> None:
    """Forget what a PUBACKed notice announced.

    By subtraction, not by row: a drop recorded while the notice was on its way may have
    grown a row the notice sent, and those new seqs must still be announced.
    """
    for r in ranges:
        touching = [DropRange(f, la, r.reason) for f, la in db.execute(
            "SELECT first, last FROM dropped WHERE reason = ? AND first <= ? AND last >= ?",
            (r.reason, r.last, r.first))]
        if touching:
            _replace(db, r.first, r.last, r.reason, subtract(touching, [r]))


# -- publishing ---------------------------------------------------------------------------------
def notice_topic(data_topic: str, site: str, gateway: str) -> str:
    """The data topic template with the device `dropped`: the same depth as the data and the
    status topics, so a consumer of the data topics (the ingest) receives notices too and
    tells them apart by payload (`dropped` instead of `readings`)."""
    return data_topic.format(site=site, gateway=gateway, device=NOTICE_DEVICE)


def encode(gateway: str, site: str, ranges: Sequence[DropRange]) -> bytes:
    """The notice payload (what gateway/ingest/payload.py reads)."""
    return json.dumps({"v": 1, "gateway": gateway, "site": site,
                       "dropped": [{"first": r.first, "last": r.last, "reason": r.reason}
                                   for r in ranges]},
                      separators=(",", ":")).encode()


class NoticeSender:
    """Publishes the buffer's pending drop notices on one connection until cancelled.

    One notice at a time, QoS 1; its ranges are forgotten only after the PUBACK. A refused
    or unacknowledged notice stays in the buffer and is sent again after a backoff (a dead
    connection ends the session through the uplink's own checks; the next one resends).
    """

    def __init__(self, buffer: DropSource, topic: str, *, gateway: str, site: str,
                 log: FilteringBoundLogger, sent: Counter,
                 message: Callable[[Sequence[DropRange]], Outgoing] | None = None) -> None:
        self.buffer = buffer
        self.topic = topic
        self.message = message
        """The dialect's notice (topic and payload); else `encode()` on `topic`."""
        self.gateway = gateway
        self.site = site
        self.log = log
        self.sent = sent
        """Counter incremented per acknowledged notice."""

    async def run(self, publish: Callable[[str, bytes], Awaitable[str | None]]) -> None:
        """`publish(topic, payload)` returns None when acknowledged, else the refusal."""
        backoff = Backoff(base=1.0, cap=60.0)
        while True:
            honour_cancellation()  # publish() may have swallowed it (asyncio.wait_for, 3.11)
            ranges = await self.buffer.pending_drops(MAX_RANGES)
            if not ranges:
                await self.buffer.wait_drops()  # a drop since the last wake-up returns at once
                continue
            if self.message is not None:
                out = self.message(ranges)
                topic, payload = out.topic, out.payload
            else:
                topic, payload = self.topic, encode(self.gateway, self.site, ranges)
            try:
                refusal = await publish(topic, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any publish failure: keep it, retry
                refusal = str(exc) or type(exc).__name__
            if refusal is not None:
                delay = backoff.next_delay()
                self.log.warning("drop notice not acknowledged; it stays buffered and is sent"
                                 " again", topic=topic, error=refusal,
                                 retry_in_s=round(delay, 1))
                honour_cancellation()
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            await self.buffer.drops_sent(ranges)
            self.sent.inc()
            self.log.info("drop notice sent", topic=topic, ranges=len(ranges),
                          readings=sum(r.count for r in ranges))
