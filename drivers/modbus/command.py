"""Writes and on-demand reads of single points: the device side of commands.

Everything here runs with the bus held (`Bus.hold()`): a write, its read-modify-write and
its verifying read-back go out back to back, with the bus's inter-frame delay, and no
poll or other write on a shared RS-485 line comes in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import DeviceRejected, VerifyFailed
from gateway.model import Reading, Value

from .classify import ExceptionReply
from .decode import decode_values
from .encode import encode_bool, encode_words, with_bit
from .link import Tally
from .registermap import BIT_TABLES, Point
from .transport import Bus, BusHold


@dataclass(frozen=True, slots=True)
class Planned:
    """What a write will put on the wire, worked out before anything is sent."""

    point: Point
    words: tuple[int, ...] = ()
    """Registers for numeric points (FC06 for one, FC16 for more)."""
    state: bool | None = None
    """The new state of a coil or of one bit of a holding register."""

    def describe(self) -> str:
        """`holding 30 <- [215]` style summary (what the CLI shows before asking)."""
        p = self.point
        if p.table == "coil":
            return f"coil {p.address} <- {self.state}"
        if p.type == "bit":
            return (f"holding {p.address} bit {p.bit} <- {int(bool(self.state))} "
                    "(read-modify-write)")
        hexes = " ".join(f"{w:04x}" for w in self.words)
        return f"{p.describe()} <- {list(self.words)} (hex {hexes})"


def plan_write(point: Point, value: Value) -> Planned:
    """Encode `value` for `point`, or raise `WriteRefused` before the bus is touched."""
    if point.table == "coil" or point.type == "bit":
        return Planned(point, state=encode_bool(point, value))
    return Planned(point, words=tuple(encode_words(point, value)))


@dataclass(frozen=True, slots=True)
class Link:
    """A unit on a bus and how long to wait for it."""

    bus: Bus
    unit: int
    device: str
    reply_timeout: float
    retries: int
    multiple: bool = False
    """FC16/FC15 even for one register or coil (devices without FC06/FC05)."""


async def execute(link: Link, planned: Planned, *, verify: bool,
                  tally: Tally) -> Value | None:
    """Write `planned` (and read it back when `verify`); the value read back, or None.

    Raises `DeviceRejected` (with the Modbus exception code) when the device refuses,
    `VerifyFailed` when it holds something else afterwards, `TransientError` when it does
    not answer.
    """
    p = planned.point
    try:
        async with link.bus.hold() as held:
            expected = await _write(link, held, planned, tally)
            if not verify:
                return None
            got = await _read(link, held, p, tally)
    except ExceptionReply as exc:
        raise DeviceRejected(str(exc), code=exc.code, device=link.device,
                             address=p.address) from None
    if p.table == "coil" or p.type == "bit":
        state = bool(got[0]) if p.table == "coil" else bool(int(got[0]) >> (p.bit or 0) & 1)
        if state != planned.state:
            raise VerifyFailed(f"{p.name}: wrote {planned.state} to {_where(p)}, "
                               f"read back {state}", device=link.device, address=p.address)
        return state
    words = [int(w) for w in got]
    if tuple(words) != expected:
        raise VerifyFailed(f"{p.name}: wrote {list(expected)} to {p.describe()}, read back "
                           f"{words} ({decode_values(words, p)[0]!r})", device=link.device,
                           address=p.address)
    return decode_values(words, p)[0]


def _where(p: Point) -> str:
    return f"coil {p.address}" if p.table == "coil" else f"holding {p.address} bit {p.bit}"


async def _write(link: Link, held: BusHold, planned: Planned,
                 tally: Tally) -> tuple[int, ...]:
    p, unit, timeout = planned.point, link.unit, link.reply_timeout
    if p.table == "coil":
        await held.write_bits(unit, p.address, [bool(planned.state)], reply_timeout=timeout,
                              tally=tally, multiple=link.multiple)
        return ()
    words = planned.words
    if p.type == "bit":
        # the other 15 bits are the device's: read them now, under the same hold
        (old,) = await held.read(unit, "holding", p.address, 1, reply_timeout=timeout,
                                 retries=link.retries, tally=tally)
        words = (with_bit(int(old), p.bit or 0, bool(planned.state)),)
    await held.write_registers(unit, p.address, words, reply_timeout=timeout, tally=tally,
                               multiple=link.multiple)
    return words


async def _read(link: Link, held: BusHold | Bus, p: Point,
                tally: Tally) -> Sequence[int] | Sequence[bool]:
    return await held.read(link.unit, p.table, p.address, p.width,
                           reply_timeout=link.reply_timeout, retries=link.retries, tally=tally)


async def read_point(link: Link, p: Point, ts: int, tally: Tally) -> Reading:
    """Read and decode one point now (action `read`)."""
    try:
        data = await _read(link, link.bus, p, tally)
    except ExceptionReply as exc:
        raise DeviceRejected(str(exc), code=exc.code, device=link.device,
                             address=p.address) from None
    if p.table in BIT_TABLES:
        value: Value = bool(data[0])
    else:
        value = decode_values([int(w) for w in data], p)[0]
    return Reading(link.device, p.name, value, ts, p.unit, "good" if value is not None else "bad")
