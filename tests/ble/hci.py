"""Parse recorded HCI LE advertising reports (hcidump / btmon captures) into advert fields.

The recorded fixtures keep the capture exactly as published; this turns it into what BlueZ
would hand bleak: address, RSSI, local name, service data and manufacturer data.
"""

from __future__ import annotations

from typing import Any

BASE = "-0000-1000-8000-00805f9b34fb"


def parse_ad(data: bytes) -> dict[str, Any]:
    """AD structures -> name, service_data {uuid: hex}, manufacturer_data {"0x....": hex}."""
    out: dict[str, Any] = {"name": None, "service_data": {}, "manufacturer_data": {}}
    i = 0
    while i < len(data):
        length = data[i]
        if length == 0 or i + 1 + length > len(data):
            break
        kind, body = data[i + 1], data[i + 2:i + 1 + length]
        if kind in (0x08, 0x09):
            out["name"] = body.decode("utf-8", "replace")
        elif kind == 0x16 and len(body) >= 2:
            uuid = f"0000{int.from_bytes(body[:2], 'little'):04x}{BASE}"
            out["service_data"][uuid] = body[2:].hex()
        elif kind == 0xFF and len(body) >= 2:
            out["manufacturer_data"][f"0x{int.from_bytes(body[:2], 'little'):04x}"] = \
                body[2:].hex()
        i += 1 + length
    return out


def parse_hci(hex_event: str) -> dict[str, Any]:
    """One HCI LE Meta event (legacy 0x02 or extended 0x0D advertising report)."""
    ev = bytes.fromhex(hex_event)
    if ev[:2] != b"\x04\x3e":
        raise ValueError("not an HCI LE meta event")
    sub = ev[3]
    if sub == 0x02:  # legacy: num, type, addr type, addr[6], len, data, rssi
        addr = ev[7:13]
        length = ev[13]
        data = ev[14:14 + length]
        rssi = int.from_bytes(ev[14 + length:15 + length], "little", signed=True)
    elif sub == 0x0D:  # extended: num, type[2], addr type, addr[6], phys, sid, tx, rssi ...
        addr = ev[8:14]
        rssi = int.from_bytes(ev[18:19], "little", signed=True)
        length = ev[28]
        data = ev[29:29 + length]
    else:
        raise ValueError(f"unsupported LE subevent 0x{sub:02x}")
    advert = parse_ad(data)
    advert["address"] = ":".join(f"{b:02X}" for b in reversed(addr))
    advert["rssi"] = rssi
    return advert
