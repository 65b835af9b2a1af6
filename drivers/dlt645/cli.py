"""`parkgate dlt645 read|discover|items`: commissioning DL/T 645-2007 meters; JSON on stdout."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from drivers.dlt645.bus import BusSettings, Dlt645Bus, TcpSettings, bus_name
from drivers.dlt645.driver import meter_time, read_item
from drivers.dlt645.frame import (
    READ_ADDRESS,
    FrameError,
    MeterException,
    address_text,
    broadcast_time,
    di_text,
    normalize_address,
    read_address,
)
from drivers.dlt645.items import ITEMS, DataItem, lookup
from drivers.serial_line.link import PortSettings
from gateway.errors import ParkgateError, ProtocolError, TransientError
from gateway.units import parse_duration

DISCOVER_BAUDRATES = (2400, 1200, 4800, 9600)
"""Tried in this order when `discover` is not told the baud rate (2400: the 2007 default)."""


def _bus_args(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="serial device server (transparent TCP)")
    where.add_argument("--port", metavar="DEV", help="serial port, e.g. /dev/serial/by-id/...")
    p.add_argument("--baudrate", type=int, metavar="N", help="default 2400")
    p.add_argument("--parity", choices=("N", "E", "O"), default="E", help="default E (8E1)")
    p.add_argument("--timeout", default="2s", metavar="DURATION",
                   help="wait for each reply (default 2s)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate dlt645 ...`."""
    p = sub.add_parser("dlt645", help="DL/T 645-2007 meters: read items, discover an address")
    cmds = p.add_subparsers(dest="dlt645_command", metavar="SUBCOMMAND", required=True)
    r = cmds.add_parser("read", help="read data items from one meter and print JSON",
                        description="ITEM is a friendly name (voltage_a, energy_import, "
                                    "frequency; see `parkgate dlt645 items`) or an "
                                    "8-hex-digit DI such as 02010100.")
    _bus_args(r)
    r.add_argument("--address", required=True, metavar="ADDR",
                   help="meter address as on the nameplate (up to 12 digits)")
    r.add_argument("items", nargs="+", metavar="ITEM")
    r.set_defaults(handler=read_command)
    d = cmds.add_parser("discover", help="find the address of the one meter on a port",
                        description="Sends read-address (0x13) to the broadcast address "
                                    "AA AA AA AA AA AA. Only one meter may be connected. "
                                    "Without --baudrate, tries 2400, 1200, 4800, 9600.")
    _bus_args(d)
    d.set_defaults(handler=discover_command)
    t = cmds.add_parser("sync-time", help="broadcast time sync: set every meter's clock",
                        description="Sends broadcast time sync (0x08 to 99 99 99 99 99 99) "
                                    "with the gateway's time: EVERY meter on the bus sets its "
                                    "clock. Meters do not answer; most refuse a change of "
                                    "more than five minutes or around midnight.")
    _bus_args(t)
    t.add_argument("--time-zone", metavar="ZONE",
                   help="IANA zone of the meters' clocks (default: this machine's local time)")
    t.set_defaults(handler=sync_time_command)
    i = cmds.add_parser("items", help="list the friendly item names and their DIs")
    i.set_defaults(handler=items_command)


def _settings(args: argparse.Namespace, baudrate: int) -> BusSettings:
    if args.tcp:
        host, sep, port = args.tcp.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ParkgateError(f"--tcp {args.tcp!r}: write HOST:PORT, e.g. 192.168.1.20:8899")
        return TcpSettings(host.strip("[]"), int(port))
    return PortSettings(args.port, baudrate, 8, args.parity, 1)


def _timeout(args: argparse.Namespace) -> float:
    try:
        return parse_duration(args.timeout)
    except ValueError as exc:
        raise ParkgateError(f"--timeout: {exc}") from None


def read_command(args: argparse.Namespace) -> int:
    """Handler of `parkgate dlt645 read`."""
    try:
        address = normalize_address(args.address)
        items = [lookup(text) for text in args.items]
    except ValueError as exc:
        raise ParkgateError(str(exc)) from None
    settings = _settings(args, args.baudrate or 2400)
    doc = asyncio.run(_read(settings, address, items, _timeout(args)))
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0 if all("value" in entry for entry in doc["items"]) else 1


async def _read(settings: BusSettings, address: str, items: list[DataItem],
                response_timeout: float) -> dict[str, Any]:
    bus = Dlt645Bus(settings, delay=0.05)
    out: list[dict[str, Any]] = []
    answered = False
    try:
        for item in items:
            entry: dict[str, Any] = {"item": item.name, "di": di_text(item.di)}
            try:
                reply, took = await read_item(bus, address, item.di, response_timeout)
                entry["raw"] = reply.data[4:].hex()
                entry["ms"] = round(took * 1000, 1)
                answered = True
                entry.update(value=item.decode(reply.data[4:]), unit=item.unit)
            except MeterException as exc:
                answered = True
                entry.update(error=str(exc), kind="exception", code=exc.code)
            except ProtocolError as exc:
                entry.update(error=str(exc), kind=exc.kind)
            except TransientError as exc:
                if not answered:
                    raise ParkgateError(
                        f"no answer from meter {address} on {bus.name}: {exc}. Check the "
                        "address, the baud rate and parity (2007 meters: 2400 8E1) and the "
                        "A/B wiring") from None
                entry.update(error=str(exc), kind=exc.kind)
            out.append(entry)
    finally:
        await bus.aclose()
    return {"address": address, "bus": bus_name(settings), "items": out}


def discover_command(args: argparse.Namespace) -> int:
    """Handler of `parkgate dlt645 discover`."""
    if args.tcp or args.baudrate:
        bauds: tuple[int, ...] = (args.baudrate or 2400,)
    else:
        bauds = DISCOVER_BAUDRATES
    timeout = _timeout(args)
    doc = asyncio.run(_discover([_settings(args, b) for b in bauds], timeout))
    print(json.dumps(doc, indent=2))
    return 0


async def _discover(candidates: list[BusSettings],
                    response_timeout: float) -> dict[str, Any]:
    tried: list[str] = []
    for settings in candidates:
        bus = Dlt645Bus(settings, delay=0.0)
        try:
            reply, took = await bus.transact(read_address(),
                                             lambda f: f.function == READ_ADDRESS,
                                             response_timeout)
        except FrameError as exc:
            raise ParkgateError(f"garbled answer on {bus.name} ({exc}): is more than one meter "
                                "connected? discover needs exactly one") from None
        except TransientError as exc:
            tried.append(f"{settings.baudrate} baud" if isinstance(settings, PortSettings)
                         else str(settings))
            if exc.kind != "timeout":
                raise
            continue
        finally:
            await bus.aclose()
        if reply.is_exception:
            raise ParkgateError(f"the meter on {bus.name} refused read-address: "
                                f"{MeterException(reply.data[0] if reply.data else 0)}")
        address = address_text(reply.data[:6]) if len(reply.data) >= 6 else reply.address
        doc: dict[str, Any] = {"address": address, "bus": bus.name, "ms": round(took * 1000, 1)}
        if isinstance(settings, PortSettings):
            doc.update(baudrate=settings.baudrate, parity=settings.parity)
        return doc
    raise ParkgateError(f"no meter answered read-address on {bus_name(candidates[0])} "
                        f"({', '.join(tried)}); check wiring, baud rate and parity")


def sync_time_command(args: argparse.Namespace) -> int:
    """Handler of `parkgate dlt645 sync-time`."""
    try:
        when = meter_time(args.time_zone)
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ParkgateError(f"--time-zone {args.time_zone!r}: unknown time zone ({exc})") \
            from None
    settings = _settings(args, args.baudrate or 2400)
    request = broadcast_time(when)
    asyncio.run(_send(settings, request, _timeout(args)))
    print(json.dumps({"bus": bus_name(settings), "time": when.replace(tzinfo=None).isoformat(),
                      "frame": request.hex(" ")}, indent=2))
    return 0


async def _send(settings: BusSettings, request: bytes, response_timeout: float) -> None:
    bus = Dlt645Bus(settings, delay=0.0)
    try:
        await bus.send(request, response_timeout)
        await asyncio.sleep(0.05)  # let the frame leave before the port closes
    except TransientError as exc:
        raise ParkgateError(f"{bus.name}: {exc}") from None
    finally:
        await bus.aclose()


def items_command(_args: argparse.Namespace) -> int:
    """Handler of `parkgate dlt645 items`."""
    print(json.dumps([{"item": i.name, "di": di_text(i.di), "unit": i.unit,
                       "bytes": i.length, "decimals": i.decimals, "signed": i.signed,
                       "description": i.description} for i in ITEMS], indent=2,
                     ensure_ascii=False))
    return 0
