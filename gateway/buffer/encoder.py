"""The stored chunk format: readings of one device as comma-separated JSON objects.

The format is dialect-neutral (every dialect frames these items at publish time), so a
site that switches dialect keeps its buffer. Each item is
`{"seq":N,"device":D,"metric":M,"value":V,"unit":U,"ts":MS,"quality":Q}`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence

from structlog.typing import FilteringBoundLogger

from gateway.model import Reading, now_ms

YIELD_S = 0.002
"""Longest stretch of encoding in a commit before other tasks get the loop."""

Row = tuple[int, int, str, int, str]
"""A chunk as stored: first seq, last seq, device, accepted (ms), items text."""

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

_QUALITIES = frozenset({"good", "uncertain", "bad"})

FLOAT_TEXTS = 4096
"""Float values whose JSON text an encoder keeps: ~0.4 MB at most."""
FLOAT_RELEARN = 64 * FLOAT_TEXTS
"""Readings after which the kept float texts are dropped and learnt again."""


class ChunkEncoder:
    """Encodes the readings of one device as the JSON items of a chunk, without dicts.

    Formatting strings directly is 2.4x faster than `json.dumps` of a list of dicts
    (measured 1.9 vs 4.7 us per reading). The device is encoded once per chunk and each
    (metric, unit) pair once per agent, as two ready fragments; the readings of one poll
    share one `ts` object, so its text and the `quality` tail are made once per poll, not
    per reading. A reading then costs one dict lookup, its value's text and one f-string
    (0.9 us measured, from 1.2). Floats that JSON cannot hold (NaN, infinity) become `null`
    with quality `bad`; values of other types become JSON strings.

    A float's text is `repr()`, the shortest that reads back as the same float, and finding
    it was the largest single cost of a reading (7.5 % of the agent's instructions at
    100 x 100, callgrind). Meters repeat values (a voltage in 0.1 V steps, a frequency,
    an energy counter between increments), so the texts of the first `FLOAT_TEXTS` distinct
    values are kept and used again, and dropped after every `FLOAT_RELEARN` readings to
    follow values that drift. When values never repeat (a random pattern), a reading costs a
    failed lookup more once the table is full (under 0.05 us); filling and clearing it at
    every 4096 values cost 0.2. Zero is never kept: -0.0 equals 0.0 but reads "-0.0".
    """

    def __init__(self) -> None:
        self._fragments: dict[tuple[str, str | None], tuple[str, str]] = {}
        self._floats: dict[float, str] = {}
        self._since_learnt = 0

    def _fragment(self, metric: str, unit: str | None) -> tuple[str, str]:
        frag = (f',"metric":{_dumps(metric)},"value":',
                f',"unit":{"null" if unit is None else _dumps(unit)},"ts":')
        if len(self._fragments) < 200_000:  # bounded: names come from config, not data
            self._fragments[(metric, unit)] = frag
        return frag

    def encode(self, first: int, readings: Sequence[Reading]) -> str:
        """Comma-separated JSON objects for seqs `first`, `first+1`, ... (one device)."""
        if not readings:
            return ""
        head = f',"device":{_dumps(readings[0].device)}'
        fragments = self._fragments
        floats = self._floats
        isfinite = math.isfinite
        parts: list[str] = []
        append = parts.append
        seq = first
        last_ts: object = None
        tails: dict[str, str] = {}
        for _device, metric, v, ts, unit, given in readings:
            quality = given
            frag = fragments.get((metric, unit))
            if frag is None:
                frag = self._fragment(metric, unit)
            tv = type(v)
            if tv is float:
                vs = floats.get(v)  # type: ignore[arg-type]
                if vs is None:
                    if isfinite(v):  # type: ignore[arg-type]
                        vs = repr(v)
                        # not 0.0 or -0.0: equal keys, different texts
                        if v and len(floats) < FLOAT_TEXTS:
                            floats[v] = vs  # type: ignore[index]
                    else:
                        vs, quality = "null", "bad"
            elif tv is int:
                vs = repr(v)
            elif v is None:
                vs = "null"
            elif tv is bool:
                vs = "true" if v else "false"
            elif tv is str:
                vs = _dumps(v)
            else:
                vs = _dumps(str(v))
            if ts is not last_ts:
                # `:d` makes a ts that is not an int raise instead of writing invalid JSON;
                # the same object again (one poll's readings) was checked already
                tails = {"good": f'{ts:d},"quality":"good"}}'}
                last_ts = ts
            tail = tails.get(quality)
            if tail is None:
                if quality not in _QUALITIES:
                    raise ValueError(f"quality {quality!r}")
                tail = tails[quality] = f'{ts:d},"quality":"{quality}"}}'
            append(f'{{"seq":{seq}{head}{frag[0]}{vs}{frag[1]}{tail}')
            seq += 1
        self._since_learnt += len(readings)
        if self._since_learnt >= FLOAT_RELEARN:
            self._since_learnt = 0
            floats.clear()
        return ",".join(parts)


def sanitize(r: Reading) -> Reading:
    """A reading with fields of the types the payload needs (driver bugs); quality `bad`."""
    try:
        ts = int(r.ts)
    except (TypeError, ValueError, OverflowError):
        ts = now_ms()
    return Reading(str(r.device), str(r.metric), None if r.value is None else str(r.value), ts,
                   None if r.unit is None else str(r.unit), "bad")


def group_chunks(pending: Sequence[Reading], chunk_max: int) -> list[list[Reading]]:
    """Readings split into runs of one device, at most `chunk_max` long, arrival order kept."""
    by_device: dict[str, list[Reading]] = defaultdict(list)
    for r in pending:
        by_device[r.device].append(r)
    return [readings[i:i + chunk_max] for readings in by_device.values()
            for i in range(0, len(readings), chunk_max)]


async def encode_rows(encoder: ChunkEncoder, pending: Sequence[Reading], chunk_max: int,
                      first: int, log: FilteringBoundLogger) -> list[Row]:
    """Readings as chunk rows numbered from `first`, yielding the loop now and then.

    Encoding runs on the loop, a slice at a time with a yield in between: in the SQLite
    thread it holds the GIL in long stretches, and in one piece it blocks the loop for tens
    of ms; both make device polls late (see bench/pipeline.py). A yield after every YIELD_S
    of encoding, not after every chunk: with 100 meters that was a full loop pass for every
    100 readings encoded.
    """
    rows: list[Row] = []
    seq = first
    accepted = now_ms()
    clock = time.perf_counter
    slice_end = clock() + YIELD_S
    for part in group_chunks(pending, chunk_max):
        try:
            body = encoder.encode(seq, part)
        except (TypeError, ValueError):  # a driver bug must not stop the agent
            body = encoder.encode(seq, [sanitize(r) for r in part])
            log.error("a driver produced malformed readings; sent as bad quality",
                      device=str(part[0].device))
        rows.append((seq, seq + len(part) - 1, str(part[0].device), accepted, body))
        seq += len(part)
        if clock() >= slice_end:
            await asyncio.sleep(0)
            slice_end = clock() + YIELD_S
    return rows
