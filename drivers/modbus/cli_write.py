"""`parkgate modbus write`: set one register, register bit or coil while commissioning.

It says what goes on the wire (the raw registers) and asks before sending unless `--yes`;
the write goes through the same code as a command (encode, write, read back and compare),
so what works here works from the command topic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from gateway.driver import WriteLimits
from gateway.errors import DeviceError, ParkgateError, WriteRefused
from gateway.model import Value
from gateway.units import parse_duration

from . import command
from .cli import ORDERS, REGISTER_TYPES, link_args, link_settings, parse_int, point_of
from .link import Tally
from .registermap import INTEGER_TYPES, Point
from .transport import Bus

WRITABLE = ("holding", "coil")
_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def register_write(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate modbus write`."""
    w = cmds.add_parser(
        "write", help="write one value (register, register bit or coil), read it back (JSON)",
        description="Encodes VALUE as TYPE in ORDER, shows the raw registers and asks before "
                    "writing (FC06 for one register, FC16 for more, FC05 for a coil, a "
                    "read-modify-write of the register for --bit). Then reads the value "
                    "back, compares the raw registers and prints the result as JSON.")
    link_args(w)
    w.add_argument("--unit", type=int, required=True, metavar="N", help="unit id (1..247)")
    w.add_argument("--table", choices=WRITABLE, required=True,
                   help="holding or coil (input registers and discrete inputs are read-only)")
    w.add_argument("--address", type=parse_int, required=True, metavar="N",
                   help="0-based protocol address (decimal or 0x hex)")
    w.add_argument("--value", required=True, metavar="V",
                   help="the value: a number, or for coils and --bit: 1/0, true/false, on/off")
    w.add_argument("--type", choices=[t for t in REGISTER_TYPES if t != "string"],
                   dest="dtype", help="encode as (default uint16)")
    w.add_argument("--order", choices=ORDERS, default="ABCD",
                   help="byte order: ABCD big endian, CDAB word swap, BADC byte swap, "
                        "DCBA little endian (default ABCD)")
    w.add_argument("--bit", type=int, choices=range(16), metavar="0..15",
                   help="write only this bit of the holding register (read-modify-write)")
    w.add_argument("--timeout", type=parse_duration, default=1.0, metavar="DURATION",
                   help="longest wait for each answer (default 1s)")
    w.add_argument("--retries", type=int, default=0, metavar="N",
                   help="extra attempts of the reads after a timeout (the write is sent "
                        "once; default 0)")
    w.add_argument("--multiple", action="store_true",
                   help="FC16/FC15 even for one register or coil (devices without FC06/FC05)")
    w.add_argument("--yes", action="store_true", help="write without asking")
    w.set_defaults(handler=write_command)


def _value(text: str, point: Point) -> Value:
    word = text.strip().lower()
    if point.type in ("bool", "bit"):
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ParkgateError(f"--value {text!r}: a {'coil' if point.type == 'bool' else 'bit'} "
                            "takes 1/0, true/false or on/off")
    try:
        return parse_int(word) if point.type in INTEGER_TYPES else float(word)
    except ValueError:
        raise ParkgateError(f"--value {text!r} is not a number for {point.type}") from None


def _target(args: argparse.Namespace) -> Point:
    if args.table == "coil":
        if args.dtype or args.bit is not None:
            raise ParkgateError("--type and --bit do not apply to coils (they are single bits)")
        point = point_of("bool", "ABCD", "coil", 1)
    elif args.bit is not None:
        if args.dtype:
            raise ParkgateError("--bit writes one bit: leave out --type")
        point = dataclasses.replace(point_of("uint16", "ABCD", "holding", 1), type="bit",
                                    bit=args.bit)
    else:
        point = point_of(args.dtype or "uint16", args.order, "holding", 1)
    if args.address + point.width - 1 > 65535:
        raise ParkgateError("the value runs past address 65535")
    return dataclasses.replace(point, address=args.address, write=WriteLimits())


def _confirm(prompt: str) -> bool:
    print(prompt, end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


async def _write(args: argparse.Namespace, planned: command.Planned) -> Value | None:
    settings = link_settings(args)
    bus = Bus(settings)
    link = command.Link(bus, args.unit, f"unit {args.unit}", args.timeout, args.retries,
                        args.multiple)
    try:
        return await command.execute(link, planned, verify=True, tally=Tally())
    except DeviceError as exc:
        raise ParkgateError(str(exc)) from None
    finally:
        await bus.aclose()


def write_command(args: argparse.Namespace) -> int:
    """`parkgate modbus write`."""
    settings = link_settings(args)
    point = _target(args)
    try:
        planned = command.plan_write(point, _value(args.value, point))
    except WriteRefused as exc:
        raise ParkgateError(str(exc).removeprefix("value: ")) from None
    what = f"unit {args.unit} on {settings.describe()}: {planned.describe()}"
    if not args.yes and not _confirm(f"write {what}? [y/N] "):
        print("parkgate: nothing written", file=sys.stderr)
        return 1
    value = asyncio.run(_write(args, planned))
    doc: dict[str, Any] = {"bus": settings.describe(), "unit": args.unit, "table": args.table,
                           "address": args.address}
    if args.table == "coil" or args.bit is not None:
        doc.update({"bit": args.bit} if args.bit is not None else {})
        doc.update({"wrote": planned.state, "read_back": value})
    else:
        doc.update({"type": point.type, "order": point.order, "registers": list(planned.words),
                    "hex": [f"{w:04x}" for w in planned.words], "read_back": value})
    print(json.dumps(doc, indent=2))
    return 0
