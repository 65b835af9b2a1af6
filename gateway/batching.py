"""Fitting batches into the broker's maximum message size (pure functions, no I/O).

A broker cuts off a client that sends a PUBLISH larger than its limit (Mosquitto's
`max_packet_size`, AWS IoT's 128 KB); resending the same batch after the reconnect would
stall every device behind it. The limit counts the whole packet, so the uplink works with a
payload budget: the limit minus the PUBLISH headers and the message's JSON framing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_decoder = json.JSONDecoder()


def max_payload(limit: int, topic: str, v5: bool) -> int:
    """The largest payload of a QoS 1 PUBLISH to `topic` whose packet fits `limit` bytes.

    Packet: fixed header (1) + remaining length (a 1-4 byte varint) + topic length (2) +
    topic + packet id (2) + MQTT 5 property length (1: no properties are sent) + payload.
    """
    head = 2 + len(topic.encode()) + 2 + (1 if v5 else 0)
    for varint in (1, 2, 3, 4):
        remaining = limit - 1 - varint
        if remaining < 128 ** varint:
            return remaining - head
    return limit - 5 - head  # beyond MQTT's 256 MiB: the config bounds the limit below


def split_items(body: str) -> list[str]:
    """The readings of a chunk body (comma-separated JSON objects), each as its exact text."""
    items: list[str] = []
    end = 0
    size = len(body)
    while end < size:
        start = end + 1 if body[end] == "," else end
        _obj, end = _decoder.raw_decode(body, start)
        items.append(body[start:end])
    return items


@dataclass(frozen=True, slots=True)
class Packed:
    """A chunk's readings as parts that each fit the budget, and the ones that never can."""

    parts: list[list[int]]
    """Indexes of the readings of each part, in order."""
    too_large: list[int]
    """Indexes of readings larger than the budget on their own."""


def pack(sizes: list[int], budget: int) -> Packed:
    """Greedy, order-keeping packing of items of `sizes` bytes, joined by one-byte commas."""
    parts: list[list[int]] = []
    too_large: list[int] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        if size > budget:
            too_large.append(i)
            continue
        if current and used + 1 + size > budget:
            parts.append(current)
            current, used = [], 0
        used += size + (1 if current else 0)
        current.append(i)
    if current:
        parts.append(current)
    return Packed(parts, too_large)


def seq_ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted seqs as inclusive (first, last) runs, for a log line."""
    runs: list[tuple[int, int]] = []
    for s in seqs:
        if runs and runs[-1][1] == s - 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs
