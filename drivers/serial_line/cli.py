"""`parkgate serial sniff`: open a port and print raw and parsed lines as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

from pydantic import ValidationError

from drivers.serial_line.framing import Chunk, LineFramer
from drivers.serial_line.link import PortSettings, SerialLink
from drivers.serial_line.options import FramingOptions, SerialOptions, unescape
from drivers.serial_line.parsers import LineParser, ParseError
from gateway.errors import ParkgateError
from gateway.model import now_ms
from gateway.units import parse_duration

PARSERS = ("raw", "nmea", "kv", "json", "csv", "regex")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate serial ...`."""
    p = sub.add_parser("serial", help="serial line sensors: sniff a port")
    cmds = p.add_subparsers(dest="serial_command", metavar="SUBCOMMAND", required=True)
    s = cmds.add_parser(
        "sniff", help="open a port and print raw and parsed lines (JSON lines on stdout)",
        description="Prints one JSON object per line received: raw text, and with --parser "
                    "the values or why it did not parse; a summary object at the end.")
    s.add_argument("--port", required=True, metavar="DEV",
                   help="serial port, e.g. /dev/serial/by-id/usb-FTDI_...-if00-port0")
    s.add_argument("--baudrate", type=int, default=9600, metavar="N")
    s.add_argument("--bytesize", type=int, choices=(5, 6, 7, 8), default=8)
    s.add_argument("--parity", choices=("N", "E", "O", "M", "S"), default="N")
    s.add_argument("--stopbits", type=float, choices=(1, 1.5, 2), default=1)
    s.add_argument("--parser", choices=PARSERS, default="raw",
                   help="how to parse lines (default: raw, print them only)")
    s.add_argument("--pattern", help="regex with named groups (--parser regex)")
    s.add_argument("--columns", metavar="NAME[:UNIT],...",
                   help="CSV column names by position, empty to skip (--parser csv)")
    s.add_argument("--delimiter", default=",", help="CSV delimiter (default ,)")
    s.add_argument("--terminator", default=r"\n", help=r"end of line (default \n)")
    s.add_argument("--send", metavar="CMD",
                   help=r"poll: send CMD (escapes allowed, e.g. 'R\r\n') every --interval")
    s.add_argument("--interval", default="1s", help="poll interval with --send (default 1s)")
    s.add_argument("--seconds", type=float, metavar="N",
                   help="stop after N seconds (default: until Ctrl-C)")
    s.add_argument("--lines", type=int, metavar="N", help="stop after N lines")
    s.set_defaults(handler=sniff)


def build_parser(args: argparse.Namespace) -> LineParser | None:
    """The parser chosen on the command line, validated like a config file."""
    if args.parser == "raw":
        return None
    cfg: dict[str, Any] = {"type": args.parser}
    if args.parser == "regex":
        if not args.pattern:
            raise ParkgateError("--parser regex needs --pattern 'T=(?P<temp>[-0-9.]+)'")
        cfg["pattern"] = args.pattern
    if args.parser == "csv":
        if not args.columns:
            raise ParkgateError("--parser csv needs --columns, e.g. temperature:°C,,humidity:%")
        columns: dict[int, dict[str, str]] = {}
        for i, spec in enumerate(args.columns.split(",")):
            name, _, unit = spec.partition(":")
            if name.strip():
                columns[i] = {"metric": name.strip(), **({"unit": unit} if unit else {})}
        cfg.update(columns=columns, delimiter=args.delimiter)
    try:
        opts = SerialOptions.model_validate(
            {"name": "sniff", "port": args.port, "parser": cfg,
             "framing": {"terminator": args.terminator}})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ParkgateError(f"{where}: {first['msg']}") from None
    return opts.build_parser()


def describe(chunk: Chunk, parser: LineParser | None) -> dict[str, Any]:
    """One output object for a chunk."""
    out: dict[str, Any] = {"ts": chunk.ts, "kind": chunk.kind,
                           "raw": chunk.data.decode("utf-8", "backslashreplace")}
    if chunk.kind != "line":
        out["hex"] = chunk.data[:256].hex()
        return out
    if parser is None:
        return out
    try:
        values = parser.parse(chunk.data)
    except ParseError as exc:
        out.update(error=str(exc), error_kind=exc.kind)
        return out
    out["values"] = None if values is None else [
        {"metric": v.metric, "value": v.value, "unit": v.unit} for v in values]
    return out


def sniff(args: argparse.Namespace) -> int:
    """Handler of `parkgate serial sniff`."""
    parser = build_parser(args)
    try:
        terminator = unescape(FramingOptions(terminator=args.terminator).terminator)
        command = unescape(args.send) if args.send else None
        interval = parse_duration(args.interval)
    except (ValueError, ValidationError) as exc:
        raise ParkgateError(str(exc).splitlines()[0]) from None
    settings = PortSettings(args.port, args.baudrate, args.bytesize, args.parity, args.stopbits)
    summary = asyncio.run(_sniff(settings, LineFramer(terminator, max_length=4096), parser,
                                 command=command, interval=interval, seconds=args.seconds,
                                 max_lines=args.lines))
    print(json.dumps({"summary": summary}, ensure_ascii=False), flush=True)
    return 0


async def _sniff(settings: PortSettings, framer: LineFramer, parser: LineParser | None, *,
                 command: bytes | None, interval: float, seconds: float | None,
                 max_lines: int | None) -> dict[str, Any]:
    link = SerialLink(settings, lambda: framer, now_ms)
    started = time.monotonic()
    kinds: Counter[str] = Counter()
    lines = parsed = 0
    async with asyncio.timeout(10.0):
        await link.ensure_open()
    sender: asyncio.Task[None] | None = None
    try:
        if command is not None:
            sender = asyncio.create_task(_send(link, command, interval), name="sniff.send")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while max_lines is None or lines < max_lines:
                    chunk = await link.next_chunk()
                    doc = describe(chunk, parser)
                    kinds[doc.get("error_kind") or chunk.kind] += 1
                    lines += chunk.kind == "line"
                    parsed += bool(doc.get("values"))
                    sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
                    sys.stdout.flush()
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await link.aclose()
    kinds.pop("line", None)
    return {"port": settings.port, "lines": lines, "parsed": parsed, "errors": dict(kinds),
            "seconds": round(time.monotonic() - started, 3), "bytes": link.bytes_received}


async def _send(link: SerialLink, command: bytes, interval: float) -> None:
    while True:
        link.write(command)
        await asyncio.sleep(interval)
