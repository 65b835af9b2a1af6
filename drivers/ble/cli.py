"""`parkgate ble scan` and `parkgate ble decode`: commissioning BLE sensors."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from drivers.ble.advert import decode_advert, normalize_mac, normalize_uuid
from gateway.errors import ParkgateError

START_TIMEOUT = 15.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `parkgate ble ...`."""
    p = sub.add_parser("ble", help="scan for and decode BLE sensors")
    ble = p.add_subparsers(dest="ble_command", metavar="SUBCOMMAND", required=True)

    s = ble.add_parser("scan", help="scan and print devices seen with decoded values (JSON)")
    s.add_argument("--seconds", type=float, default=10.0, help="how long to scan (default 10)")
    s.add_argument("--adapter", help="hci0, hci1 ... (default: BlueZ's default adapter)")
    s.add_argument("--passive", action="store_true",
                   help="passive scan (BlueZ >= 5.56 with --experimental); default active")
    s.add_argument("--bindkey", action="append", default=[], metavar="MAC=HEX",
                   help="bindkey of an encrypted BTHome sensor (repeatable)")
    s.add_argument("--all", action="store_true",
                   help="also list devices whose adverts no decoder understands")
    s.add_argument("--backend", help=argparse.SUPPRESS)  # tests: bleak scanner module:Class
    s.set_defaults(handler=scan_command)

    d = ble.add_parser("decode", help="decode one advertisement given as hex (JSON)")
    d.add_argument("--service-data", action="append", default=[], metavar="UUID:HEX",
                   help="service data, UUID as fcd2 or the full 128-bit form")
    d.add_argument("--manufacturer-data", action="append", default=[], metavar="ID:HEX",
                   help="manufacturer data, company ID as 0x0499 or decimal")
    d.add_argument("--address", help="the sender's MAC address (needed for encrypted BTHome)")
    d.add_argument("--bindkey", help="32 hex digits: key of an encrypted BTHome sensor")
    d.add_argument("--format", default="auto",
                   choices=["auto", "bthome", "ruuvi", "atc", "pvvx", "ibeacon"])
    d.set_defaults(handler=decode_command)


def _hex(text: str, what: str) -> bytes:
    cleaned = re.sub(r"[\s:_-]", "", text.strip())
    cleaned = cleaned[2:] if cleaned.lower().startswith("0x") else cleaned
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise ParkgateError(f"{what}: {text!r} is not hex bytes") from None


def parse_service_data(item: str) -> tuple[str, bytes]:
    """`fcd2:40...` or `<128-bit uuid>:40...` -> (full uuid, bytes)."""
    uuid, sep, data = item.rpartition(":")
    if not sep or not uuid:
        raise ParkgateError(f"--service-data {item!r}: write UUID:HEX, such as fcd2:4002c409")
    try:
        full = normalize_uuid(uuid)
    except ValueError as exc:
        raise ParkgateError(f"--service-data: {exc}") from None
    return full, _hex(data, "--service-data")


def parse_manufacturer_data(item: str) -> tuple[int, bytes]:
    """`0x0499:05...` or `1177:05...` -> (company id, bytes)."""
    ident, sep, data = item.partition(":")
    try:
        company = int(ident, 0)
    except ValueError:
        company = -1
    if not sep or not 0 <= company <= 0xFFFF:
        raise ParkgateError(f"--manufacturer-data {item!r}: write ID:HEX with ID as 0x0499 "
                            "or decimal, such as 0x0499:0512fc...")
    return company, _hex(data, "--manufacturer-data")


def _bindkey(text: str | None) -> bytes | None:
    if text is None:
        return None
    key = _hex(text, "--bindkey")
    if len(key) != 16:
        raise ParkgateError("--bindkey: a bindkey is 32 hex digits (16 bytes)")
    return key


def decode_command(args: argparse.Namespace) -> int:
    """Decode one advert and print it as JSON; exit 1 if it did not decode."""
    if not args.service_data and not args.manufacturer_data:
        raise ParkgateError("give the advert: --service-data UUID:HEX and/or "
                            "--manufacturer-data ID:HEX")
    service = dict(parse_service_data(s) for s in args.service_data)
    manufacturer = dict(parse_manufacturer_data(m) for m in args.manufacturer_data)
    address = None
    if args.address:
        try:
            address = normalize_mac(args.address)
        except ValueError as exc:
            raise ParkgateError(f"--address: {exc}") from None
    decoded = decode_advert(service, manufacturer, address=address,
                            bindkey=_bindkey(args.bindkey), fmt=args.format)
    if decoded is None:
        raise ParkgateError("no known format in this advert (BTHome fcd2, 0x181A atc/pvvx, "
                            "Ruuvi 0x0499 format 5, iBeacon 0x004C)")
    if decoded.refused:  # the agent would refuse it too: show no values from it
        raise ParkgateError(f"{decoded.error} [{decoded.refused}]")
    out: dict[str, Any] = {"address": address, **decoded.as_dict()}
    print(json.dumps(out, ensure_ascii=False))
    return 1 if decoded.error else 0


def scan_command(args: argparse.Namespace) -> int:
    """Scan for `--seconds` and print every sensor heard as JSON."""
    if not 0 < args.seconds <= 3600:
        raise ParkgateError("--seconds must be between 0 and 3600")
    keys: dict[str, bytes] = {}
    for item in args.bindkey:
        mac, sep, key = item.partition("=")
        if not sep:
            raise ParkgateError(f"--bindkey {item!r}: write MAC=HEX")
        try:
            keys[normalize_mac(mac)] = _bindkey(key) or b""
        except ValueError as exc:
            raise ParkgateError(f"--bindkey: {exc}") from None
    devices = asyncio.run(_scan(args, keys))
    print(json.dumps({"seconds": args.seconds, "devices": devices}, ensure_ascii=False,
                     indent=2))
    return 0


async def _scan(args: argparse.Namespace, keys: dict[str, bytes]) -> list[dict[str, Any]]:
    from bleak import BleakScanner  # noqa: PLC0415 - bleak only for BLE commands

    from drivers.ble.scanner import PASSIVE_PATTERNS, classify, load_class  # noqa: PLC0415

    seen: dict[str, dict[str, Any]] = {}

    def on_advert(device: Any, adv: Any) -> None:
        address = device.address.upper()
        decoded = decode_advert(adv.service_data, adv.manufacturer_data, address=address,
                                bindkey=keys.get(address))
        entry = seen.setdefault(address, {"address": address, "adverts": 0})
        entry["adverts"] += 1
        entry["name"] = adv.local_name or device.name
        entry["rssi"] = adv.rssi
        entry["service_data"] = {k: v.hex() for k, v in adv.service_data.items()}
        entry["manufacturer_data"] = {f"0x{k:04x}": v.hex()
                                      for k, v in adv.manufacturer_data.items()}
        if decoded is not None:
            entry["decoded"] = decoded.as_dict()

    bluez: dict[str, Any] = {"adapter": args.adapter} if args.adapter else {}
    if args.passive:
        from bleak.args.bluez import OrPattern  # noqa: PLC0415
        from bleak.assigned_numbers import AdvertisementDataType  # noqa: PLC0415

        bluez["or_patterns"] = [OrPattern(p, AdvertisementDataType(t), c)
                                for p, t, c in PASSIVE_PATTERNS]
    try:
        backend = load_class(args.backend) if args.backend else None
        scanner = BleakScanner(on_advert, scanning_mode="passive" if args.passive else "active",
                               bluez=bluez, backend=backend)  # type: ignore[arg-type]
        async with asyncio.timeout(START_TIMEOUT):
            await scanner.start()
    except Exception as exc:  # turned into one clear line for the user
        reason, message = classify(exc)
        if args.debug:
            raise
        raise ParkgateError(f"cannot scan [{reason}]: {message}") from None
    try:
        await asyncio.sleep(args.seconds)
    finally:
        try:
            async with asyncio.timeout(5.0):
                await scanner.stop()
        except Exception as exc:  # noqa: BLE001 - results are still worth printing
            print(f"parkgate: warning: stopping the scan failed: {exc}", file=sys.stderr)
    found = sorted(seen.values(), key=lambda e: -int(e["rssi"]))
    return found if args.all else [e for e in found if "decoded" in e]
