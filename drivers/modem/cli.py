"""`parkgate modem status`: the modem's link as JSON, for commissioning."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import structlog

from drivers.modem.at import AtEngine
from drivers.modem.at_source import AtSource
from drivers.modem.mmcli import MmcliSource
from gateway.errors import ParkgateError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate modem ...` to the command line."""
    p = sub.add_parser("modem", help="5G/LTE modem commands",
                       description="Look at the gateway's 5G/LTE modem.")
    cmds = p.add_subparsers(dest="modem_command", metavar="COMMAND", required=True)
    s = cmds.add_parser(
        "status", help="print the modem's status as JSON",
        description="Print the modem's state, technology, operator, registration, signal "
                    "(RSRP, RSRQ, SINR, RSSI), cell, band and temperature as JSON: from "
                    "ModemManager by default, or from a Quectel module's AT port with --at.")
    s.add_argument("--at", metavar="PORT",
                   help="read from this AT command port (such as /dev/ttyUSB2) instead of "
                        "ModemManager")
    s.add_argument("--baudrate", type=int, default=None, metavar="N",
                   help="AT port speed (default 115200)")
    s.add_argument("--lte-sinr", choices=["auto", "db", "2x-20", "x/5-20"], default="auto",
                   help="how the module prints LTE SINR (default: by model)")
    s.add_argument("--modem", metavar="ID",
                   help="ModemManager: which modem (IMEI, device, index or D-Bus path)")
    s.add_argument("--mmcli", default="mmcli", help="the mmcli program (default: mmcli)")
    s.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                   help="longest one AT command or mmcli call may take (default 3)")
    s.set_defaults(handler=_status)


def _logger(debug: bool) -> Any:
    """Logs to stderr, so stdout stays pure JSON."""
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.WARNING))


def _status(args: argparse.Namespace) -> int:
    if args.baudrate is not None and not args.at:
        raise ParkgateError("--baudrate is for an AT port: add --at PORT")
    if args.at and args.modem:
        raise ParkgateError("--modem picks a ModemManager modem; it does not go with --at")
    if args.timeout <= 0:
        raise ParkgateError("--timeout must be positive")
    doc = asyncio.run(_read(args))
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    return 0


async def _read(args: argparse.Namespace) -> dict[str, Any]:
    if not args.at:
        source = MmcliSource(modem=args.modem, mmcli=args.mmcli, timeout=args.timeout)
        status = await source.read()
        return {**status.as_dict(), "modem": source.path}
    engine = AtEngine(args.at, baudrate=args.baudrate or 115200, timeout=args.timeout,
                      log=_logger(getattr(args, "debug", False)))
    try:
        result = await AtSource(engine, lte_sinr=args.lte_sinr).read()
    finally:
        await engine.aclose()
    return {**result.status.as_dict(), "port": args.at, "errors": result.errors}
