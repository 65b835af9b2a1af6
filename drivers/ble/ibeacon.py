"""Apple iBeacon manufacturer data (company 0x004C, type 0x02, length 0x15)."""

from __future__ import annotations

import uuid

from drivers.ble.advert import Decoded, Value


def decode(data: bytes) -> Decoded | None:
    """Decode Apple manufacturer data; None if it is not an iBeacon frame."""
    if len(data) < 2 or data[0] != 0x02 or data[1] != 0x15:
        return None
    if len(data) < 23:
        return Decoded("ibeacon", error=f"iBeacon frame is {len(data)} bytes, expected 23")
    beacon = str(uuid.UUID(bytes=bytes(data[2:18])))
    major = int.from_bytes(data[18:20], "big")
    minor = int.from_bytes(data[20:22], "big")
    power = int.from_bytes(data[22:23], "big", signed=True)
    return Decoded("ibeacon", (Value("measured_power", power, "dBm"),), None, None,
                   {"uuid": beacon, "major": major, "minor": minor})
