"""`parkgate modbus read` and `parkgate modbus scan`: commissioning Modbus meters."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, get_args

from gateway.errors import DeviceError, ParkgateError
from gateway.units import parse_duration

from .decode import decode_values
from .registermap import WIDTH, DataType, Order, Point, Table
from .transport import EXCEPTION_NAMES, GATEWAY_CODES, Bus, ExceptionReply, LinkSettings

TABLES = ("holding", "input", "coil", "discrete")
REGISTER_TYPES = tuple(t for t in get_args(DataType) if t not in ("bool", "bit"))
ORDERS = get_args(Order)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate modbus ...`."""
    p = sub.add_parser("modbus", help="Modbus devices: one-shot reads and writes, bus scans")
    cmds = p.add_subparsers(dest="modbus_command", metavar="SUBCOMMAND", required=True)

    r = cmds.add_parser(
        "read", help="read registers once and print raw and decoded values (JSON)",
        description="Reads COUNT values of TYPE at the 0-based protocol ADDRESS (Modicon "
                    "40001 is holding address 0) and prints the raw registers and the "
                    "decoded values as JSON. Without --type it also shows every 32-bit "
                    "interpretation of the first registers, to find a meter's word order.")
    link_args(r)
    r.add_argument("--unit", type=int, required=True, metavar="N", help="unit id (1..247)")
    r.add_argument("--table", choices=TABLES, required=True)
    r.add_argument("--address", type=parse_int, required=True, metavar="N",
                   help="0-based protocol address (decimal or 0x hex)")
    r.add_argument("--count", type=int, default=1, metavar="N",
                   help="how many values of --type (for strings: registers); default 1")
    r.add_argument("--type", choices=REGISTER_TYPES, dest="dtype",
                   help="decode as (default uint16; coils and discrete inputs are bits)")
    r.add_argument("--order", choices=ORDERS, default="ABCD",
                   help="byte order: ABCD big endian, CDAB word swap, BADC byte swap, "
                        "DCBA little endian (default ABCD)")
    r.add_argument("--timeout", type=parse_duration, default=1.0, metavar="DURATION",
                   help="longest wait for the answer (default 1s)")
    r.add_argument("--retries", type=int, default=0, metavar="N",
                   help="extra attempts after a timeout (default 0)")
    r.set_defaults(handler=read_command)

    s = cmds.add_parser(
        "scan", help="find which unit ids answer on a bus (JSON)",
        description="Sends one read to every unit id in --units and lists who answered, "
                    "including units that answered with an exception (they exist).")
    link_args(s)
    s.add_argument("--units", default="1-247", metavar="RANGES",
                   help="unit ids to try, e.g. 1-247 or 1,2,10-20 (default 1-247)")
    s.add_argument("--table", choices=TABLES, default="holding",
                   help="what to read from each unit (default holding)")
    s.add_argument("--address", type=parse_int, default=0, metavar="N",
                   help="0-based address to read (default 0)")
    s.add_argument("--timeout", type=parse_duration, default=0.3, metavar="DURATION",
                   help="wait per unit (default 300ms; RTU at 9600 baud needs >= 100ms)")
    s.set_defaults(handler=scan_command)

    from .cli_write import register_write  # noqa: PLC0415 - one subcommand, its own module

    register_write(cmds)


def parse_int(text: str) -> int:
    """Decimal or 0x hex."""
    return int(text, 0)


def link_args(p: argparse.ArgumentParser) -> None:
    """--tcp / --rtu / --rtu-over-tcp and the serial line settings."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST[:PORT]", help="Modbus TCP (port 502 by default)")
    where.add_argument("--rtu", metavar="DEV", help="Modbus RTU on a serial port")
    where.add_argument("--rtu-over-tcp", metavar="HOST:PORT",
                       help="RTU frames through a serial device server")
    p.add_argument("--baudrate", type=int, default=9600, metavar="N",
                   help="with --rtu (default 9600)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="N",
                   help="with --rtu (default N)")
    p.add_argument("--bytesize", type=int, choices=(7, 8), default=8, help=argparse.SUPPRESS)
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1,
                   help="with --rtu (default 1)")
    p.add_argument("--delay", type=parse_duration, default=None, metavar="DURATION",
                   help="quiet time between requests (default 20ms on RTU, 0 on TCP)")


def link_settings(args: argparse.Namespace) -> LinkSettings:
    """The link named on the command line."""
    if args.rtu:
        return LinkSettings("rtu", args.rtu, baudrate=args.baudrate, parity=args.parity,
                            bytesize=args.bytesize, stopbits=args.stopbits,
                            delay=0.02 if args.delay is None else args.delay)
    text: str = args.tcp or args.rtu_over_tcp
    host, port = (text.rsplit(":", 1) if text.count(":") == 1 else (text, ""))
    if args.rtu_over_tcp and not port:
        raise ParkgateError("--rtu-over-tcp needs HOST:PORT (serial servers have no "
                            "standard port)")
    try:
        number = int(port) if port else 502
    except ValueError:
        raise ParkgateError(f"{text!r}: the port must be a number, as in 10.0.0.5:502") \
            from None
    if args.rtu_over_tcp:
        delay = 0.02 if args.delay is None else args.delay
        return LinkSettings("rtu-over-tcp", host, port=number, delay=delay)
    return LinkSettings("tcp", host, port=number, delay=args.delay or 0.0)


def _units(text: str) -> list[int]:
    units: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            units += range(int(a), int(b or a) + 1)
    except ValueError:
        raise ParkgateError(f"--units {text!r}: write ranges such as 1-247 or 1,2,10-20") \
            from None
    if not units or min(units) < 0 or max(units) > 255:
        raise ParkgateError(f"--units {text!r}: unit ids are 0..255 (1..247 on RTU)")
    return units


def point_of(dtype: str, order: str, table: Table, count: int) -> Point:
    """A point of `dtype` at address 0 for decoding (and encoding) on the command line."""
    width = count if dtype == "string" else WIDTH[dtype]
    return Point(name="value", table=table, address=0, width=width, type=dtype,  # type: ignore[arg-type]
                 order=order, bit=None, scale=None, offset=None,  # type: ignore[arg-type]
                 decimals=None, unit=None, every=1)


def _interpretations(registers: list[int]) -> dict[str, Any]:
    """Every multi-register reading of the first registers, by order."""
    out: dict[str, Any] = {}
    for dtype in ("int32", "uint32", "float32", "int64", "uint64", "float64"):
        width = WIDTH[dtype]
        if len(registers) >= width:
            out[dtype] = {o: decode_values(registers[:width], point_of(dtype, o, "holding", 1))[0]
                          for o in ORDERS}
    return out


async def _read(args: argparse.Namespace, settings: LinkSettings) -> dict[str, Any]:
    table: Table = args.table
    bits = table in ("coil", "discrete")
    dtype = "bool" if bits else (args.dtype or "uint16")
    if bits and args.dtype:
        raise ParkgateError(f"--type does not apply to {table}s (they are single bits)")
    if args.count < 1:
        raise ParkgateError("--count must be at least 1")
    count = args.count if bits or dtype == "string" else args.count * WIDTH[dtype]
    limit = 2000 if bits else 125
    if count > limit:
        raise ParkgateError(f"that is {count} {'bits' if bits else 'registers'}; one read "
                            f"returns at most {limit}")
    if args.address + count - 1 > 65535:
        raise ParkgateError("the read runs past address 65535")
    bus = Bus(settings)
    try:
        data = await bus.read(args.unit, table, args.address, count,
                              reply_timeout=args.timeout, retries=args.retries)
    except ExceptionReply as exc:
        raise ParkgateError(str(exc)) from None
    except DeviceError as exc:
        raise ParkgateError(str(exc)) from None
    finally:
        await bus.aclose()
    doc: dict[str, Any] = {"bus": settings.describe(), "unit": args.unit, "table": table,
                           "address": args.address, "count": count}
    if bits:
        doc["bits"] = [bool(b) for b in data]
        return doc
    regs = [int(r) for r in data]
    point = point_of(dtype, args.order, table, count)
    doc.update({"type": dtype, "order": args.order, "registers": regs,
                "hex": [f"{r:04x}" for r in regs], "values": decode_values(regs, point)})
    if args.dtype is None and len(regs) >= 2:
        doc["interpretations"] = _interpretations(regs)
    return doc


def read_command(args: argparse.Namespace) -> int:
    """`parkgate modbus read`."""
    settings = link_settings(args)
    doc = asyncio.run(_read(args, settings))
    print(json.dumps(doc, indent=2))
    return 0


async def _scan(args: argparse.Namespace, settings: LinkSettings) -> dict[str, Any]:
    units = _units(args.units)
    bus = Bus(settings)
    found: list[dict[str, Any]] = []
    garbled: list[int] = []
    started = time.monotonic()
    try:
        for unit in units:
            try:
                data = await bus.read(unit, args.table, args.address, 1,
                                      reply_timeout=args.timeout)
            except ExceptionReply as exc:
                if exc.code in GATEWAY_CODES:
                    continue  # the gateway says nobody is there
                found.append({"unit": unit, "answer": "exception", "code": exc.code,
                              "meaning": EXCEPTION_NAMES.get(exc.code, "unknown")})
                continue
            except DeviceError as exc:
                if exc.kind == "disconnected":
                    raise ParkgateError(str(exc)) from None
                if exc.kind in ("crc", "protocol"):
                    garbled.append(unit)
                continue
            value = bool(data[0]) if args.table in ("coil", "discrete") else int(data[0])
            found.append({"unit": unit, "answer": "value", "value": value})
    finally:
        await bus.aclose()
    return {"bus": settings.describe(), "table": args.table, "address": args.address,
            "scanned": len(units), "found": found, "garbled": garbled,
            "seconds": round(time.monotonic() - started, 2)}


def scan_command(args: argparse.Namespace) -> int:
    """`parkgate modbus scan`."""
    settings = link_settings(args)
    doc = asyncio.run(_scan(args, settings))
    print(json.dumps(doc, indent=2))
    return 0
