"""`parkgate bacnet discover` and `parkgate bacnet read`: commissioning BACnet/IP devices."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from gateway.errors import DeviceError, ParkgateError
from gateway.units import parse_duration

from . import options
from .answers import AnswerError
from .objects import OBJECT_TYPES, ObjectRef
from .options import (
    DEFAULT_PORT,
    GATEWAY_INSTANCE,
    STACK_MISSING,
    ForeignDevice,
    Network,
    _host_port,
    device_address,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate bacnet ...`."""
    p = sub.add_parser("bacnet", help="BACnet/IP devices: Who-Is discovery and one-shot reads")
    cmds = p.add_subparsers(dest="bacnet_command", metavar="SUBCOMMAND", required=True)

    d = cmds.add_parser(
        "discover", help="send Who-Is and list the devices that answer I-Am (JSON)",
        description="Broadcasts Who-Is (or sends it to --to: a directed broadcast such as "
                    "192.168.20.255 or one device's address) and prints every I-Am heard "
                    "within --wait. Through a BBMD with --bbmd for other subnets.")
    _local_args(d)
    d.add_argument("--to", metavar="HOST[:PORT]", help="where to send Who-Is (default: "
                   "broadcast on the subnet of --address, else 255.255.255.255)")
    d.add_argument("--low", type=int, metavar="N", help="lowest device instance asked for")
    d.add_argument("--high", type=int, metavar="N", help="highest device instance asked for")
    d.add_argument("--wait", type=parse_duration, default=3.0, metavar="DURATION",
                   help="how long to listen for I-Am (default 3s)")
    d.set_defaults(handler=discover_command)

    r = cmds.add_parser(
        "read", help="read properties of one object once (JSON)",
        description="Reads PROPERTY (default present-value, status-flags and, for analog "
                    "objects, units) of OBJECT (TYPE,INSTANCE such as analog-input,1) of the "
                    "device at DEVICE (HOST[:PORT]). OBJECT device,N lists the device's "
                    "name, vendor, model, firmware and object-list: what to put in the "
                    "config.")
    _local_args(r)
    r.add_argument("device", metavar="DEVICE", help="the device's IPv4 address[:port], or "
                   "NET:IP[:PORT] / NET:MAC behind a BACnet router (as discover prints it)")
    r.add_argument("object", metavar="OBJECT", help="TYPE,INSTANCE such as analog-input,1")
    r.add_argument("property", nargs="*", metavar="PROPERTY",
                   help="properties to read (names as in the standard: present-value, units)")
    r.add_argument("--timeout", type=parse_duration, default=2.0, metavar="DURATION",
                   help="longest wait for each answer (default 2s)")
    r.set_defaults(handler=read_command)


def _local_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default="0.0.0.0", metavar="IP[/PREFIX]",  # noqa: S104
                   help="local address to bind; with /PREFIX broadcasts go to that subnet "
                        "(default 0.0.0.0: any interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                   help=f"local UDP port (default {DEFAULT_PORT}; 0 for any free port when "
                        "the agent holds it: then devices that answer by broadcast are not "
                        "heard)")
    p.add_argument("--device-id", type=int, default=GATEWAY_INSTANCE + 1, metavar="N",
                   help="our own device instance while the command runs")
    p.add_argument("--bbmd", metavar="HOST[:PORT]",
                   help="register with this BBMD as a foreign device first")
    p.add_argument("--ttl", type=parse_duration, default=60.0, metavar="DURATION",
                   help="foreign-device registration lifetime (default 60s)")


def _network(args: argparse.Namespace) -> Network:
    try:
        foreign = ForeignDevice(bbmd=args.bbmd, ttl=args.ttl) if args.bbmd else None
        if args.port == 0:
            return Network.model_construct(address=args.address, port=0,
                                           device_id=args.device_id, foreign=foreign)
        return Network(address=args.address, port=args.port, device_id=args.device_id,
                       foreign=foreign)
    except ValueError as exc:
        raise ParkgateError(str(exc).splitlines()[-1].strip()) from None


async def _with_link(args: argparse.Namespace, work: Any) -> Any:
    if not options.stack_installed():
        raise ParkgateError(STACK_MISSING)
    from .link import Link, LinkSettings  # noqa: PLC0415 - bacpypes3 only for this command

    try:
        link = await Link.start(LinkSettings.of(_network(args)))
    except DeviceError as exc:
        raise ParkgateError(str(exc)) from None
    try:
        return await work(link)
    finally:
        await link.aclose()


def discover_command(args: argparse.Namespace) -> int:
    """Who-Is; prints one JSON object per device heard."""
    if (args.low is None) != (args.high is None):
        raise ParkgateError("give both --low and --high, or neither")
    to = None
    if args.to:
        try:
            host, port = _host_port(args.to, DEFAULT_PORT)
        except ValueError as exc:
            raise ParkgateError(str(exc)) from None
        to = f"{host}:{port}"

    async def work(link: Any) -> Any:
        return await link.discover(args.low, args.high, to, args.wait)

    found = asyncio.run(_with_link(args, work))
    print(json.dumps({"devices": [
        {"device_id": i.instance, "address": i.address, "vendor_id": i.vendor,
         "max_apdu": i.max_apdu, "segmentation": i.segmentation} for i in found]},
        indent=2))
    return 0 if found else 1


def read_command(args: argparse.Namespace) -> int:
    """ReadProperty of each property asked; errors per property, as the device gave them."""
    try:
        device = device_address(args.device)
        ref = ObjectRef.parse(args.object, any_type=True)
    except ValueError as exc:
        raise ParkgateError(str(exc)) from None
    if args.property:
        props = list(args.property)
    elif ref.type == "device":
        props = ["object-name", "vendor-name", "model-name", "firmware-revision",
                 "object-list"]
    elif ref.type not in OBJECT_TYPES:
        props = ["object-name", "present-value"]
    elif ref.kind == "analog":
        props = ["present-value", "status-flags", "units"]
    else:
        props = ["present-value", "status-flags"]

    async def work(link: Any) -> dict[str, Any]:
        from bacpypes3.primitivedata import PropertyIdentifier  # noqa: PLC0415

        for prop in props:
            try:
                PropertyIdentifier(prop)
            except ValueError:
                raise ParkgateError(f"{prop!r} is not a BACnet property name (write them as "
                                    "the standard does: present-value, object-list, units)"
                                    ) from None
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for prop in props:
            try:
                values[prop] = await link.read(device, ref, prop,
                                               reply_timeout=args.timeout, retries=0)
            except AnswerError as exc:
                errors[prop] = exc.code
        return {"device": device, "object": str(ref), "values": values,
                "errors": errors}

    try:
        doc = asyncio.run(_with_link(args, work))
    except DeviceError as exc:
        raise ParkgateError(str(exc)) from None
    print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    return 0 if not doc["errors"] else 1
